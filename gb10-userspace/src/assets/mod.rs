//! `gb10-provision assets`: places a network boot chain (shim, GRUB, iPXE, kernel,
//! initrd) into `data_path` from Debian/Ubuntu packages already downloaded and from
//! installer ISOs, for amd64 and arm64, and records it in a manifest with sha256
//! checksums. Re-running it rewrites nothing that is already current.
pub mod check;
mod deb;
mod iso;
mod place;
mod version;

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, bail};
use serde::Serialize;

pub use self::place::{MANIFEST, Manifest, ManifestEntry, Outcome, load_manifest};
use self::{
    deb::{DebInfo, Want},
    iso::Iso,
    place::Stage,
};

/// `assets`: where the files come from and where they go.
#[derive(clap::Args, Debug)]
pub struct AssetsArgs {
    /// Directories of `.deb` files (apt's cache, `/var/cache/apt/archives`, or what
    /// `apt-get download` fetched), single `.deb` files, and installer ISOs (the Ubuntu
    /// live-server / DGX OS layout: `casper/vmlinuz`, `casper/initrd`, `EFI/boot/*`).
    /// Packages used: shim-signed, grub-efi-{amd64,arm64}-signed, ipxe, linux-image-*,
    /// debian-installer-*-netboot-{amd64,arm64}; others are ignored.
    #[arg(required = true, value_name = "SOURCE")]
    pub sources: Vec<PathBuf>,
    /// Where to place the files (default: `data_path` of the config file, else
    /// /data/provision).
    #[arg(long, env = "GB10_DATA_PATH")]
    pub data_path: Option<PathBuf>,
    /// The daemon's config file, read for `data_path` only.
    #[arg(long, env = "GB10_CONFIG")]
    pub config: Option<PathBuf>,
    /// Architectures that must get a complete chain (shim, GRUB, kernel, initrd);
    /// default: every architecture the sources provide one for.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub arch: Vec<Arch>,
    /// A kernel from a file instead of the sources, as ARCH=FILE (repeatable).
    #[arg(long, value_name = "ARCH=FILE")]
    pub kernel: Vec<ArchFile>,
    /// An initrd from a file instead of the sources, as ARCH=FILE (repeatable); needed
    /// with a linux-image package, which carries no initrd.
    #[arg(long, value_name = "ARCH=FILE")]
    pub initrd: Vec<ArchFile>,
    /// Directory under tftp/ and www/ for the kernel and initrd; `{arch}` becomes amd64
    /// or arm64.
    #[arg(long, default_value = "{arch}")]
    pub kernel_dir: String,
    /// Also place each ISO itself beside its kernel under www/ (casper's `url=` fetches it).
    #[arg(long)]
    pub serve_iso: bool,
    /// Print what was done as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A CPU architecture, in Debian's spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Amd64,
    Arm64,
}

impl Arch {
    pub const ALL: [Arch; 2] = [Arch::Amd64, Arch::Arm64];

    pub fn debian(self) -> &'static str {
        match self {
            Self::Amd64 => "amd64",
            Self::Arm64 => "arm64",
        }
    }

    /// The suffix of UEFI file names (`shimx64.efi`, `bootaa64.efi`).
    pub fn efi(self) -> &'static str {
        match self {
            Self::Amd64 => "x64",
            Self::Arm64 => "aa64",
        }
    }

    fn grub_platform(self) -> &'static str {
        match self {
            Self::Amd64 => "x86_64-efi",
            Self::Arm64 => "arm64-efi",
        }
    }

    fn from_debian(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.debian() == s)
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.debian())
    }
}

/// `ARCH=FILE`.
#[derive(Clone, Debug)]
pub struct ArchFile {
    pub arch: Arch,
    pub file: PathBuf,
}

impl std::str::FromStr for ArchFile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (a, f) = s
            .split_once('=')
            .ok_or_else(|| format!("`{s}`: write ARCH=FILE, like amd64=/srv/initrd.img"))?;
        let arch = Arch::from_debian(a).ok_or_else(|| format!("`{a}`: amd64 or arm64"))?;
        Ok(Self {
            arch,
            file: f.into(),
        })
    }
}

/// What a file is for in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Shim,
    Grub,
    Ipxe,
    Snponly,
    Undionly,
    Kernel,
    Initrd,
    Image,
}

