//! `cargo xtask image`: the container image, offline, from Debian packages: the daemon
//! built by Debian's Rust toolchain (natively or cross for arm64; or, for CI's check
//! image, the tests' debug build), a root filesystem of exactly the files it needs, and
//! the `Containerfile` built by podman into an archive that `podman load` and `k3s ctr
//! images import` accept.
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

/// Which daemon an image holds, and so its tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Build {
    /// The release artifact: the daemon built for release by Debian's rustc, tagged
    /// `<version>` as the chart pulls it.
    Release,
    /// A check image, for CI: the debug daemon `cargo build` made of this tree (the
    /// binary the tests and the e2e boots ran), of this machine's architecture, tagged
    /// `<version>-check` so that it is never taken for the release artifact.
    Check,
}

impl Build {
    /// The image's tag.
    pub fn tag(self) -> String {
        match self {
            Self::Release => env!("CARGO_PKG_VERSION").to_owned(),
            Self::Check => format!("{}-check", env!("CARGO_PKG_VERSION")),
        }
    }

    /// How output names an image of `arch`: a check image always says it is one.
    pub fn label(self, arch: Arch) -> String {
        match self {
            Self::Release => arch.debian().to_owned(),
            Self::Check => format!("{} check image", arch.debian()),
        }
    }
}

/// The name the chart pulls (`image.repository:appVersion`; a check image's tag is set
/// by `image.tag`), fully qualified as containerd and podman both spell an unqualified
/// Docker name, so an imported image matches the chart's `gb10-provision:<tag>` with no
/// registry in between.
pub fn reference(build: Build) -> String {
    format!("docker.io/library/gb10-provision:{}", build.tag())
}

/// A built image.
pub struct Image {
    pub arch: Arch,
    pub build: Build,
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

/// Builds the image for `arch` holding the `build` daemon and writes its archive; prints
/// its contents and size.
pub fn build(arch: Arch, build: Build) -> anyhow::Result<Image> {
    if build == Build::Check && arch != Arch::host() {
        bail!(
            "a check image holds this machine's debug daemon ({}); an {} image is built for release",
            Arch::host().debian(),
            arch.debian()
        );
    }
    crate::setup::image(arch != Arch::host())?;
    let dir = dir(arch);
    let base = rootfs::base(arch, &dir)?;
    let (daemon, origin) = match build {
        Build::Release => (build_daemon(arch)?, "built by cargo xtask image"),
        Build::Check => (
            check_daemon(arch)?,
            "debug build (cargo build), debug info stripped",
        ),
    };
    let rootfs_dir = dir.join("rootfs");
    let entries = rootfs::assemble(arch, &base, &daemon, origin, &rootfs_dir)?;

    let podman = Podman::new(&root().join("target/image/podman-build"))?;
    let reference = reference(build);
    let tag = format!("{reference}-{}", arch.debian());
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
    podman.run(&["tag", &tag, &reference])?;
    let archive = root().join(format!(
        "target/image/gb10-provision-{}-{}.tar",
        build.tag(),
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
        &reference,
    ])?;
    podman.run(&["untag", &reference, &reference])?;

    let inspect = podman.run(&[
        "image",
        "inspect",
        "--format",
        "{{.Os}}/{{.Architecture}} {{.Size}}",
        &tag,
    ])?;
    let manifest = dir.join(match build {
        Build::Release => "contents.txt",
        Build::Check => "contents-check.txt",
    });
    let total: u64 = entries.iter().map(|e| e.size).sum();
    let mut text = String::new();
    for e in &entries {
        text.push_str(&format!("{:>10}  {:<55} {}\n", e.size, e.path, e.origin));
    }
    text.push_str(&format!("{total:>10}  total, {} files\n", entries.len()));
    fs::write(&manifest, &text)?;
    print!("{text}");
    let what = match build {
        Build::Release => "image",
        Build::Check => "check image (the debug daemon of this tree, NOT the release artifact)",
    };
    println!(
        "{what}: {reference} ({}; {} bytes unpacked) in {} ({} bytes); contents in {}",
        inspect.trim(),
        total,
        archive.display(),
        fs::metadata(&archive)?.len(),
        manifest.display()
    );
    Ok(Image {
        arch,
        build,
        archive,
    })
}

/// The daemon of a check image: the debug build `cargo build` makes of this tree (a
/// no-op after `cargo test` and the e2e boots, which run the same binary), built by
/// rustup's toolchain for this machine only, against this machine's glibc (Debian 12,
/// as the image's). Its debug info (most of its 200-odd MB) is stripped into a copy:
/// the code the check runs is the tests' code, the image stays near the release size.
fn check_daemon(arch: Arch) -> anyhow::Result<PathBuf> {
    eprintln!("image: the debug daemon of this tree (cargo build), for a check image");
    let debug = crate::e2e::lab::build_daemon(false)?;
    let bin = dir(arch).join("gb10-provision-check");
    exec(
        Command::new("objcopy")
            .arg("--strip-debug")
            .arg(&debug)
            .arg(&bin),
    )
    .context("objcopy (binutils; cargo xtask setup installs it)")?;
    check_arch(&bin, arch)?;
    Ok(bin)
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
