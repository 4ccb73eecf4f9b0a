//! `cargo xtask image`: the container image, offline, from Debian packages: the daemon
//! built by Debian's Rust toolchain (natively or cross for arm64), a root filesystem of
//! exactly the files it needs, and the `Containerfile` built by podman into an archive
//! that `podman load` and `k3s ctr images import` accept.
pub mod check;
mod podman;
mod rootfs;

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

pub use self::podman::Podman;
use crate::{e2e::assets::Arch, exec, root};

/// The name the chart pulls (`image.repository:appVersion`), fully qualified as
/// containerd and podman both spell an unqualified Docker name, so an imported image
/// matches the chart's `gb10-provision:<version>` with no registry in between.
pub fn reference() -> String {
    format!(
        "docker.io/library/gb10-provision:{}",
        env!("CARGO_PKG_VERSION")
    )
}

/// A built image.
pub struct Image {
    pub arch: Arch,
    /// The docker-archive tarball.
    pub archive: PathBuf,
}

impl Arch {
    /// The Rust target the daemon is built for.
    fn rust_target(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-unknown-linux-gnu",
            Self::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// This machine's architecture.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            Self::Arm64
        } else {
            Self::Amd64
        }
    }
}

/// Where an architecture's image work lives (base rootfs cache, rootfs, archive).
pub fn dir(arch: Arch) -> PathBuf {
    root().join("target/image").join(arch.debian())
}

/// Builds the image for `arch` and writes its archive; prints its contents and size.
pub fn build(arch: Arch) -> anyhow::Result<Image> {
    crate::setup::image(arch != Arch::host())?;
    let dir = dir(arch);
    let base = rootfs::base(arch, &dir)?;
    let daemon = build_daemon(arch)?;
    let rootfs_dir = dir.join("rootfs");
    let entries = rootfs::assemble(arch, &base, &daemon, &rootfs_dir)?;

    let podman = Podman::new(&root().join("target/image/podman-build"))?;
    let tag = format!("{}-{}", reference(), arch.debian());
    podman.run(&[
        "build",
        "--quiet",
        "--platform",
        &format!("linux/{}", arch.debian()),
        "--file",
        root().join("Containerfile").to_str().context("path")?,
        "--tag",
        &tag,
        rootfs_dir.to_str().context("path")?,
    ])?;
    // The archive names the image as the chart does; the per-arch tag only keeps two
    // architectures apart in the build storage.
    podman.run(&["tag", &tag, &reference()])?;
    let archive = root().join(format!(
        "target/image/gb10-provision-{}-{}.tar",
        env!("CARGO_PKG_VERSION"),
        arch.debian()
    ));
    let _ = fs::remove_file(&archive);
    podman.run(&[
        "save",
        "--quiet",
        "--format",
        "docker-archive",
        "--output",
        archive.to_str().context("path")?,
        &reference(),
    ])?;
    podman.run(&["untag", &reference(), &reference()])?;

    let inspect = podman.run(&[
        "image",
        "inspect",
        "--format",
        "{{.Os}}/{{.Architecture}} {{.Size}}",
        &tag,
    ])?;
    let manifest = dir.join("contents.txt");
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let mut text = String::new();
    for e in &entries {
        text.push_str(&format!("{:>10}  {:<55} {}\n", e.size, e.path, e.origin));
    }
    text.push_str(&format!("{total:>10}  total, {} files\n", entries.len()));
    fs::write(&manifest, &text)?;
    print!("{text}");
    println!(
        "image: {} ({}; {} bytes unpacked) in {} ({} bytes); contents in {}",
        reference(),
        inspect.trim(),
        total,
        archive.display(),
        fs::metadata(&archive)?.len(),
        manifest.display()
    );
    Ok(Image { arch, archive })
}

/// Builds the daemon for `arch` with Debian's rustc-web (1.96), the toolchain whose
/// standard library Debian ships for arm64 too (`libstd-rust-web-dev:arm64`), so both
/// architectures come from one compiler and no rustup download. build.rs builds the
/// eBPF object with the toolchain every build picks (`ebpf_toolchain.rs`; on a machine
/// set up by `cargo xtask setup`, Debian's, linked as `gb10-ebpf`); it is bytecode for
/// `bpfel-unknown-none`, the same whatever the userspace target.
fn build_daemon(arch: Arch) -> anyhow::Result<PathBuf> {
    // Per architecture, so both can build at once.
    let target_dir = dir(arch).join("cargo");
    let target = arch.rust_target();
    let mut cmd = Command::new("/usr/bin/cargo");
    cmd.args(["build", "--release", "--locked", "--quiet"])
        .args(["-p", "gb10-userspace", "--bin", "gb10-provision"])
        .args(["--target", target])
        .arg("--target-dir")
        .arg(&target_dir)
        // Debian's rustc, not rustup's proxy (whose stable has no aarch64 std here).
        .env("RUSTC", "/usr/bin/rustc")
        .env_remove("RUSTUP_TOOLCHAIN");
    if arch != Arch::host() {
        let var = format!(
            "CARGO_TARGET_{}_LINKER",
            target.to_ascii_uppercase().replace('-', "_")
        );
        let gcc = format!("{}-gcc", rootfs::triplet(arch));
        cmd.env(var, gcc);
    }
    eprintln!("image: building gb10-provision for {target} with Debian's rustc (release)");
    exec(&mut cmd).context(
        "building the daemon with /usr/bin/cargo (cargo xtask setup installs cargo-web)",
    )?;
    let bin = target_dir.join(target).join("release/gb10-provision");
    check_arch(&bin, arch)?;
    Ok(bin)
}

/// Fails unless `bin` is an ELF executable for `arch`.
fn check_arch(bin: &Path, arch: Arch) -> anyhow::Result<()> {
    let out = Command::new("readelf").arg("-h").arg(bin).output()?;
    let header = String::from_utf8_lossy(&out.stdout);
    let machine = match arch {
        Arch::Amd64 => "X86-64",
        Arch::Arm64 => "AArch64",
    };
    if !header
        .lines()
        .any(|l| l.contains("Machine:") && l.contains(machine))
    {
        bail!("{} is not a {machine} executable:\n{header}", bin.display());
    }
    Ok(())
}