/// The roles every chosen architecture must have.
const REQUIRED: [Role; 4] = [Role::Shim, Role::Grub, Role::Kernel, Role::Initrd];

impl Role {
    fn label(self) -> &'static str {
        match self {
            Self::Shim => "shim",
            Self::Grub => "grub",
            Self::Ipxe => "ipxe",
            Self::Snponly => "snponly",
            Self::Undionly => "undionly",
            Self::Kernel => "kernel",
            Self::Initrd => "initrd",
            Self::Image => "image",
        }
    }

    /// Where the file goes, relative to `data_path`. Boot loaders go to both roots: TFTP
    /// for PXE, HTTP for UEFI HTTP boot (shim then fetches GRUB beside itself over the
    /// same protocol). Kernels too: GRUB fetches them over TFTP or HTTP (`grub_fetch`),
    /// iPXE over HTTP.
    fn dests(self, arch: Arch, kernel_dir: &str, image: Option<&str>) -> Vec<String> {
        let both = |name: String| vec![format!("tftp/{name}"), format!("www/{name}")];
        let kdir = kernel_dir.replace("{arch}", arch.debian());
        match self {
            Self::Shim => both(format!("shim{}.efi", arch.efi())),
            Self::Grub => both(format!("grub{}.efi", arch.efi())),
            Self::Ipxe => both("ipxe.efi".into()),
            Self::Snponly => both("snponly.efi".into()),
            // BIOS PXE only ever uses TFTP.
            Self::Undionly => vec!["tftp/undionly.kpxe".into()],
            Self::Kernel => both(format!("{kdir}/vmlinuz")),
            Self::Initrd => both(format!("{kdir}/initrd.img")),
            Self::Image => vec![format!("www/{kdir}/{}", image.unwrap_or("installer.iso"))],
        }
    }

    /// Where an operator gets this role from, for a message about a missing one.
    fn hint(self, arch: Arch) -> String {
        let (a, e) = (arch.debian(), arch.efi());
        match self {
            Self::Shim => format!("package shim-signed ({a}), or EFI/boot/boot{e}.efi in an ISO"),
            Self::Grub => format!("package grub-efi-{a}-signed, or EFI/boot/grub{e}.efi in an ISO"),
            Self::Kernel => format!(
                "a linux-image-* package ({a}), debian-installer-*-netboot-{a}, casper/vmlinuz \
                 in an ISO, or --kernel {a}=FILE"
            ),
            Self::Initrd => format!(
                "debian-installer-*-netboot-{a} (initrd.gz), casper/initrd in an ISO, or \
                 --initrd {a}=FILE (a linux-image package carries no initrd)"
            ),
            Self::Ipxe | Self::Snponly | Self::Undionly => "package ipxe".into(),
            Self::Image => "an ISO".into(),
        }
    }
}

/// Where one file comes from.
#[derive(Clone, Debug)]
enum From {
    /// A package member, by patterns in order of preference.
    Deb {
        deb: DebInfo,
        patterns: Vec<String>,
    },
    Iso {
        path: PathBuf,
        member: String,
    },
    /// The whole ISO file (for `--serve-iso`).
    IsoFile {
        path: PathBuf,
    },
    File {
        path: PathBuf,
    },
}

/// A candidate for one role of one architecture; lower `rank` wins, then the newer
/// package version.
#[derive(Clone, Debug)]
struct Candidate {
    arch: Arch,
    role: Role,
    rank: u8,
    from: From,
}

/// Ranks: explicit files, then an ISO's whole chain (its shim only boots its own GRUB and
/// kernel under Secure Boot), then debian-installer's kernel and initrd pair, then packages.
const RANK_FILE: u8 = 0;
const RANK_ISO: u8 = 1;
const RANK_DI: u8 = 2;
const RANK_DEB: u8 = 3;

/// Whether a package name is a kernel image (not the metapackage, not debug symbols,
/// not the unsigned twin of a signed image).
fn is_kernel_package(name: &str) -> bool {
    name.strip_prefix("linux-image-")
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        && !["-dbg", "-dbgsym", "-unsigned"]
            .iter()
            .any(|s| name.ends_with(s))
}

