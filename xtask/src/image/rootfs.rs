//! The image's root filesystem: a Debian base extracted by mmdebstrap (cached), and from
//! it exactly the files the daemon needs at run time, found by following ELF
//! dependencies, each traced to the Debian package it came from.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::e2e::assets::Arch;

/// What mmdebstrap extracts (with their dependencies): glibc, libgcc_s (Rust's unwinder
/// links it) and the OpenSSH client, whose `ssh` and `ssh-keygen` the hosts join step
/// runs (`gb10-userspace/src/hosts/ssh.rs`). Only some of their files reach the image.
const BASE_PACKAGES: &[&str] = &["libc6", "libgcc-s1", "openssh-client"];

/// Programs taken from the base besides the daemon, with why.
const PROGRAMS: &[&str] = &[
    // The hosts join step: an ephemeral key per rebuild, then a command on the host.
    "usr/bin/ssh-keygen",
    "usr/bin/ssh",
];

/// Where the daemon lives in the image (the chart's `command`).
pub const DAEMON_PATH: &str = "usr/local/bin/gb10-provision";

/// The Debian suite the base comes from (the build host's, Debian 12).
const SUITE: &str = "bookworm";

/// Files written, not taken from a package. ssh refuses to run for a UID without a
/// passwd entry ("No user exists for uid 0"); glibc reads these through nsswitch.
const WRITTEN: &[(&str, &str)] = &[
    (
        "etc/passwd",
        "root:x:0:0:root:/nonexistent:/usr/sbin/nologin\n",
    ),
    ("etc/group", "root:x:0:\n"),
    (
        "etc/nsswitch.conf",
        "passwd: files\ngroup: files\nhosts: files dns\n",
    ),
];

/// One file in the image and where it came from.
pub struct Entry {
    pub path: String,
    pub size: u64,
    /// `package version`, or what wrote it.
    pub origin: String,
}

/// The Debian triplet of `arch`: its library directory, its cross compiler's prefix.
pub fn triplet(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
    }
}

/// The Debian apt sources of this machine, which mmdebstrap reads the packages from.
fn sources() -> anyhow::Result<PathBuf> {
    [
        "/etc/apt/sources.list.d/debian.sources",
        "/etc/apt/sources.list",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| fs::metadata(p).is_ok_and(|m| m.len() > 0))
    .context(
        "no Debian apt sources (/etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list)",
    )
}

/// The extracted Debian base for `arch` under `dir/base`, made once and kept: rebuilt
/// only when the package list or the apt sources change (the stamp records both).
/// `--variant=extract` unpacks without running maintainer scripts, so an arm64 base
/// needs no emulation; the .debs stay in its apt cache to trace files to packages.
pub fn base(arch: Arch, dir: &Path) -> anyhow::Result<PathBuf> {
    let base = dir.join("base");
    let sources = sources()?;
    let stamp_text = format!(
        "{SUITE} {} {}\n{}",
        arch.debian(),
        BASE_PACKAGES.join(","),
        fs::read_to_string(&sources)?
    );
    let stamp = dir.join("base.stamp");
    if fs::read_to_string(&stamp).is_ok_and(|s| s == stamp_text) && base.is_dir() {
        return Ok(base);
    }
    let _ = fs::remove_dir_all(&base);
    let _ = fs::remove_file(&stamp);
    fs::create_dir_all(dir)?;
    eprintln!(
        "image: mmdebstrap {SUITE} {} base ({}; cached in {})",
        arch.debian(),
        BASE_PACKAGES.join(", "),
        base.display()
    );
    crate::exec(
        Command::new("mmdebstrap")
            .args(["--quiet", "--variant=extract", "--skip=cleanup/apt/cache"])
            .arg(format!("--architectures={}", arch.debian()))
            .arg(format!("--include={}", BASE_PACKAGES.join(",")))
            .arg(SUITE)
            .arg(&base)
            .arg(&sources),
    )
    .context("mmdebstrap (apt-get install mmdebstrap; cargo xtask setup does)")?;
    fs::write(&stamp, stamp_text)?;
    Ok(base)
}

