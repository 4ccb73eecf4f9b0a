//! The lab's OS image: a small Debian disk (GPT: ESP with Debian's signed shim and GRUB
//! on the removable-media path, ext4 root with a Debian kernel, systemd, cloud-init
//! (NoCloud only) and openssh-server), raw and gzip/zstd compressed, with sha256 sums.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use super::{Bootstrap, Source, bootstrap, fresh, mib, sha256};
use crate::{e2e::assets::Arch, exec};

/// Bumped when the recipe below changes in a way the package list does not show.
const RECIPE_VERSION: u32 = 3;

/// What the image holds beyond mmdebstrap's `apt` variant (essential + apt).
fn packages(arch: Arch) -> Vec<String> {
    let a = arch.debian();
    [
        "systemd-sysv",
        "udev",
        "cloud-init",
        "cloud-guest-utils",
        "e2fsprogs",
        "openssh-server",
        "sudo",
        "curl",
        "shim-signed",
        // initramfs-tools compresses with it (COMPRESS=zstd below).
        "zstd",
    ]
    .map(String::from)
    .into_iter()
    .chain([
        format!("linux-image-cloud-{a}"),
        format!("grub-efi-{a}-signed"),
    ])
    .collect()
}

/// cloud-init in the image: NoCloud only (nothing else is probed; with one datasource
/// listed ds-identify does not search), network by systemd-networkd. The installer adds
/// `seedfrom` pointing at the provisioning server.
const CLOUD_CFG: &str = "# gb10-provision lab image: NoCloud is the only datasource.
datasource_list: [ NoCloud, None ]
system_info:
  network:
    renderers: [ networkd ]
";

/// The EFI names of an architecture: shim's suffix and the removable-media loader.
fn efi(arch: Arch) -> (&'static str, &'static str) {
    match arch {
        Arch::Amd64 => ("x64", "BOOTX64.EFI"),
        Arch::Arm64 => ("aa64", "BOOTAA64.EFI"),
    }
}

/// The installed kernel's command line: the serial console the lab reads, and (x86)
/// no IO-APIC timer check, which a loaded host's TCG fails (seen in the install
/// environment too).
fn cmdline(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "console=tty0 console=ttyS0,115200n8 no_timer_check",
        Arch::Arm64 => "console=ttyAMA0,115200n8",
    }
}

/// initramfs-tools: only the modules that find the root disk (a virtio, SCSI, SATA or
/// NVMe disk with ext4), compressed fast; the default (`most`, zstd -19) takes minutes
/// to build and is several times larger.
const INITRAMFS_CONF: &str = "MODULES=list\nCOMPRESS=zstd\nCOMPRESSLEVEL=3\n";
const INITRAMFS_MODULES: &str = "virtio_pci\nvirtio_mmio\nvirtio_blk\nvirtio_scsi\nsd_mod\n\
nvme\nahci\next4\ncrc32c_generic\n";

/// What is not needed to boot and onboard: documentation, translations, locale sources.
const DPKG_EXCLUDES: &[&str] = &[
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-include=/usr/share/locale/locale.alias",
    "path-exclude=/usr/share/i18n/*",
    "path-exclude=/usr/share/lintian/*",
    "path-exclude=/usr/share/bash-completion/*",
    "path-exclude=/usr/share/zsh/*",
    "path-exclude=/usr/share/vim/*",
];

/// GPT partition type of the root: "Linux root (x86-64)" / "Linux root (ARM64)", so
/// systemd-gpt-auto-generator and people reading `sgdisk -p` know it.
fn root_type(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "8304",
        Arch::Arm64 => "8305",
    }
}

/// The built image: raw and compressed files with their sha256.
pub struct OsImage {
    pub raw: PathBuf,
    pub gzip: PathBuf,
    pub zstd: PathBuf,
}