/// Whether a `.deb` file name could be one of the packages we use (read before opening it,
/// so a directory like apt's cache is not decompressed whole).
fn maybe_used(file_name: &str) -> bool {
    let name = file_name.split('_').next().unwrap_or_default();
    matches!(
        name,
        "shim-signed" | "grub-efi-amd64-signed" | "grub-efi-arm64-signed" | "ipxe"
    ) || name.starts_with("linux-image-")
        || (name.starts_with("debian-installer-") && name.contains("-netboot-"))
}

/// The roles a package provides, with the members to take.
fn provides(info: &DebInfo) -> Vec<Candidate> {
    let p = info.package.as_str();
    let deb = |arch: Arch, role: Role, rank: u8, patterns: Vec<String>| Candidate {
        arch,
        role,
        rank,
        from: From::Deb {
            deb: info.clone(),
            patterns,
        },
    };
    if p == "ipxe" {
        return [
            (Role::Ipxe, "ipxe.efi"),
            (Role::Snponly, "snponly.efi"),
            (Role::Undionly, "undionly.kpxe"),
        ]
        .into_iter()
        .map(|(role, f)| {
            deb(
                Arch::Amd64,
                role,
                RANK_DEB,
                vec![format!("usr/lib/ipxe/{f}")],
            )
        })
        .collect();
    }
    if let Some(a) = p
        .strip_prefix("debian-installer-")
        .and_then(|r| r.rsplit_once("-netboot-"))
        .and_then(|(_, a)| Arch::from_debian(a))
    {
        let base = format!(
            "usr/lib/debian-installer/images/*/{a}/text/debian-installer/{a}",
            a = a.debian()
        );
        return vec![
            deb(a, Role::Kernel, RANK_DI, vec![format!("{base}/linux")]),
            deb(a, Role::Initrd, RANK_DI, vec![format!("{base}/initrd.gz")]),
        ];
    }
    let Some(a) = Arch::from_debian(&info.arch) else {
        return Vec::new();
    };
    let e = a.efi();
    if p == "shim-signed" {
        // Ubuntu ships .signed.latest beside (or instead of) .signed.
        vec![deb(
            a,
            Role::Shim,
            RANK_DEB,
            vec![
                format!("usr/lib/shim/shim{e}.efi.signed"),
                format!("usr/lib/shim/shim{e}.efi.signed.latest"),
            ],
        )]
    } else if p == format!("grub-efi-{a}-signed") {
        vec![deb(
            a,
            Role::Grub,
            RANK_DEB,
            vec![format!(
                "usr/lib/grub/{}-signed/grubnet{e}.efi.signed",
                a.grub_platform()
            )],
        )]
    } else if is_kernel_package(p) {
        vec![deb(
            a,
            Role::Kernel,
            RANK_DEB,
            vec!["boot/vmlinuz-*".into()],
        )]
    } else {
        Vec::new()
    }
}

/// The architecture an ISO boots, from its removable-media loader name.
fn iso_arch(iso: &Iso, path: &Path) -> anyhow::Result<Arch> {
    let found: Vec<Arch> = Arch::ALL
        .into_iter()
        .filter(|a| iso.has_file(&format!("EFI/boot/boot{}.efi", a.efi())))
        .collect();
    match found.as_slice() {
        [a] => Ok(*a),
        [] => bail!(
            "{}: neither EFI/boot/bootx64.efi nor EFI/boot/bootaa64.efi: not the Ubuntu \
             live-server / DGX OS layout (casper/vmlinuz, casper/initrd, EFI/boot/*)",
            path.display()
        ),
        _ => bail!(
            "{}: holds both EFI/boot/bootx64.efi and bootaa64.efi; pass --arch to choose",
            path.display()
        ),
    }
}

/// Every candidate the sources offer, and a note per package version passed over.
struct Found {
    candidates: Vec<Candidate>,
    notes: Vec<String>,
    ignored: usize,
}

