//! Images built from Debian packages with mmdebstrap: the lab's OS disk image and the
//! install environment (kernel + initramfs), cached under `target/images`.
pub mod bios;
pub mod installer;
pub mod marker;
pub mod os_image;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::{e2e::assets::Arch, exec, root};

/// The Debian release everything is built from.
pub const SUITE: &str = "bookworm";

/// Where images, their package caches and their stamps live.
pub fn dir() -> PathBuf {
    root().join("target/images")
}

/// Where packages come from, and whether the network may be used.
#[derive(Clone, Debug)]
pub struct Source {
    /// apt source lines (`deb URL SUITE COMPONENTS`); Debian's own mirror by default.
    pub mirrors: Vec<String>,
    /// Use only the package cache (`target/images/cache/<arch>`): no `apt-get update`,
    /// nothing downloaded; fails naming what is missing.
    pub offline: bool,
}

impl Default for Source {
    fn default() -> Self {
        Self {
            mirrors: vec![
                format!("deb http://deb.debian.org/debian {SUITE} main"),
                format!("deb http://deb.debian.org/debian {SUITE}-updates main"),
                format!("deb http://deb.debian.org/debian-security {SUITE}-security main"),
            ],
            offline: false,
        }
    }
}

impl Source {
    /// `--mirror URL` replaces Debian's mirrors by one (a local mirror or a proxy).
    pub fn new(mirror: Option<&str>, offline: bool) -> Self {
        let mut s = Self {
            offline,
            ..Self::default()
        };
        if let Some(m) = mirror {
            s.mirrors = vec![format!("deb {m} {SUITE} main")];
        }
        s
    }
}

/// The per-arch package cache: downloaded `.deb`s and the apt lists they were picked from,
/// so a later build needs no network (`--offline`).
fn cache(arch: Arch) -> PathBuf {
    dir().join("cache").join(arch.debian())
}

/// What one mmdebstrap run installs.
pub struct Bootstrap<'a> {
    pub arch: Arch,
    /// mmdebstrap's variant: `extract` (unpack only, no maintainer scripts, no
    /// emulation) or `apt` (a real installed system).
    pub variant: &'a str,
    pub include: &'a [&'a str],
    /// Extra mmdebstrap arguments (hooks, dpkg options).
    pub extra: Vec<String>,
}

/// Runs mmdebstrap into the directory `out` (replaced), reusing and refilling the
/// package cache.
pub fn bootstrap(b: &Bootstrap<'_>, source: &Source, out: &Path) -> anyhow::Result<()> {
    if b.arch.debian() != host_arch()? && b.variant != "extract" {
        binfmt(b.arch)?;
    }
    let cache = cache(b.arch);
    let (archives, lists) = (cache.join("archives"), cache.join("lists"));
    std::fs::create_dir_all(&archives)?;
    std::fs::create_dir_all(&lists)?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("removing {}", out.display()))?;
    }
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--variant={}", b.variant))
        .arg(format!("--arch={}", b.arch.debian()))
        .arg(format!("--include={}", b.include.join(",")))
        // Keep the downloaded packages and lists in the tree: they go to the cache below.
        .args([
            "--skip=essential/unlink",
            "--skip=cleanup/apt/cache",
            "--skip=cleanup/apt/lists",
        ])
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives \"$1\"/var/lib/apt/lists")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            archives.display()
        ));
    if source.offline {
        if std::fs::read_dir(&lists)?.next().is_none() {
            bail!(
                "--offline: no package lists cached in {} yet; build once with the network",
                lists.display()
            );
        }
        cmd.arg(format!(
            "--setup-hook=sync-in {} /var/lib/apt/lists/",
            lists.display()
        ))
        .arg("--skip=update")
        // Nothing may be fetched: a package missing from the cache fails the build.
        .arg("--aptopt=Acquire::http::Proxy \"http://127.0.0.1:9\"");
    }
    cmd.args(&b.extra).arg(SUITE).arg(out);
    for m in &source.mirrors {
        cmd.arg(m);
    }
    exec(&mut cmd).context("mmdebstrap (apt-get install mmdebstrap)")?;
    // Refill the cache from what this run used, and take it out of the tree.
    let sync = |from: PathBuf, to: &Path, debs_only: bool| -> anyhow::Result<()> {
        let Ok(entries) = std::fs::read_dir(&from) else {
            return Ok(());
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            let keep = if debs_only {
                p.extension().is_some_and(|x| x == "deb")
            } else {
                p.is_file() && name != "lock"
            };
            if keep {
                let dest = to.join(&name);
                if !dest.exists() || !debs_only {
                    std::fs::copy(&p, &dest)?;
                }
                std::fs::remove_file(&p)?;
            }
        }
        Ok(())
    };
    sync(out.join("var/cache/apt/archives"), &archives, true)?;
    sync(out.join("var/lib/apt/lists"), &lists, false)?;
    Ok(())
}

/// The machine's own Debian architecture.
pub fn host_arch() -> anyhow::Result<String> {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .context("dpkg --print-architecture")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Registers qemu-user-static for `arch` with binfmt_misc (mounting it first), so a
/// foreign chroot's maintainer scripts run under emulation.
fn binfmt(arch: Arch) -> anyhow::Result<()> {
    let name = match arch {
        Arch::Amd64 => "qemu-x86_64",
        Arch::Arm64 => "qemu-aarch64",
    };
    let fs = Path::new("/proc/sys/fs/binfmt_misc");
    if !fs.join("register").exists() {
        exec(
            Command::new("mount")
                .args(["-t", "binfmt_misc", "binfmt_misc"])
                .arg(fs),
        )
        .context("mounting binfmt_misc")?;
    }
    if fs.join(name).exists() {
        return Ok(());
    }
    let conf = Path::new("/usr/lib/binfmt.d").join(format!("{name}.conf"));
    let line = std::fs::read_to_string(&conf)
        .with_context(|| format!("{} (apt-get install qemu-user-static)", conf.display()))?;
    std::fs::write(fs.join("register"), line.trim())
        .with_context(|| format!("registering {name} with binfmt_misc"))?;
    Ok(())
}

/// The sha256 of a file, as hex (sha256sum's first field).
pub fn sha256(path: &Path) -> anyhow::Result<String> {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .with_context(|| format!("sha256sum {}", path.display()))?;
    if !out.status.success() {
        bail!("sha256sum {} failed", path.display());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_owned())
}

/// Whether `out` was built from exactly `recipe` (the stamp next to it says so).
pub fn fresh(stamp: &Path, recipe: &str) -> bool {
    std::fs::read_to_string(stamp).is_ok_and(|s| s == recipe)
}

/// A file's size in MiB, for reports.
pub fn mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1024.0 * 1024.0))
}