impl OsImage {
    /// The raw image `dir/name.raw` and its compressed copies beside it.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            raw: dir.join(format!("{name}.raw")),
            gzip: dir.join(format!("{name}.raw.gz")),
            zstd: dir.join(format!("{name}.raw.zst")),
        }
    }

    /// The sha256 recorded for `file` at build time.
    pub fn sha256(&self, file: &Path) -> anyhow::Result<String> {
        let sums = std::fs::read_to_string(file.with_file_name("SHA256SUMS"))?;
        let name = file
            .file_name()
            .and_then(|n| n.to_str())
            .context("image name")?;
        sums.lines()
            .find_map(|l| {
                let (sum, n) = l.split_once("  ")?;
                (n == name).then(|| sum.to_owned())
            })
            .with_context(|| format!("{name} not in SHA256SUMS"))
    }
}

/// Builds (or finds cached) the image for `arch` under `target/images/<arch>/os`.
pub fn build(arch: Arch, source: &Source) -> anyhow::Result<OsImage> {
    let dir = super::dir().join(arch.debian()).join("os");
    let name = format!("debian-{}-{}", super::SUITE, arch.debian());
    let image = OsImage::in_dir(&dir, &name);
    let pkgs = packages(arch);
    let recipe = format!("v{RECIPE_VERSION}\n{}\n", pkgs.join("\n"));
    let stamp = dir.join(".stamp");
    if fresh(&stamp, &recipe) && image.zstd.exists() && image.gzip.exists() {
        return Ok(image);
    }
    let started = Instant::now();
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(&stamp);
    let tree = dir.join("rootfs");
    let include: Vec<&str> = pkgs.iter().map(String::as_str).collect();
    println!(
        "images: building the {} OS image (mmdebstrap)",
        arch.debian()
    );
    let root_uuid = uuid()?;
    // FAT volume ids print as XXXX-XXXX in fstab and GRUB.
    let esp_id = esp_id(&root_uuid);
    let esp_uuid = format!("{}-{}", &esp_id[..4], &esp_id[4..]);
    let fstab = format!(
        "UUID={root_uuid} / ext4 errors=remount-ro 0 1\nUUID={esp_uuid} /boot/efi vfat umask=0077,nofail 0 2\n"
    );
    let grub_cfg = format!(
        "set timeout=0\nset default=0\nmenuentry \"Debian GNU/Linux\" {{\n  \
         search --no-floppy --fs-uuid --set=root {root_uuid}\n  \
         linux /vmlinuz root=UUID={root_uuid} ro {cmdline}\n  initrd /initrd.img\n}}\n",
        cmdline = cmdline(arch)
    );
    // Files the customize hooks upload into the tree.
    let files = dir.join("files");
    std::fs::create_dir_all(&files)?;
    let upload = |name: &str, text: &str, inside: &str| -> anyhow::Result<String> {
        let path = files.join(name);
        std::fs::write(&path, text)?;
        Ok(format!(
            "--customize-hook=upload {} {inside}",
            path.display()
        ))
    };
    let mut hooks: Vec<String> = DPKG_EXCLUDES
        .iter()
        .map(|o| format!("--dpkgopt={o}"))
        .collect();
    hooks.extend([
        "--dpkgopt=force-unsafe-io".to_owned(),
        // Before the kernel's postinst builds the initramfs.
        "--essential-hook=mkdir -p \"$1\"/etc/initramfs-tools/conf.d".to_owned(),
        upload(
            "initramfs.conf",
            INITRAMFS_CONF,
            "/etc/initramfs-tools/conf.d/gb10-image.conf",
        )?
        .replace("--customize-hook", "--essential-hook"),
        upload(
            "initramfs-modules",
            INITRAMFS_MODULES,
            "/etc/initramfs-tools/modules",
        )?
        .replace("--customize-hook", "--essential-hook"),
        "--customize-hook=mkdir -p \"$1\"/boot/grub \"$1\"/boot/efi".to_owned(),
        upload(
            "cloud.cfg",
            CLOUD_CFG,
            "/etc/cloud/cloud.cfg.d/01-gb10-image.cfg",
        )?,
        upload("fstab", &fstab, "/etc/fstab")?,
        upload("grub.cfg", &grub_cfg, "/boot/grub/grub.cfg")?,
        upload("hostname", "debian\n", "/etc/hostname")?,
        // cloud-init renders the network for systemd-networkd.
        "--customize-hook=chroot \"$1\" systemctl enable systemd-networkd".to_owned(),
        // Every install gets its own host keys (from its seed, else cloud-init makes them).
        "--customize-hook=rm -f \"$1\"/etc/ssh/ssh_host_*".to_owned(),
        // Leftovers of the build: logs, caches, old copies of dpkg's and debconf's state,
        // and apt's binary package caches (70 MiB that apt rebuilds when it first runs;
        // every install streams the image, so its size is time on each machine). The
        // downloaded .debs stay until `bootstrap` moves them to the package cache.
        "--customize-hook=rm -rf \"$1\"/var/log/* \"$1\"/var/cache/debconf/*-old \
         \"$1\"/var/lib/dpkg/*-old \"$1\"/var/cache/man \"$1\"/var/cache/apt/*.bin"
            .to_owned(),
    ]);
    let foreign = arch.debian() != super::host_arch()?;
    if foreign {
        // Under emulation, byte-compiling Python in the packages' maintainer scripts takes
        // most of the build; bytecode does not depend on the CPU, so this machine's
        // Python (the same 3.11) compiles it natively after the build instead.
        hooks.extend([
            "--essential-hook=chroot \"$1\" dpkg-divert --quiet --local --rename --add /usr/bin/py3compile"
                .to_owned(),
            "--essential-hook=printf '#!/bin/sh\\nexit 0\\n' > \"$1\"/usr/bin/py3compile && chmod 755 \"$1\"/usr/bin/py3compile"
                .to_owned(),
            "--customize-hook=rm \"$1\"/usr/bin/py3compile && chroot \"$1\" dpkg-divert --quiet --local --rename --remove /usr/bin/py3compile"
                .to_owned(),
            "--customize-hook=python3 -m compileall -q -j 0 -s \"$1\" -p / \"$1\"/usr/lib/python3 \"$1\"/usr/lib/python3.11 >/dev/null"
                .to_owned(),
        ]);
    }
    bootstrap(
        &Bootstrap {
            arch,
            variant: "apt",
            include: &include,
            extra: hooks,
        },
        source,
        &tree,
    )?;
    for f in ["vmlinuz", "initrd.img"] {
        if std::fs::metadata(tree.join(f)).is_err() {
            bail!("/{f} missing in the image tree (kernel postinst did not run?)");
        }
    }
    assemble(
        &Disk {
            arch,
            efi_tree: &tree,
            root_tree: &tree,
            root_uuid: &root_uuid,
            room_mib: 32,
            // Its root's grub.cfg boots the kernel with UEFI's console settings; BIOS
            // boot is shown with the marker image only.
            bios: false,
        },
        &dir,
        &image,
    )?;
    std::fs::remove_dir_all(&tree)?;
    std::fs::write(&stamp, recipe)?;
    println!(
        "images: {} OS image built in {:.0} s: raw {:.0} MiB, gzip {:.0} MiB, zstd {:.0} MiB ({})",
        arch.debian(),
        started.elapsed().as_secs_f64(),
        mib(&image.raw),
        mib(&image.gzip),
        mib(&image.zstd),
        dir.display()
    );
    Ok(image)
}