fn gather(args: &AssetsArgs) -> anyhow::Result<Found> {
    let mut found = Found {
        candidates: Vec::new(),
        notes: Vec::new(),
        ignored: 0,
    };
    let mut debs: Vec<PathBuf> = Vec::new();
    for source in &args.sources {
        let meta =
            std::fs::metadata(source).with_context(|| format!("source {}", source.display()))?;
        if meta.is_dir() {
            let mut listed: Vec<PathBuf> = std::fs::read_dir(source)
                .with_context(|| format!("listing {}", source.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "deb"))
                .collect();
            listed.sort();
            if listed.is_empty() {
                bail!("{}: no .deb files in this directory", source.display());
            }
            debs.extend(listed);
        } else if source.extension().is_some_and(|x| x == "deb") {
            debs.push(source.clone());
        } else {
            let path = source
                .canonicalize()
                .with_context(|| format!("source {}", source.display()))?;
            let iso = Iso::open(&path).with_context(|| {
                format!("{}: not a .deb, a directory or an ISO", path.display())
            })?;
            // An image holding both loaders boots the one --arch names.
            let arch = match iso_arch(&iso, &path) {
                Ok(a) => a,
                Err(err) => match args.arch.as_slice() {
                    [only] if iso.has_file(&format!("EFI/boot/boot{}.efi", only.efi())) => *only,
                    _ => return Err(err),
                },
            };
            let e = arch.efi();
            for (role, member) in [
                (Role::Shim, format!("EFI/boot/boot{e}.efi")),
                (Role::Grub, format!("EFI/boot/grub{e}.efi")),
                (Role::Kernel, "casper/vmlinuz".into()),
                (Role::Initrd, "casper/initrd".into()),
            ] {
                // Missing members are reported by name when extracted.
                found.candidates.push(Candidate {
                    arch,
                    role,
                    rank: RANK_ISO,
                    from: From::Iso {
                        path: path.clone(),
                        member,
                    },
                });
            }
            if args.serve_iso {
                found.candidates.push(Candidate {
                    arch,
                    role: Role::Image,
                    rank: RANK_ISO,
                    from: From::IsoFile { path: path.clone() },
                });
            }
        }
    }
    // The newest version of each package (apt's cache keeps old ones).
    let mut newest: BTreeMap<(String, String), DebInfo> = BTreeMap::new();
    for path in debs {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !maybe_used(&name) {
            found.ignored += 1;
            continue;
        }
        let path = path.canonicalize()?;
        let info = deb::info(&path)?;
        let key = (info.package.clone(), info.arch.clone());
        match newest.get(&key) {
            Some(have) if version::compare(&have.version, &info.version).is_ge() => {
                found.notes.push(format!(
                    "{} {} ({}) passed over for {}",
                    info.package,
                    info.version,
                    info.path.display(),
                    have.version
                ));
            }
            Some(have) => {
                found.notes.push(format!(
                    "{} {} ({}) passed over for {}",
                    have.package,
                    have.version,
                    have.path.display(),
                    info.version
                ));
                newest.insert(key, info);
            }
            None => {
                newest.insert(key, info);
            }
        }
    }
    for info in newest.values() {
        let c = provides(info);
        if c.is_empty() {
            found.ignored += 1;
        }
        found.candidates.extend(c);
    }
    for (role, list) in [(Role::Kernel, &args.kernel), (Role::Initrd, &args.initrd)] {
        for af in list {
            let path = af
                .file
                .canonicalize()
                .with_context(|| format!("--{} {}={}", role.label(), af.arch, af.file.display()))?;
            found.candidates.push(Candidate {
                arch: af.arch,
                role,
                rank: RANK_FILE,
                from: From::File { path },
            });
        }
    }
    Ok(found)
}

fn deb_version(c: &Candidate) -> Option<&DebInfo> {
    match &c.from {
        From::Deb { deb, .. } => Some(deb),
        _ => None,
    }
}

