//! The install environment: Debian's generic (signed) kernel and an initramfs holding
//! busybox, curl, zstd, util-linux's disk tools, kmod and the kernel modules for real
//! NICs and disks, whose /init brings a NIC up by DHCP and runs the host's install
//! script from the provisioning server. Built from Debian packages alone.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::{Bootstrap, Source, bootstrap, fresh, mib};
use crate::{e2e::assets::Arch, exec};

const INIT: &str = include_str!("installer-init.sh");
const DHCP_SCRIPT: &str = include_str!("installer-dhcp.sh");

/// Bumped when the recipe changes in a way the lists below do not show.
const RECIPE_VERSION: u32 = 1;

/// The programs the installer runs beside busybox, by the name found in the packages;
/// their shared libraries come along.
const PROGRAMS: &[&str] = &[
    "curl", "zstd", "blkid", "sfdisk", "partx", "wipefs", "blockdev", "kmod",
];

/// kmod's names for itself.
const KMOD_LINKS: &[&str] = &["modprobe", "insmod", "lsmod", "rmmod", "modinfo"];

/// NIC drivers: virtual machines, Intel, Mellanox/NVIDIA ConnectX (mlx5 for GB10's
/// ConnectX-7), Broadcom, Realtek, Aquantia, Amazon, Chelsio, Solarflare, QLogic,
/// Huawei/HiSilicon, Cavium, and common USB Ethernet adapters. Absent ones (not built
/// for an arch) are listed and skipped.
const NIC_MODULES: &[&str] = &[
    "virtio_net",
    "e1000",
    "e1000e",
    "igb",
    "igc",
    "ixgbe",
    "i40e",
    "ice",
    "mlx4_en",
    "mlx5_core",
    "bnxt_en",
    "tg3",
    "r8169",
    "atlantic",
    "ena",
    "cxgb4",
    "sfc",
    "qede",
    "hns3",
    "thunder_bgx",
    "nicvf",
    "vmxnet3",
    "hv_netvsc",
    "r8152",
    "cdc_ether",
    "cdc_ncm",
    "ax88179_178a",
];

/// Disk controllers, USB host controllers (for USB NICs), filesystems the installer
/// mounts (the image's root, its ESP), and AF_PACKET for DHCP.
const OTHER_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "nvme",
    "ahci",
    "sd_mod",
    "mpt3sas",
    "megaraid_sas",
    "xhci_pci",
    "ehci_pci",
    "ext4",
    // ext4 and xfs ask the crypto API for crc32c at mount time (no symbol dependency).
    "crc32c_generic",
    "crc32c_intel",
    "xfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "af_packet",
];

/// Modules that must be there: the lab's NIC and disk, and ConnectX for the GB10.
const REQUIRED_MODULES: &[&str] = &["virtio_net", "virtio_blk", "mlx5_core", "nvme", "ext4"];

