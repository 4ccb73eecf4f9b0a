//! Debian packages read in-process: the `ar` archive, `control` from `control.tar.*`,
//! and chosen files from `data.tar.*` (xz, zstd, gzip or none), symlinks followed inside
//! the package.
use std::{
    fs::File,
    io::{self, BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
};

/// Why a package could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a Debian package: {why}")]
    Format { path: PathBuf, why: String },
    #[error("{path}: {member} is compressed with {kind}, which is not supported (xz, zstd, gzip)")]
    Compression {
        path: PathBuf,
        member: String,
        kind: String,
    },
}

/// What `control` says about a package.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DebInfo {
    pub path: PathBuf,
    pub package: String,
    pub version: String,
    /// Debian architecture (`amd64`, `arm64`, `all`).
    pub arch: String,
}

/// Longest `control` file read, in bytes (real ones are a few KiB).
const CONTROL_MAX: u64 = 1 << 20;
/// Symlinks followed from one wanted path.
const SYMLINK_DEPTH: usize = 4;

/// One `ar` member: its name and where its bytes are.
struct Member {
    name: String,
    offset: u64,
    size: u64,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> DebError + '_ {
    move |source| DebError::Io {
        path: path.to_owned(),
        source,
    }
}

fn format_err(path: &Path, why: impl Into<String>) -> DebError {
    DebError::Format {
        path: path.to_owned(),
        why: why.into(),
    }
}

/// The members of the `ar` archive at `path`.
fn members(path: &Path, file: &mut File) -> Result<Vec<Member>, DebError> {
    let len = file.metadata().map_err(io_err(path))?.len();
    let mut magic = [0u8; 8];
    file.read_exact(&mut magic)
        .map_err(|_| format_err(path, "shorter than an ar header"))?;
    if &magic != b"!<arch>\n" {
        return Err(format_err(path, "no ar magic"));
    }
    let mut out = Vec::new();
    let mut offset = 8u64;
    // A .deb has three members; a bound keeps a hostile file from looping long.
    while offset + 60 <= len && out.len() < 64 {
        let mut header = [0u8; 60];
        file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
        file.read_exact(&mut header).map_err(io_err(path))?;
        if &header[58..60] != b"`\n" {
            return Err(format_err(path, format!("bad ar header at byte {offset}")));
        }
        let text =
            |r: std::ops::Range<usize>| String::from_utf8_lossy(&header[r]).trim().to_owned();
        let name = text(0..16).trim_end_matches('/').to_owned();
        let size: u64 = text(48..58)
            .parse()
            .map_err(|_| format_err(path, format!("bad member size at byte {offset}")))?;
        let start = offset + 60;
        if start + size > len {
            return Err(format_err(path, format!("member {name} runs past the end")));
        }
        out.push(Member {
            name,
            offset: start,
            size,
        });
        offset = start + size + (size & 1);
    }
    Ok(out)
}

/// A reader over the decompressed tar member whose name starts with `prefix`.
fn tar_member(path: &Path, prefix: &str) -> Result<(String, Box<dyn Read>), DebError> {
    let mut file = File::open(path).map_err(io_err(path))?;
    let list = members(path, &mut file)?;
    if !list.iter().any(|m| m.name == "debian-binary") {
        return Err(format_err(path, "no debian-binary member"));
    }
    let m = list
        .into_iter()
        .find(|m| m.name.starts_with(prefix))
        .ok_or_else(|| format_err(path, format!("no {prefix}* member")))?;
    file.seek(SeekFrom::Start(m.offset)).map_err(io_err(path))?;
    let raw = BufReader::with_capacity(1 << 16, file.take(m.size));
    let kind = m.name.strip_prefix(prefix).unwrap_or_default();
    let reader: Box<dyn Read> = match kind {
        "" => Box::new(raw),
        ".xz" => Box::new(lzma_rust2::XzReader::new(raw, true)),
        ".gz" => Box::new(flate2::read::GzDecoder::new(raw)),
        ".zst" => Box::new(
            ruzstd::decoding::StreamingDecoder::new(raw)
                .map_err(|e| format_err(path, format!("{}: {e}", m.name)))?,
        ),
        other => {
            return Err(DebError::Compression {
                path: path.to_owned(),
                member: m.name.clone(),
                kind: other.trim_start_matches('.').to_owned(),
            });
        }
    };
    Ok((m.name, reader))
}