/// One candidate per (arch, role): the lowest rank, then the newest package. Two
/// different packages or images tying for a role is an error naming both.
fn choose(
    candidates: Vec<Candidate>,
    notes: &mut Vec<String>,
) -> anyhow::Result<BTreeMap<(Arch, Role), Candidate>> {
    let mut chosen: BTreeMap<(Arch, Role), Candidate> = BTreeMap::new();
    let mut ties = Vec::new();
    for c in candidates {
        let key = (c.arch, c.role);
        let Some(have) = chosen.get(&key) else {
            chosen.insert(key, c);
            continue;
        };
        let order = c.rank.cmp(&have.rank).reverse().then_with(|| {
            match (deb_version(&c), deb_version(have)) {
                (Some(a), Some(b)) => version::compare(&a.version, &b.version),
                _ => std::cmp::Ordering::Equal,
            }
        });
        let (winner, loser) = match order {
            std::cmp::Ordering::Greater => (&c, have),
            std::cmp::Ordering::Less => (have, &c),
            std::cmp::Ordering::Equal => {
                ties.push(format!(
                    "{} {}: both {} and {}; keep one, or pass --{} {}=FILE",
                    c.arch,
                    c.role.label(),
                    describe(&have.from),
                    describe(&c.from),
                    c.role.label(),
                    c.arch
                ));
                continue;
            }
        };
        notes.push(format!(
            "{} {}: {} passed over for {}",
            c.arch,
            c.role.label(),
            describe(&loser.from),
            describe(&winner.from)
        ));
        if order.is_gt() {
            chosen.insert(key, c);
        }
    }
    if !ties.is_empty() {
        bail!("more than one source for:\n  {}", ties.join("\n  "));
    }
    Ok(chosen)
}

fn describe(from: &From) -> String {
    match from {
        From::Deb { deb, .. } => format!("{} {}", deb.package, deb.version),
        From::Iso { path, .. } | From::IsoFile { path } => path.display().to_string(),
        From::File { path } => path.display().to_string(),
    }
}

/// The manifest's `origin` of a file.
fn origin(from: &From, member: Option<&str>) -> serde_json::Value {
    match from {
        From::Deb { deb, .. } => serde_json::json!({
            "package": deb.package, "version": deb.version, "architecture": deb.arch,
            "file": deb.path, "member": member,
        }),
        From::Iso { path, .. } => serde_json::json!({ "iso": path, "member": member }),
        From::IsoFile { path } | From::File { path } => serde_json::json!({ "file": path }),
    }
}

/// One destination of a placed file.
#[derive(Debug, Serialize)]
struct AtPath {
    path: String,
    outcome: Outcome,
}

/// One placed file, for the report.
#[derive(Debug, Serialize)]
struct Placed {
    arch: Arch,
    role: Role,
    paths: Vec<AtPath>,
    /// `unchanged` only when every destination is.
    outcome: Outcome,
    sha256: String,
    size: u64,
    origin: serde_json::Value,
}

/// The data path: the flag or env, else the config file's, else the default.
fn data_path(args: &AssetsArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.data_path {
        return Ok(p.clone());
    }
    if let Some(config) = &args.config {
        let raw = crate::config::RawConfig::from_file(config)?;
        if let Some(p) = raw.data_path {
            return Ok(p);
        }
    }
    Ok(PathBuf::from(crate::config::DEFAULT_DATA_PATH))
}