pub struct Installer {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

fn packages(arch: Arch) -> Vec<String> {
    [
        "busybox-static",
        "curl",
        "zstd",
        "util-linux",
        "fdisk",
        "kmod",
    ]
    .map(String::from)
    .into_iter()
    .chain([format!("linux-image-{}", arch.debian())])
    .collect()
}

/// Builds (or finds cached) the install environment for `arch` under
/// `target/images/<arch>/installer`: `vmlinuz` and `initrd.img`.
pub fn build(arch: Arch, source: &Source) -> anyhow::Result<Installer> {
    let dir = super::dir().join(arch.debian()).join("installer");
    let out = Installer {
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    let pkgs = packages(arch);
    let recipe = format!(
        "v{RECIPE_VERSION}\n{}\n{}\n{}\n{}\n{INIT}{DHCP_SCRIPT}",
        pkgs.join(" "),
        PROGRAMS.join(" "),
        NIC_MODULES.join(" "),
        OTHER_MODULES.join(" "),
    );
    let stamp = dir.join(".stamp");
    if fresh(&stamp, &recipe) && out.kernel.exists() && out.initrd.exists() {
        return Ok(out);
    }
    let started = Instant::now();
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(&stamp);
    let tree = dir.join("tree");
    let include: Vec<&str> = pkgs.iter().map(String::as_str).collect();
    println!(
        "images: building the {} install environment (mmdebstrap --variant=extract)",
        arch.debian()
    );
    // Unpacked only: nothing of it runs on this machine, so no emulation is needed.
    bootstrap(
        &Bootstrap {
            arch,
            variant: "extract",
            include: &include,
            extra: Vec::new(),
        },
        source,
        &tree,
    )?;
    let version = std::fs::read_dir(tree.join("lib/modules"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .next()
        .context("no kernel in the tree")?;
    let stage = dir.join("stage");
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "dev", "proc", "sys", "tmp", "run", "mnt",
    ] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    copy(&find_program(&tree, "busybox")?, &stage.join("bin/busybox"))?;
    let mut libs = BTreeSet::new();
    for p in PROGRAMS {
        let path = find_program(&tree, p)?;
        copy(&path, &stage.join("usr/bin").join(p))?;
        elf_closure(&tree, &path, &mut libs)?;
    }
    for link in KMOD_LINKS {
        std::os::unix::fs::symlink("../bin/kmod", stage.join("usr/sbin").join(link))?;
    }
    for lib in &libs {
        // Keep each library at its path (the loader's default search path and the
        // interpreter path the programs name).
        let rel = lib.strip_prefix(&tree)?;
        copy(lib, &stage.join(rel))?;
    }
    let (found, missing) = modules(&tree, &stage, &version)?;
    // The kernel unpacks zstd initramfs images (CONFIG_RD_ZSTD), and they fetch fastest.
    crate::e2e::assets::pack_initrd(
        &stage,
        &[("init", INIT), ("etc/gb10-dhcp.sh", DHCP_SCRIPT)],
        "zstd -q -19 -T0",
        &out.initrd,
    )?;
    let kernel = tree.join(format!("boot/vmlinuz-{version}"));
    copy(&kernel, &out.kernel)?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::write(
        dir.join("MODULES"),
        format!(
            "kernel {version}\nNIC and disk modules (with their dependencies): {}\nnot built for {}: {}\n",
            found.join(" "),
            arch.debian(),
            missing.join(" ")
        ),
    )?;
    std::fs::write(&stamp, recipe)?;
    println!(
        "images: {} install environment built in {:.0} s: kernel {version} {:.1} MiB, initrd {:.1} MiB \
         ({} modules; not built for {}: {})",
        arch.debian(),
        started.elapsed().as_secs_f64(),
        mib(&out.kernel),
        mib(&out.initrd),
        found.len(),
        arch.debian(),
        if missing.is_empty() {
            "none".into()
        } else {
            missing.join(" ")
        },
    );
    Ok(out)
}

fn copy(from: &Path, to: &Path) -> anyhow::Result<()> {
    if let Some(d) = to.parent() {
        std::fs::create_dir_all(d)?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// A program of the unpacked packages, by name (`bin`, `sbin`, `usr/bin`, `usr/sbin`).
fn find_program(tree: &Path, name: &str) -> anyhow::Result<PathBuf> {
    ["bin", "sbin", "usr/bin", "usr/sbin"]
        .iter()
        .map(|d| tree.join(d).join(name))
        .find(|p| p.is_file())
        .with_context(|| format!("{name} not found in the unpacked packages"))
}

/// Adds the ELF interpreter and every shared library `elf` needs, transitively, as
/// paths inside `tree`. `readelf` reads any architecture's ELF, so nothing runs.
fn elf_closure(tree: &Path, elf: &Path, libs: &mut BTreeSet<PathBuf>) -> anyhow::Result<()> {
    let out = Command::new("readelf")
        .args(["-d", "-l", "-W"])
        .arg(elf)
        .output()
        .context("readelf (apt-get install binutils)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut wanted = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.split("Requesting program interpreter: ").nth(1) {
            let interp = rest.trim_end_matches(']').trim();
            wanted.push(tree.join(interp.trim_start_matches('/')));
        }
        if line.contains("(NEEDED)")
            && let Some(name) = line.split('[').nth(1).and_then(|s| s.split(']').next())
        {
            let found = lib_dirs(tree)
                .into_iter()
                .map(|d| d.join(name))
                .find(|p| p.exists())
                .with_context(|| format!("{name} (needed by {}) not found", elf.display()))?;
            wanted.push(found);
        }
    }
    for lib in wanted {
        // Symlinks (libfoo.so.1 -> libfoo.so.1.2.3) are copied as the file they name.
        let real = resolve(tree, &lib)?;
        if libs.insert(lib.clone()) {
            elf_closure(tree, &real, libs)?;
        }
    }
    Ok(())
}

/// Where Debian keeps shared libraries, for either layout (merged /usr or not).
fn lib_dirs(tree: &Path) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for base in ["lib", "usr/lib"] {
        if let Ok(entries) = std::fs::read_dir(tree.join(base)) {
            for e in entries.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().ends_with("-linux-gnu") {
                    dirs.push(e.path());
                }
            }
        }
        dirs.push(tree.join(base));
    }
    dirs
}

/// Follows symlinks inside `tree` (absolute ones point into the tree, not the host).
fn resolve(tree: &Path, path: &Path) -> anyhow::Result<PathBuf> {
    let mut p = path.to_owned();
    for _ in 0..16 {
        match std::fs::read_link(&p) {
            Ok(target) => {
                p = if target.is_absolute() {
                    tree.join(target.strip_prefix("/")?)
                } else {
                    p.parent().context("link without parent")?.join(target)
                };
            }
            Err(_) => return Ok(p),
        }
    }
    bail!("symlink loop at {}", path.display())
}

/// Copies the wanted modules and their dependencies into the stage and indexes them
/// (`depmod`); the names found and the ones this kernel does not have.
fn modules(tree: &Path, stage: &Path, version: &str) -> anyhow::Result<(Vec<String>, Vec<String>)> {
    let depmod = |base: &Path| {
        exec(Command::new("depmod").arg("-b").arg(base).arg(version))
            .context("depmod (apt-get install kmod)")
    };
    depmod(tree)?;
    let moddir = tree.join("lib/modules").join(version);
    let dep = std::fs::read_to_string(moddir.join("modules.dep"))?;
    let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let norm = |s: &str| s.replace('-', "_");
    let stem = |path: &str| {
        let file = path.rsplit('/').next().unwrap_or(path);
        norm(file.split(".ko").next().unwrap_or(file))
    };
    // name → (path, dependency paths)
    let mut by_name: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep.lines() {
        if let Some((path, deps)) = line.split_once(':') {
            by_name.insert(
                stem(path),
                (
                    path.to_owned(),
                    deps.split_whitespace().map(str::to_owned).collect(),
                ),
            );
        }
    }
    let builtins: BTreeSet<String> = builtin.lines().map(stem).collect();
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    let mut files = BTreeSet::new();
    for m in NIC_MODULES.iter().chain(OTHER_MODULES) {
        let name = norm(m);
        if let Some((path, deps)) = by_name.get(&name) {
            files.insert(path.clone());
            files.extend(deps.iter().cloned());
            found.push(name);
        } else if builtins.contains(&name) {
            found.push(format!("{name}(built-in)"));
        } else {
            missing.push(name);
        }
    }
    for r in REQUIRED_MODULES {
        if missing.iter().any(|m| m == r) {
            bail!("kernel {version} has no {r} module");
        }
    }
    let target = stage.join("lib/modules").join(version);
    for f in &files {
        copy(&moddir.join(f), &target.join(f))?;
    }
    for f in [
        "modules.order",
        "modules.builtin",
        "modules.builtin.modinfo",
    ] {
        if moddir.join(f).exists() {
            copy(&moddir.join(f), &target.join(f))?;
        }
    }
    depmod(stage)?;
    Ok((found, missing))
}