/// Reads `control` of the package at `path`.
pub fn info(path: &Path) -> Result<DebInfo, DebError> {
    let (member, reader) = tar_member(path, "control.tar")?;
    let mut archive = tar::Archive::new(reader);
    let entries = archive
        .entries()
        .map_err(|e| format_err(path, format!("{member}: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format_err(path, format!("{member}: {e}")))?;
        let name = entry
            .path()
            .map(|p| normalize(&p.to_string_lossy()))
            .unwrap_or_default();
        if name != "control" {
            continue;
        }
        let mut text = String::new();
        (&mut entry)
            .take(CONTROL_MAX)
            .read_to_string(&mut text)
            .map_err(|e| format_err(path, format!("control: {e}")))?;
        let field = |key: &str| {
            text.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.eq_ignore_ascii_case(key)).then(|| v.trim().to_owned())
            })
        };
        let missing = |k| format_err(path, format!("control has no {k} field"));
        return Ok(DebInfo {
            path: path.to_owned(),
            package: field("Package").ok_or_else(|| missing("Package"))?,
            version: field("Version").ok_or_else(|| missing("Version"))?,
            arch: field("Architecture").ok_or_else(|| missing("Architecture"))?,
        });
    }
    Err(format_err(path, format!("{member} holds no control file")))
}

/// A path inside a package as tar stores it (`./usr/lib/x`), as `usr/lib/x`.
fn normalize(p: &str) -> String {
    p.trim_start_matches("./")
        .trim_start_matches('/')
        .to_owned()
}

/// Whether `path` matches `pattern`, where `*` stands for any run of characters within
/// one path component.
pub fn glob(pattern: &str, path: &str) -> bool {
    let (pp, sp): (Vec<&str>, Vec<&str>) =
        (pattern.split('/').collect(), path.split('/').collect());
    pp.len() == sp.len()
        && pp
            .iter()
            .zip(&sp)
            .all(|(p, s)| glob_component(p.as_bytes(), s.as_bytes()))
}

fn glob_component(p: &[u8], s: &[u8]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((b'*', rest)) => (0..=s.len()).any(|k| glob_component(rest, &s[k..])),
        Some((c, rest)) => s.first() == Some(c) && glob_component(rest, &s[1..]),
    }
}

/// Resolves a symlink `target` found at `link` inside the package to a package path.
fn resolve(link: &str, target: &str) -> String {
    let mut parts: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        link.split('/').collect::<Vec<_>>()
    };
    if !target.starts_with('/') {
        parts.pop();
    }
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// A file wanted from a package: patterns in order of preference.
pub struct Want {
    pub patterns: Vec<String>,
}

/// What was found for a [`Want`]: the member path and what `sink` returned for it.
pub struct Found<T> {
    pub member: String,
    pub value: T,
}

/// How a want stands after one pass: the best pattern index matched, and by what.
#[derive(Clone)]
enum Hit {
    File { rank: usize },
    Link { rank: usize },
}

impl Hit {
    fn rank(&self) -> usize {
        match self {
            Self::File { rank, .. } | Self::Link { rank, .. } => *rank,
        }
    }
}