/// What [`assemble`] puts on a disk.
pub struct Disk<'a> {
    pub arch: Arch,
    /// The tree holding Debian's signed shim and GRUB (`usr/lib/shim`, `usr/lib/grub`).
    pub efi_tree: &'a Path,
    /// The root filesystem's contents.
    pub root_tree: &'a Path,
    /// The root filesystem's UUID; the ESP's volume id is made from it ([`esp_id`]).
    pub root_uuid: &'a str,
    /// Free room in the root filesystem beyond its contents and a twentieth.
    pub room_mib: u64,
    /// Also bootable by a BIOS (amd64): GRUB's i386-pc code in the protective MBR and a
    /// BIOS boot partition, from `efi_tree`'s `usr/lib/grub/i386-pc` (`grub-pc-bin`).
    pub bios: bool,
}

/// Writes `image`: a GPT disk with an ESP (signed shim as the removable-media loader,
/// signed GRUB beside it, a grub.cfg that hands over to the root's `/boot/grub/grub.cfg`)
/// and an ext4 root made of `disk.root_tree`; then its gzip and zstd copies and their
/// SHA256SUMS. `dir` holds the intermediate files.
pub fn assemble(disk: &Disk<'_>, dir: &Path, image: &OsImage) -> anyhow::Result<()> {
    let Disk {
        arch,
        efi_tree,
        root_tree,
        root_uuid,
        room_mib,
        bios,
    } = *disk;
    let esp_id = esp_id(root_uuid);
    let (suffix, loader) = efi(arch);
    let grub_dir = match arch {
        Arch::Amd64 => "x86_64-efi-signed",
        Arch::Arm64 => "arm64-efi-signed",
    };
    let esp_files = [
        (
            efi_tree.join(format!("usr/lib/shim/shim{suffix}.efi.signed")),
            format!("EFI/BOOT/{loader}"),
        ),
        (
            efi_tree.join(format!("usr/lib/shim/mm{suffix}.efi.signed")),
            format!("EFI/BOOT/mm{suffix}.efi"),
        ),
        (
            efi_tree.join(format!("usr/lib/grub/{grub_dir}/grub{suffix}.efi.signed")),
            format!("EFI/BOOT/grub{suffix}.efi"),
        ),
    ];
    // Debian's signed GRUB reads $prefix/grub.cfg (prefix /EFI/debian) or, failing
    // that, grub.cfg beside itself; both point at the root's config.
    let esp_cfg = dir.join("esp-grub.cfg");
    std::fs::write(
        &esp_cfg,
        format!(
            "search --no-floppy --fs-uuid --set=root {root_uuid}\nset prefix=($root)/boot/grub\nconfigfile $prefix/grub.cfg\n"
        ),
    )?;
    let esp = dir.join("esp.img");
    // Shim, MokManager and GRUB take 3 MiB; FAT16 from 16 MiB up.
    let esp_mib = 32;
    let _ = std::fs::remove_file(&esp);
    exec(
        Command::new("mkfs.vfat")
            .args(["-C", "-n", "ESP", "-i", &esp_id])
            .arg(&esp)
            .arg((esp_mib * 1024).to_string()),
    )
    .context("mkfs.vfat (apt-get install dosfstools)")?;
    let mtools = |args: &[&str]| -> anyhow::Result<()> {
        let (tool, rest) = args.split_first().context("mtools")?;
        exec(Command::new(tool).arg("-i").arg(&esp).args(rest))
            .context("mtools (apt-get install mtools)")
    };
    mtools(&["mmd", "::/EFI", "::/EFI/BOOT", "::/EFI/debian"])?;
    for (from, to) in &esp_files {
        if !from.exists() {
            // MokManager is for enrolling keys by hand; a disk boots without it.
            if to.starts_with("EFI/BOOT/mm") {
                continue;
            }
            bail!("{} missing in the image tree", from.display());
        }
        mtools(&["mcopy", &from.to_string_lossy(), &format!("::/{to}")])?;
    }
    for to in ["EFI/BOOT/grub.cfg", "EFI/debian/grub.cfg"] {
        mtools(&["mcopy", &esp_cfg.to_string_lossy(), &format!("::/{to}")])?;
    }
    // Root: the tree plus a twentieth and 32 MiB of room (small, so it writes fast);
    // cloud-init's growpart and resize_rootfs take it to the whole disk on first boot.
    let used = du_mib(root_tree)?;
    println!(
        "images: the root tree holds {used} MiB; largest: {}",
        largest_dirs(root_tree)?
    );
    let root_mib = used + used / 20 + room_mib;
    let root = dir.join("root.img");
    let _ = std::fs::remove_file(&root);
    exec(
        Command::new("truncate")
            .arg("-s")
            .arg(format!("{root_mib}M"))
            .arg(&root),
    )?;
    // GRUB 2.06 cannot read ext4 with orphan_file or metadata_csum_seed.
    exec(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-U", root_uuid, "-m", "1"])
            .args(["-O", "^orphan_file,^metadata_csum_seed", "-d"])
            .arg(root_tree)
            .arg(&root),
    )
    .context("mkfs.ext4 -d (e2fsprogs)")?;
    // The disk: 1 MiB for the GPT, the ESP, the root, 1 MiB for the backup GPT.
    let disk_mib = 1 + esp_mib + root_mib + 1;
    let raw = &image.raw;
    let _ = std::fs::remove_file(raw);
    exec(
        Command::new("truncate")
            .arg("-s")
            .arg(format!("{disk_mib}M"))
            .arg(raw),
    )?;
    let mut sgdisk = Command::new("sgdisk");
    if bios {
        // Alignment 1: the BIOS boot partition fills the gap before the first MiB.
        let (first, last) = super::bios::PARTITION;
        sgdisk.args(["-a", "1", "-n", &format!("3:{first}:{last}")]);
        sgdisk.args(["-t", "3:ef02", "-c", "3:bios"]);
    }
    exec(
        sgdisk
            .args([
                "-n",
                &format!("1:1M:+{esp_mib}M"),
                "-t",
                "1:ef00",
                "-c",
                "1:ESP",
            ])
            .args(["-n", &format!("2:{}M:+{root_mib}M", 1 + esp_mib)])
            .args(["-t", &format!("2:{}", root_type(arch)), "-c", "2:root"])
            .arg(raw),
    )
    .context("sgdisk (apt-get install gdisk)")?;
    for (part, offset) in [(&esp, 1), (&root, 1 + esp_mib)] {
        exec(
            Command::new("dd")
                .arg(format!("if={}", part.display()))
                .arg(format!("of={}", raw.display()))
                .args(["bs=1M", &format!("seek={offset}"), "conv=notrunc,sparse"])
                .arg("status=none"),
        )?;
    }
    std::fs::remove_file(&esp)?;
    std::fs::remove_file(&root)?;
    if bios {
        super::bios::install(raw, &efi_tree.join("usr/lib/grub/i386-pc"), root_uuid, dir)?;
    }
    println!("images: compressing (gzip, zstd)");
    compress(raw, &image.gzip, "gzip -n -1 -c")?;
    compress(raw, &image.zstd, "zstd -q -T0 -3 -c")?;
    let mut sums = String::new();
    for f in [&image.raw, &image.gzip, &image.zstd] {
        sums.push_str(&format!(
            "{}  {}\n",
            sha256(f)?,
            f.file_name().unwrap_or_default().to_string_lossy()
        ));
    }
    std::fs::write(dir.join("SHA256SUMS"), sums)?;
    Ok(())
}

