//! Boot assets from Debian packages only: `apt-get download` into
//! `target/e2e/assets/<arch>/debs` (which `gb10-provision assets` turns into the boot
//! chain, see [`super::lab`]), unpacked with `dpkg-deb -x` for what the chain does not
//! hold: a busybox initramfs that phones home, and a GRUB with the http module. Cached.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{exec, root};

/// The kernel modules that bring up a virtio NIC on Debian's cloud kernels, in load
/// order (the cloud kernels build virtio as modules).
const NIC_MODULES: &[&str] = &[
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
];

/// The initramfs /init: NIC up, DHCP, one heartbeat, power off. `gb10.heartbeat=URL`
/// on the kernel command line says where. busybox 1.35's static `wget -T` crashes, so
/// `timeout` bounds it instead.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t devtmpfs dev /dev
exec 0</dev/console 1>/dev/console 2>&1
mount -t proc proc /proc
mount -t sysfs sys /sys
echo "e2e: initramfs up"
for m in $(cat /lib/e2e/order); do insmod /lib/e2e/$m.ko 2>/dev/null; done
url=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^gb10.heartbeat=//p')
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up
mac=$(cat /sys/class/net/eth0/address)
if udhcpc -i eth0 -n -q -t 10 -T 2 -s /bin/e2e-dhcp; then
  ip=$(ip -4 -o addr show dev eth0 | sed -n 's/.* inet \([0-9.]*\).*/\1/p')
  echo "e2e: lease $ip on $mac"
  n=0
  while [ $n -lt 5 ]; do
    if timeout 10 wget -q -O - --header 'Content-Type: application/json' \
        --post-data "{\"mac\":\"$mac\",\"phase\":\"onboarded\",\"ip\":\"$ip\"}" "$url"; then
      echo
      echo "e2e: heartbeat sent"
      break
    fi
    n=$((n+1)); sleep 1
  done
else
  echo "e2e: no DHCP lease"
fi
poweroff -f
"#;

/// udhcpc's event script: configure the address it got.
const DHCP_SCRIPT: &str = r#"#!/bin/sh
[ "$1" = bound ] || [ "$1" = renew ] || exit 0
ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
"#;

/// A CPU architecture of the VMs and images, in Debian's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub fn debian(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// GRUB's EFI platform directory (`usr/lib/grub/<this>`).
    pub fn grub_platform(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-efi",
            Self::Arm64 => "arm64-efi",
        }
    }
}

/// What one architecture boots beyond the packages.
pub struct ArchAssets {
    /// The downloaded packages (shim, GRUB, kernel, iPXE, ...): `gb10-provision assets`
    /// places the boot chain from these.
    pub debs: PathBuf,
    /// The busybox initramfs that phones home (a linux-image package has no initrd).
    pub initrd: PathBuf,
    /// A network GRUB with the http module, for UEFI HTTP boot (see [`build_http_grub`]).
    pub grub_http: PathBuf,
    /// The packages unpacked (signed shim and GRUB for the marker image's ESP).
    pub tree: PathBuf,
}

pub struct Assets {
    pub amd64: ArchAssets,
    pub arm64: ArchAssets,
}

impl Assets {
    /// Downloads and unpacks what is not cached yet; builds the initramfs.
    pub fn prepare() -> anyhow::Result<Self> {
        let base = root().join("target/e2e/assets");
        Ok(Self {
            amd64: prepare_arch(&base, Arch::Amd64)?,
            arm64: prepare_arch(&base, Arch::Arm64)?,
        })
    }
}

fn packages(arch: Arch) -> anyhow::Result<Vec<String>> {
    let a = arch.debian();
    let kernel = gb10_lab::debs::cloud_kernel_package(a).map_err(anyhow::Error::msg)?;
    let mut list = vec![
        kernel,
        format!("shim-signed:{a}"),
        format!("grub-efi-{a}-signed:{a}"),
        format!("grub-efi-{a}-bin:{a}"),
        format!("busybox-static:{a}"),
    ];
    if arch == Arch::Amd64 {
        list.push("ipxe".into());
        // GRUB's BIOS (i386-pc) code for the marker image's BIOS boot.
        list.push("grub-pc-bin".into());
    }
    Ok(list)
}