/// Which package shipped each file of the base: `path` (no leading `/`) → `package
/// version`, from the .debs mmdebstrap left in its cache.
fn owners(base: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let cache = base.join("var/cache/apt/archives");
    let mut owners = BTreeMap::new();
    for deb in fs::read_dir(&cache).with_context(|| format!("{}", cache.display()))? {
        let deb = deb?.path();
        if deb.extension().is_none_or(|e| e != "deb") {
            continue;
        }
        let field = |name: &str| -> anyhow::Result<String> {
            let out = Command::new("dpkg-deb")
                .arg("-f")
                .arg(&deb)
                .arg(name)
                .output()?;
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        };
        let origin = format!("{} {}", field("Package")?, field("Version")?);
        let out = Command::new("dpkg-deb")
            .arg("--fsys-tarfile")
            .arg(&deb)
            .output()
            .with_context(|| format!("dpkg-deb --fsys-tarfile {}", deb.display()))?;
        let list = Command::new("tar")
            .args(["-t", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()?;
        let tar = {
            use std::io::Write as _;
            let mut list = list;
            list.stdin
                .take()
                .context("tar stdin")?
                .write_all(&out.stdout)?;
            list.wait_with_output()?
        };
        for line in String::from_utf8_lossy(&tar.stdout).lines() {
            let path = line.trim_start_matches("./").trim_end_matches('/');
            if !path.is_empty() {
                owners.insert(path.to_owned(), origin.clone());
            }
        }
    }
    if owners.is_empty() {
        bail!(
            "no .deb in {}: remove {} and build again",
            cache.display(),
            base.display()
        );
    }
    Ok(owners)
}

/// `path` inside `root` with every symlink followed, absolute targets taken relative to
/// `root` (a base's `/lib64/ld-linux-x86-64.so.2` points at its own `/lib/...`).
fn resolve(root: &Path, path: &str) -> anyhow::Result<String> {
    let mut parts: Vec<String> = Vec::new();
    let mut todo: Vec<String> = path.split('/').rev().map(str::to_owned).collect();
    let mut hops = 0;
    while let Some(part) = todo.pop() {
        match part.as_str() {
            "" | "." => continue,
            ".." => {
                parts.pop();
                continue;
            }
            _ => {}
        }
        parts.push(part);
        let here = root.join(parts.join("/"));
        if let Ok(target) = fs::read_link(&here) {
            hops += 1;
            if hops > 40 {
                bail!("too many symlinks resolving {path}");
            }
            parts.pop();
            if target.is_absolute() {
                parts.clear();
            }
            let target = target.to_str().context("non-UTF-8 symlink")?;
            todo.extend(target.split('/').rev().map(str::to_owned));
        }
    }
    Ok(parts.join("/"))
}

/// The ELF file's program interpreter and DT_NEEDED libraries, read by binutils'
/// `readelf` (it reads every architecture's ELF, so nothing runs under emulation).
fn elf_deps(file: &Path) -> anyhow::Result<(Option<String>, Vec<String>)> {
    let out = Command::new("readelf")
        .args(["--wide", "--dynamic", "--program-headers"])
        .arg(file)
        .output()
        .context("readelf (apt-get install binutils)")?;
    if !out.status.success() {
        bail!(
            "readelf {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let between = |line: &str, open: &str| {
        line.split_once(open)
            .and_then(|(_, rest)| rest.split_once(']'))
            .map(|(v, _)| v.to_owned())
    };
    let interp = text
        .lines()
        .find_map(|l| between(l, "[Requesting program interpreter: "));
    let needed = text
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| between(l, "Shared library: ["))
        .collect();
    Ok((interp, needed))
}

/// Copies `from` to `path` in the image at `out` and records it.
fn put(
    out: &Path,
    entries: &mut Vec<Entry>,
    path: &str,
    from: &Path,
    origin: String,
) -> anyhow::Result<()> {
    let to = out.join(path);
    fs::create_dir_all(to.parent().context("path with a parent")?)?;
    fs::copy(from, &to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    entries.push(Entry {
        path: format!("/{path}"),
        size: fs::metadata(&to)?.len(),
        origin,
    });
    Ok(())
}

/// Assembles the image's root filesystem in `out` (replaced): the daemon, the programs
/// above, every library they load (transitively), the written files and the Debian
/// copyright file of each package a file came from (`daemon_origin` says where the
/// daemon came from). Returns what is in it.
pub fn assemble(
    arch: Arch,
    base: &Path,
    daemon: &Path,
    daemon_origin: &str,
    out: &Path,
) -> anyhow::Result<Vec<Entry>> {
    let owners = owners(base)?;
    let _ = fs::remove_dir_all(out);
    fs::create_dir_all(out)?;
    let mut entries = Vec::new();
    let mut packages = BTreeSet::new();
    let lib_dirs = [
        format!("lib/{}", triplet(arch)),
        format!("usr/lib/{}", triplet(arch)),
        "lib".to_owned(),
        "usr/lib".to_owned(),
    ];

    put(out, &mut entries, DAEMON_PATH, daemon, daemon_origin.into())?;
    // Every ELF file to scan: (path in the image, file on disk).
    let mut todo: Vec<(String, PathBuf)> = vec![(DAEMON_PATH.into(), daemon.to_owned())];
    let mut seen = BTreeSet::new();
    // Real file in the base → where it went in the image.
    let mut placed: BTreeMap<String, String> = BTreeMap::new();
    for program in PROGRAMS {
        todo.push(((*program).into(), base.join(resolve(base, program)?)));
    }
    while let Some((path, file)) = todo.pop() {
        let (interp, needed) = elf_deps(&file)?;
        if path != DAEMON_PATH {
            let real = resolve(base, &path)?;
            let origin = owners
                .get(&real)
                .with_context(|| format!("{real} belongs to no package of the base"))?
                .clone();
            packages.insert(origin.split(' ').next().unwrap_or_default().to_owned());
            match placed.get(&real) {
                // One file under two names (the loader: at the interpreter path the
                // ELF names and at the soname libc asks for): a symlink, not a copy.
                Some(first) => {
                    let to = out.join(&path);
                    fs::create_dir_all(to.parent().context("parent")?)?;
                    std::os::unix::fs::symlink(format!("/{first}"), &to)?;
                    entries.push(Entry {
                        path: format!("/{path}"),
                        size: 0,
                        origin: format!("symlink to /{first}"),
                    });
                }
                None => {
                    put(out, &mut entries, &path, &base.join(&real), origin)?;
                    placed.insert(real, path.clone());
                }
            }
        }
        // The interpreter at the path the ELF names; libraries at the first directory
        // of the loader's default search list that has them (no ld.so.cache needed).
        let mut wanted: Vec<String> = interp
            .map(|i| i.trim_start_matches('/').to_owned())
            .into_iter()
            .collect();
        for lib in needed {
            let found = lib_dirs
                .iter()
                .map(|d| format!("{d}/{lib}"))
                .find(|p| resolve(base, p).is_ok_and(|r| base.join(r).is_file()))
                .with_context(|| {
                    format!("{lib} (needed by /{path}) is in no library directory of the base")
                })?;
            wanted.push(found);
        }
        for next in wanted {
            if seen.insert(next.clone()) {
                let real = resolve(base, &next)?;
                todo.push((next, base.join(real)));
            }
        }
    }
    for (path, text) in WRITTEN {
        let to = out.join(path);
        fs::create_dir_all(to.parent().context("parent")?)?;
        fs::write(&to, text)?;
        fs::set_permissions(&to, fs::Permissions::from_mode(0o644))?;
        entries.push(Entry {
            path: format!("/{path}"),
            size: text.len() as u64,
            origin: "written by cargo xtask image".into(),
        });
    }
    for package in &packages {
        let copyright = format!("usr/share/doc/{package}/copyright");
        let from = base.join(resolve(base, &copyright)?);
        let to = out.join(&copyright);
        fs::create_dir_all(to.parent().context("parent")?)?;
        fs::copy(&from, &to).with_context(|| format!("{}", from.display()))?;
        entries.push(Entry {
            path: format!("/{copyright}"),
            size: fs::metadata(&to)?.len(),
            origin: owners
                .get(&copyright)
                .cloned()
                .unwrap_or_else(|| package.clone()),
        });
    }
    // An empty /tmp for anyone who mounts a scratch volume there; the runtime makes
    // /proc, /sys, /dev and the chart's mount points itself.
    fs::create_dir_all(out.join("tmp"))?;
    fs::set_permissions(out.join("tmp"), fs::Permissions::from_mode(0o1777))?;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(entries)
}