fn compress(from: &Path, to: &Path, cmd: &str) -> anyhow::Result<()> {
    exec(
        Command::new("sh")
            .arg("-c")
            .arg(format!("{cmd} \"$1\" > \"$2\""))
            .arg("sh")
            .arg(from)
            .arg(to),
    )
}

/// The ESP's FAT volume id (8 hex digits) for a disk whose root is `root_uuid`: one
/// value for mkfs.vfat and the fstab.
fn esp_id(root_uuid: &str) -> String {
    root_uuid.replace('-', "")[..8].to_ascii_uppercase()
}

pub(super) fn uuid() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .to_owned())
}

/// Disk usage of a tree in MiB (`du -sm`).
fn du_mib(tree: &Path) -> anyhow::Result<u64> {
    let out = Command::new("du")
        .arg("-sm")
        .arg(tree)
        .output()
        .context("du")?;
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .context("du -sm printed no size")
}

/// The ten largest directories two levels down, with their sizes (`du`), for the build
/// report: what the image spends its bytes on.
fn largest_dirs(tree: &Path) -> anyhow::Result<String> {
    let out = Command::new("du")
        .args(["-m", "-d", "3", "-x"])
        .arg(tree)
        .output()
        .context("du")?;
    let mut rows: Vec<(u64, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (size, path) = l.split_once('\t')?;
            let rel = Path::new(path)
                .strip_prefix(tree)
                .ok()?
                .to_string_lossy()
                .into_owned();
            (rel.matches('/').count() >= 1).then(|| Some((size.parse().ok()?, rel)))?
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.0));
    Ok(rows
        .iter()
        .take(10)
        .map(|(m, p)| format!("/{p} {m}"))
        .collect::<Vec<_>>()
        .join(", "))
}