fn prepare_arch(base: &Path, arch: Arch) -> anyhow::Result<ArchAssets> {
    let a = arch.debian();
    let tree = base.join(a).join("tree");
    let debs = base.join(a).join("debs");
    let list = packages(arch)?;
    let files = gb10_lab::debs::apt_download(&debs, &list).map_err(anyhow::Error::msg)?;
    // The marker holds the package list, so a changed list unpacks afresh.
    let done = base.join(a).join(".unpacked");
    if std::fs::read_to_string(&done).ok().as_deref() != Some(list.join("\n").as_str()) {
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::create_dir_all(&tree)?;
        for deb in &files {
            exec(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&tree))?;
        }
        // Built from the old tree: rebuild.
        let _ = std::fs::remove_file(base.join(a).join("initrd.img"));
        let _ = std::fs::remove_file(base.join(a).join(format!("grubhttp{}.efi", efi(arch))));
        std::fs::write(&done, list.join("\n"))?;
    }
    let version = std::fs::read_dir(tree.join("lib/modules"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|v| v.ends_with(a))
        .with_context(|| format!("no kernel modules for {a} in {}", tree.display()))?;
    let grubdir = arch.grub_platform();
    let initrd = base.join(a).join("initrd.img");
    if !initrd.exists() {
        build_initrd(&tree, &version, &initrd)?;
    }
    let grub_http = base.join(a).join(format!("grubhttp{}.efi", efi(arch)));
    if !grub_http.exists() {
        build_http_grub(
            &tree.join("usr/lib/grub").join(grubdir),
            grubdir,
            &grub_http,
        )?;
    }
    if !grub_http.exists() || !initrd.exists() {
        bail!(
            "{} or {} missing after building",
            initrd.display(),
            grub_http.display()
        );
    }
    Ok(ArchAssets {
        debs,
        initrd,
        grub_http,
        tree,
    })
}

/// The suffix of UEFI file names (`x64`, `aa64`).
fn efi(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x64",
        Arch::Arm64 => "aa64",
    }
}

/// Modules of the HTTP GRUB: the network stack, both fetch protocols, and what
/// gb10-provision's `grub.cfg` uses.
const HTTP_GRUB_MODULES: &[&str] = &[
    "efinet",
    "net",
    "http",
    "tftp",
    "normal",
    "configfile",
    "linux",
    "echo",
    "test",
    "true",
    "sleep",
    "reboot",
    "halt",
    "ls",
    "cat",
    "minicmd",
];

/// Debian's signed network GRUB images hold no http module, so the HTTP boot scenarios
/// get one built by `grub-mkimage` from Debian's unsigned `grub-efi-<arch>-bin` modules
/// (it runs with Secure Boot off, which is how Debian's AAVMF ships). Debian's GRUB takes
/// its server from the UEFI HTTP boot device path (`prefix` becomes
/// `(http,<server>:<port>)/grub`), but its card sends nothing until `net_bootp` has
/// configured it, which the embedded config does first.
fn build_http_grub(modules: &Path, format: &str, out: &Path) -> anyhow::Result<()> {
    let cfg = out.with_extension("cfg");
    std::fs::write(&cfg, "net_bootp\n")?;
    exec(
        Command::new("grub-mkimage")
            .arg("-O")
            .arg(format)
            .arg("-d")
            .arg(modules)
            .arg("-p")
            .arg("/grub")
            .arg("-c")
            .arg(&cfg)
            .arg("-o")
            .arg(out)
            .args(HTTP_GRUB_MODULES),
    )
    .context("grub-mkimage (apt-get install grub-common)")
}

/// A gzip'd newc cpio: busybox, /init, the NIC modules.
fn build_initrd(tree: &Path, version: &str, out: &Path) -> anyhow::Result<()> {
    let stage = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&stage);
    for d in ["bin", "dev", "proc", "sys", "lib/e2e", "tmp"] {
        std::fs::create_dir_all(stage.join(d))?;
    }
    std::fs::copy(tree.join("bin/busybox"), stage.join("bin/busybox"))
        .context("busybox from busybox-static")?;
    let modules = tree.join("lib/modules").join(version).join("kernel");
    for m in NIC_MODULES {
        let found = find_file(&modules, &format!("{m}.ko"))
            .with_context(|| format!("module {m}.ko in {}", modules.display()))?;
        std::fs::copy(found, stage.join(format!("lib/e2e/{m}.ko")))?;
    }
    std::fs::write(stage.join("lib/e2e/order"), NIC_MODULES.join("\n"))?;
    pack_initrd(
        &stage,
        &[("init", INIT), ("bin/e2e-dhcp", DHCP_SCRIPT)],
        "gzip -9",
        out,
    )?;
    let _ = std::fs::remove_dir_all(&stage);
    Ok(())
}

/// Writes `scripts` (path in the stage, text) executable into `stage`, then packs the
/// stage as a newc cpio owned by root, compressed by `compress` (a filter command).
pub fn pack_initrd(
    stage: &Path,
    scripts: &[(&str, &str)],
    compress: &str,
    out: &Path,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    for (path, text) in scripts {
        let p = stage.join(path);
        std::fs::write(&p, text)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    exec(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd \"$1\" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | {compress} > \"$2\""
            ))
            .arg("sh")
            .arg(stage)
            .arg(out),
    )
    .context("cpio (apt-get install cpio)")
}

/// Depth-first search for a file named `name` below `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if entry.file_name() == name {
            return Some(path);
        }
    }
    None
}