/// Runs `assets`.
pub fn run(args: AssetsArgs) -> anyhow::Result<()> {
    let data_path = data_path(&args)?;
    let kdir = &args.kernel_dir;
    if kdir.starts_with('/') || kdir.split('/').any(|c| c == ".." || c.is_empty()) {
        bail!(
            "--kernel-dir `{kdir}`: a relative path inside tftp/ and www/, like `{{arch}}` or `ubuntu/{{arch}}`"
        );
    }
    let Found {
        candidates,
        mut notes,
        ignored,
    } = gather(&args)?;
    let chosen = choose(candidates, &mut notes)?;
    // The architectures that must be complete.
    let arches: Vec<Arch> = if args.arch.is_empty() {
        Arch::ALL
            .into_iter()
            .filter(|a| {
                REQUIRED
                    .iter()
                    .any(|r| chosen.get(&(*a, *r)).is_some_and(|c| c.rank != RANK_FILE))
            })
            .collect()
    } else {
        args.arch.clone()
    };
    if arches.is_empty() {
        bail!(
            "nothing to place: the sources hold none of shim-signed, grub-efi-*-signed, \
             linux-image-*, debian-installer-*-netboot-*, nor an installer ISO"
        );
    }
    let mut missing: Vec<String> = Vec::new();
    for a in &arches {
        for r in REQUIRED {
            if !chosen.contains_key(&(*a, r)) {
                missing.push(format!(
                    "{a} {}: none found; expected {}",
                    r.label(),
                    r.hint(*a)
                ));
            }
        }
    }
    let chosen: Vec<Candidate> = chosen
        .into_values()
        .filter(|c| arches.contains(&c.arch))
        .collect();
    std::fs::create_dir_all(&data_path)
        .with_context(|| format!("creating {}", data_path.display()))?;
    let mut stage =
        Stage::new(&data_path).with_context(|| format!("staging in {}", data_path.display()))?;
    // Extract everything first: nothing in data_path changes unless every file is there.
    let mut staged: Vec<(Candidate, place::Staged, Option<String>)> = Vec::new();
    let mut by_deb: BTreeMap<PathBuf, Vec<(Candidate, Vec<String>)>> = BTreeMap::new();
    for c in chosen {
        match &c.from {
            From::Deb { deb, patterns } => by_deb
                .entry(deb.path.clone())
                .or_default()
                .push((c.clone(), patterns.clone())),
            From::Iso { path, member } => {
                let iso = Iso::open(path)?;
                match iso.find(member) {
                    Ok(entry) => {
                        let s = stage_iso(&mut stage, &iso, &entry)?;
                        let m = Some(member.clone());
                        staged.push((c.clone(), s, m));
                    }
                    Err(err) => missing.push(err.to_string()),
                }
            }
            From::IsoFile { path } | From::File { path } => {
                let mut f = std::fs::File::open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let s = stage.write(&mut f)?;
                staged.push((c.clone(), s, None));
            }
        }
    }
    for (path, list) in by_deb {
        let wants: Vec<Want> = list
            .iter()
            .map(|(_, p)| Want {
                patterns: p.clone(),
            })
            .collect();
        let found = deb::extract(&path, &wants, |_, _, r| stage.write(r))?;
        for ((c, patterns), f) in list.into_iter().zip(found) {
            match f {
                Some(f) => staged.push((c, f.value, Some(f.member))),
                None => {
                    let From::Deb { deb, .. } = &c.from else {
                        continue;
                    };
                    missing.push(format!(
                        "{} {} ({}) has no {}",
                        deb.package,
                        deb.version,
                        deb.path.display(),
                        patterns.join(" nor ")
                    ));
                }
            }
        }
    }
    if !missing.is_empty() {
        bail!(
            "boot assets incomplete, nothing changed in {}:\n  {}",
            data_path.display(),
            missing.join("\n  ")
        );
    }
    let mut placed = Vec::new();
    let mut entries = Vec::new();
    for (c, s, member) in staged {
        let image = match &c.from {
            From::IsoFile { path } => path.file_name().map(|n| n.to_string_lossy().into_owned()),
            _ => None,
        };
        let mut paths = Vec::new();
        let mut outcome = Outcome::Unchanged;
        for p in c.role.dests(c.arch, kdir, image.as_deref()) {
            let o = place::put(&data_path, &s, &p)
                .with_context(|| format!("placing {}", data_path.join(&p).display()))?;
            if o != Outcome::Unchanged {
                outcome = o;
            }
            paths.push(AtPath {
                path: p.clone(),
                outcome: o,
            });
            entries.push(ManifestEntry {
                path: p,
                sha256: s.sha256.clone(),
                size: s.size,
                arch: c.arch.debian().into(),
                role: c.role.label().into(),
                origin: origin(&c.from, member.as_deref()),
            });
        }
        placed.push(Placed {
            arch: c.arch,
            role: c.role,
            paths,
            outcome,
            sha256: s.sha256.clone(),
            size: s.size,
            origin: origin(&c.from, member.as_deref()),
        });
    }
    drop(stage);
    let written = place::write_manifest(&data_path, entries)
        .with_context(|| format!("writing {}", data_path.join(MANIFEST).display()))?;
    placed.sort_by_key(|p| (p.arch, p.role));
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "data_path": data_path,
                "manifest": data_path.join(MANIFEST),
                "manifest_written": written,
                "files": placed,
                "notes": notes,
            }))?
        );
        return Ok(());
    }
    report(&data_path, &placed, &notes, ignored, written, kdir);
    Ok(())
}

/// Stages an ISO member: [`Iso::copy`] writes, [`Stage::write`] reads, so the copy runs
/// on a thread into a pipe rather than through memory (an initrd is tens of MiB).
fn stage_iso(stage: &mut Stage, iso: &Iso, entry: &iso::Entry) -> anyhow::Result<place::Staged> {
    let (mut reader, mut writer) = std::io::pipe()?;
    std::thread::scope(|s| {
        let copier = s.spawn(move || iso.copy(entry, &mut writer));
        let staged = stage.write(&mut reader);
        // A failed write must not leave the copier blocked on a full pipe.
        drop(reader);
        let copied = copier
            .join()
            .map_err(|_| anyhow::anyhow!("the ISO copy thread panicked"))?;
        copied?;
        Ok(staged?)
    })
}

