//! Boot assets from Debian packages only: `apt-get download`, `dpkg-deb -x` into
//! `target/e2e/assets/<arch>`, and a busybox initramfs that phones home. Cached.
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

/// A CPU architecture of the VMs, in Debian's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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

/// Everything one architecture boots, unpacked.
pub struct ArchAssets {
    /// Where the packages were unpacked.
    pub tree: PathBuf,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub shim: PathBuf,
    /// Debian's signed network GRUB (`grubnet*.efi.signed`).
    pub grub: PathBuf,
    /// A network GRUB with the http module, for UEFI HTTP boot (see [`build_http_grub`]).
    pub grub_http: PathBuf,
}

pub struct Assets {
    pub amd64: ArchAssets,
    pub arm64: ArchAssets,
}

impl Assets {
    pub fn get(&self, arch: Arch) -> &ArchAssets {
        match arch {
            Arch::Amd64 => &self.amd64,
            Arch::Arm64 => &self.arm64,
        }
    }

    /// Downloads and unpacks what is not cached yet; builds the initramfs.
    pub fn prepare() -> anyhow::Result<Self> {
        let base = root().join("target/e2e/assets");
        Ok(Self {
            amd64: prepare_arch(&base, Arch::Amd64)?,
            arm64: prepare_arch(&base, Arch::Arm64)?,
        })
    }

    /// Upstream-ish iPXE EFI binaries (Debian's `ipxe`, an `all` package).
    pub fn ipxe_efi(&self, name: &str) -> PathBuf {
        // usr/lib/ipxe/ipxe.efi is an absolute symlink to /boot/ipxe.efi.
        let lib = self.amd64.tree.join("usr/lib/ipxe").join(name);
        let boot = self.amd64.tree.join("boot").join(name);
        if boot.exists() { boot } else { lib }
    }
}

fn packages(arch: Arch) -> anyhow::Result<Vec<String>> {
    let a = arch.debian();
    // The metapackage names the current kernel package; download that one.
    let meta = format!("linux-image-cloud-{a}:{a}");
    let out = Command::new("apt-cache")
        .args(["depends", &meta])
        .output()
        .context("apt-cache depends")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kernel = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: linux-image-"))
        .with_context(|| format!("apt-cache depends {meta}: no kernel package in\n{text}"))?;
    let kernel = format!("linux-image-{}", kernel.trim());
    let kernel = if kernel.contains(':') {
        kernel
    } else {
        format!("{kernel}:{a}")
    };
    let mut list = vec![
        kernel,
        format!("shim-signed:{a}"),
        format!("grub-efi-{a}-signed:{a}"),
        format!("grub-efi-{a}-bin:{a}"),
        format!("busybox-static:{a}"),
    ];
    if arch == Arch::Amd64 {
        list.push("ipxe".into());
    }
    Ok(list)
}

fn prepare_arch(base: &Path, arch: Arch) -> anyhow::Result<ArchAssets> {
    let a = arch.debian();
    let tree = base.join(a).join("tree");
    // The marker holds the package list, so a changed list unpacks afresh.
    let done = base.join(a).join(".unpacked");
    let list = packages(arch)?;
    if std::fs::read_to_string(&done).ok().as_deref() != Some(list.join("\n").as_str()) {
        let debs = base.join(a).join("debs");
        let _ = std::fs::remove_dir_all(&debs);
        std::fs::create_dir_all(&debs)?;
        let _ = std::fs::remove_dir_all(&tree);
        println!("e2e: apt-get download {}", list.join(" "));
        // Not `exec`: that runs from the workspace root, and apt-get downloads into the
        // current directory.
        let status = Command::new("apt-get")
            .arg("download")
            .args(&list)
            .current_dir(&debs)
            .status()
            .context("spawning apt-get download")?;
        if !status.success() {
            bail!("apt-get download {} failed ({status})", list.join(" "));
        }
        std::fs::create_dir_all(&tree)?;
        for deb in std::fs::read_dir(&debs)? {
            let deb = deb?.path();
            exec(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
        }
        std::fs::write(&done, list.join("\n"))?;
    }
    let version = std::fs::read_dir(tree.join("lib/modules"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|v| v.ends_with(a))
        .with_context(|| format!("no kernel modules for {a} in {}", tree.display()))?;
    let efi = match arch {
        Arch::Amd64 => "x64",
        Arch::Arm64 => "aa64",
    };
    let grubdir = arch.grub_platform();
    let initrd = base.join(a).join("initrd.img");
    if !initrd.exists() {
        build_initrd(&tree, &version, &initrd)?;
    }
    let grub_http = base.join(a).join(format!("grubhttp{efi}.efi"));
    if !grub_http.exists() {
        build_http_grub(
            &tree.join("usr/lib/grub").join(grubdir),
            grubdir,
            &grub_http,
        )?;
    }
    let assets = ArchAssets {
        kernel: tree.join(format!("boot/vmlinuz-{version}")),
        initrd,
        shim: tree.join(format!("usr/lib/shim/shim{efi}.efi.signed")),
        grub: tree.join(format!(
            "usr/lib/grub/{grubdir}-signed/grubnet{efi}.efi.signed"
        )),
        grub_http,
        tree,
    };
    for p in [
        &assets.kernel,
        &assets.shim,
        &assets.grub,
        &assets.grub_http,
    ] {
        if !p.exists() {
            bail!("{} missing after unpacking", p.display());
        }
    }
    Ok(assets)
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