/// Extracts the wanted files of the package at `path`: each regular file whose path
/// matches a want's pattern is passed to `sink` (with its contents as a reader); the best
/// match per want (earliest pattern) is returned. A matching symlink (or hard link) is
/// followed inside the package, in another pass. `None` for a want nothing matched.
pub fn extract<T>(
    path: &Path,
    wants: &[Want],
    mut sink: impl FnMut(usize, &str, &mut dyn Read) -> io::Result<T>,
) -> Result<Vec<Option<Found<T>>>, DebError> {
    let mut found: Vec<Option<Found<T>>> = wants.iter().map(|_| None).collect();
    let mut hits: Vec<Option<Hit>> = vec![None; wants.len()];
    // Pass 1: the patterns. Later passes: exact link targets, for wants whose best hit
    // was a link.
    let mut targets: Vec<Option<String>> = vec![None; wants.len()];
    for depth in 0..=SYMLINK_DEPTH {
        let first = depth == 0;
        if !first && targets.iter().all(Option::is_none) {
            break;
        }
        let (member, reader) = tar_member(path, "data.tar")?;
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(|e| format_err(path, format!("{member}: {e}")))?;
        let mut next: Vec<Option<String>> = vec![None; wants.len()];
        for entry in entries {
            let mut entry = entry.map_err(|e| format_err(path, format!("{member}: {e}")))?;
            let name = match entry.path() {
                Ok(p) => normalize(&p.to_string_lossy()),
                Err(_) => continue,
            };
            let kind = entry.header().entry_type();
            for (i, want) in wants.iter().enumerate() {
                let rank = if first {
                    match want.patterns.iter().position(|p| glob(p, &name)) {
                        Some(r) => r,
                        None => continue,
                    }
                } else if targets[i].as_deref() == Some(name.as_str()) {
                    // A link target stands in for the link's rank.
                    hits[i].as_ref().map_or(0, Hit::rank)
                } else {
                    continue;
                };
                if first && hits[i].as_ref().is_some_and(|h| h.rank() <= rank) {
                    continue;
                }
                if kind.is_file() {
                    let value = sink(i, &name, &mut entry).map_err(io_err(path))?;
                    found[i] = Some(Found {
                        member: name.clone(),
                        value,
                    });
                    hits[i] = Some(Hit::File { rank });
                    next[i] = None;
                    break;
                } else if kind.is_symlink() || kind.is_hard_link() {
                    let Ok(Some(target)) = entry.link_name() else {
                        continue;
                    };
                    let target = target.to_string_lossy();
                    let resolved = if kind.is_hard_link() {
                        normalize(&target)
                    } else {
                        resolve(&name, &target)
                    };
                    hits[i] = Some(Hit::Link { rank });
                    found[i] = None;
                    next[i] = Some(resolved);
                    break;
                }
            }
            // Every want has its first-choice file: the rest of the archive (a kernel's
            // modules, say) need not be decompressed.
            if hits
                .iter()
                .all(|h| matches!(h, Some(Hit::File { rank: 0, .. })))
            {
                break;
            }
        }
        targets = next;
    }
    // A link whose target never turned up (outside the package, or a loop) leaves its
    // want unfound: the caller reports the member as missing.
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_links() {
        assert!(glob("boot/vmlinuz-*", "boot/vmlinuz-6.1.0-25-cloud-amd64"));
        assert!(!glob("boot/vmlinuz-*", "boot/config-6.1.0"));
        assert!(!glob("boot/vmlinuz-*", "boot/x/vmlinuz-1"));
        assert!(glob(
            "usr/lib/debian-installer/images/*/amd64/text/debian-installer/amd64/linux",
            "usr/lib/debian-installer/images/12/amd64/text/debian-installer/amd64/linux"
        ));
        assert_eq!(
            resolve("usr/lib/ipxe/ipxe.efi", "/boot/ipxe.efi"),
            "boot/ipxe.efi"
        );
        assert_eq!(
            resolve(
                "usr/lib/shim/shimx64.efi.signed",
                "shimx64.efi.signed.latest"
            ),
            "usr/lib/shim/shimx64.efi.signed.latest"
        );
        assert_eq!(resolve("a/b/c", "../../d"), "d");
    }

    #[test]
    fn not_a_package() {
        let dir = std::env::temp_dir().join(format!("gb10-deb-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.deb");
        std::fs::write(&p, b"!<arch>\nshort").unwrap();
        assert!(matches!(info(&p), Err(DebError::Format { .. })));
        std::fs::write(&p, b"hello").unwrap();
        assert!(matches!(info(&p), Err(DebError::Format { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