fn report(
    data_path: &Path,
    placed: &[Placed],
    notes: &[String],
    ignored: usize,
    written: bool,
    kdir: &str,
) {
    println!("boot assets in {}:", data_path.display());
    let joined = |p: &Placed| {
        p.paths
            .iter()
            .map(|a| a.path.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let width = placed.iter().map(|p| joined(p).len()).max().unwrap_or(0);
    for p in placed {
        let from = match &p.origin {
            o if o.get("package").is_some() => format!(
                "{} {}: {}",
                o["package"].as_str().unwrap_or(""),
                o["version"].as_str().unwrap_or(""),
                o["member"].as_str().unwrap_or("")
            ),
            o if o.get("iso").is_some() => format!(
                "{}: {}",
                o["iso"].as_str().unwrap_or(""),
                o["member"].as_str().unwrap_or("")
            ),
            o => o["file"].as_str().unwrap_or("").to_owned(),
        };
        println!(
            "  {:<9} {} {:<8} {:<width$}  sha256 {}…  from {from}",
            p.outcome.label(),
            p.arch,
            p.role.label(),
            joined(p),
            &p.sha256[..16],
        );
    }
    for n in notes {
        println!("  note: {n}");
    }
    if ignored > 0 {
        println!("  ({ignored} other packages ignored)");
    }
    println!(
        "manifest: {} ({})",
        data_path.join(MANIFEST).display(),
        if written { "written" } else { "unchanged" }
    );
    let has = |a: Arch, r: Role| placed.iter().any(|p| p.arch == a && p.role == r);
    println!("use them:");
    for a in Arch::ALL {
        if has(a, Role::Kernel) {
            let k = kdir.replace("{arch}", a.debian());
            println!(
                "  inventory.toml profile: kernel = \"{k}/vmlinuz\", initrd = \"{k}/initrd.img\""
            );
        }
    }
    if has(Arch::Amd64, Role::Shim) {
        println!(
            "  [boot] uefi_x86 = \"shimx64.efi\" (signed chain, Secure Boot){}",
            if has(Arch::Amd64, Role::Ipxe) {
                "; or the default ipxe.efi"
            } else {
                ""
            }
        );
    }
    if has(Arch::Arm64, Role::Shim) {
        println!(
            "  [boot] uefi_arm64 = \"shimaa64.efi\" and http_arm64 = \"shimaa64.efi\" (the defaults)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_names() {
        assert!(is_kernel_package("linux-image-6.1.0-25-cloud-amd64"));
        assert!(is_kernel_package("linux-image-6.8.0-45-generic"));
        assert!(!is_kernel_package("linux-image-cloud-amd64"));
        assert!(!is_kernel_package("linux-image-6.1.0-25-cloud-amd64-dbg"));
        assert!(!is_kernel_package(
            "linux-image-6.1.0-25-cloud-amd64-unsigned"
        ));
        assert!(!is_kernel_package("linux-image-unsigned-6.8.0-45-generic"));
        assert!(maybe_used("shim-signed_1.51_amd64.deb"));
        assert!(maybe_used(
            "debian-installer-12-netboot-arm64_20230607_all.deb"
        ));
        assert!(!maybe_used("shim-helpers-amd64-signed_1_amd64.deb"));
        assert!(!maybe_used("grub-efi-amd64-bin_2.06_amd64.deb"));
    }

    #[test]
    fn destinations() {
        assert_eq!(
            Role::Shim.dests(Arch::Arm64, "{arch}", None),
            ["tftp/shimaa64.efi", "www/shimaa64.efi"]
        );
        assert_eq!(
            Role::Kernel.dests(Arch::Amd64, "ubuntu/{arch}", None),
            ["tftp/ubuntu/amd64/vmlinuz", "www/ubuntu/amd64/vmlinuz"]
        );
        assert_eq!(
            Role::Undionly.dests(Arch::Amd64, "{arch}", None),
            ["tftp/undionly.kpxe"]
        );
    }
}
