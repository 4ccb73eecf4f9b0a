//! ISO 9660 images read in-process: the directory tree with Rock Ridge names (what
//! xorriso writes for Ubuntu and DGX OS installers), else Joliet, else plain ISO names;
//! paths are matched without regard to case, as UEFI does.
use std::{
    fs::File,
    io::{self, Write},
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
};

/// Why an image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not an ISO 9660 image: {why}")]
    Format { path: PathBuf, why: String },
    #[error("{path}: {member} is not in the image{}", listing(.near))]
    NotFound {
        path: PathBuf,
        member: String,
        /// What the deepest directory reached does hold, for the message.
        near: Vec<String>,
    },
    #[error("{path}: {member} is stored in several extents (over 4 GiB), which is not supported")]
    MultiExtent { path: PathBuf, member: String },
}

fn listing(near: &[String]) -> String {
    if near.is_empty() {
        String::new()
    } else {
        format!(" (that directory holds: {})", near.join(", "))
    }
}

const SECTOR: u64 = 2048;
/// Largest directory read, in bytes: real ones are a few sectors.
const DIR_MAX: u32 = 16 << 20;
/// Rock Ridge continuation areas followed per directory record.
const CONTINUATIONS_MAX: usize = 8;

/// A file or directory in the image.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    extent: u32,
    pub size: u32,
    flags: u8,
}

impl Entry {
    pub fn is_dir(&self) -> bool {
        self.flags & 0x02 != 0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Names {
    RockRidge { skip: usize },
    Joliet,
    Plain,
}

/// An open image.
pub struct Iso {
    path: PathBuf,
    file: File,
    len: u64,
    block: u64,
    root: Entry,
    names: Names,
}

impl Iso {
    /// Opens `path` and reads its volume descriptors.
    pub fn open(path: &Path) -> Result<Self, IsoError> {
        let io_err = |source| IsoError::Io {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        let format = |why: &str| IsoError::Format {
            path: path.to_owned(),
            why: why.to_owned(),
        };
        let mut primary = None;
        let mut joliet = None;
        for n in 16..16 + 32 {
            let mut vd = [0u8; SECTOR as usize];
            if file.read_exact_at(&mut vd, n * SECTOR).is_err() {
                break;
            }
            if &vd[1..6] != b"CD001" {
                if n == 16 {
                    return Err(format("no CD001 volume descriptor at sector 16"));
                }
                break;
            }
            match vd[0] {
                1 if primary.is_none() => {
                    let block = u64::from(u16::from_le_bytes([vd[128], vd[129]]));
                    primary = Some((
                        block,
                        record(&vd[156..190]).ok_or_else(|| format("bad root record"))?,
                    ));
                }
                2 if matches!(&vd[88..91], b"%/@" | b"%/C" | b"%/E") => {
                    joliet = record(&vd[156..190]);
                }
                255 => break,
                _ => {}
            }
        }
        let (block, root) = primary.ok_or_else(|| format("no primary volume descriptor"))?;
        if !(512..=SECTOR).contains(&block) || !block.is_power_of_two() {
            return Err(format("unsupported logical block size"));
        }
        let mut iso = Self {
            path: path.to_owned(),
            file,
            len,
            block,
            root,
            names: Names::Plain,
        };
        // Rock Ridge announces itself with an SP entry in the root's own `.` record.
        if let Some(skip) = iso.rock_ridge_skip()? {
            iso.names = Names::RockRidge { skip };
        } else if let Some(j) = joliet {
            iso.root = j;
            iso.names = Names::Joliet;
        }
        Ok(iso)
    }

    fn format(&self, why: impl Into<String>) -> IsoError {
        IsoError::Format {
            path: self.path.clone(),
            why: why.into(),
        }
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, IsoError> {
        if offset
            .checked_add(len as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(self.format(format!("an extent at byte {offset} runs past the end")));
        }
        let mut buf = vec![0u8; len];
        self.file
            .read_exact_at(&mut buf, offset)
            .map_err(|source| IsoError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(buf)
    }

    fn dir_bytes(&self, dir: &Entry) -> Result<Vec<u8>, IsoError> {
        if dir.size > DIR_MAX {
            return Err(self.format("a directory larger than 16 MiB"));
        }
        self.read(u64::from(dir.extent) * self.block, dir.size as usize)
    }

    fn rock_ridge_skip(&self) -> Result<Option<usize>, IsoError> {
        let bytes = self.dir_bytes(&self.root)?;
        let Some(len) = bytes.first().map(|l| usize::from(*l)) else {
            return Ok(None);
        };
        let Some(rec) = bytes.get(..len) else {
            return Ok(None);
        };
        let su = system_use(rec).unwrap_or_default();
        // SP: "SP", len 7, version 1, check bytes BE EF, then LEN_SKP.
        Ok(
            (su.len() >= 7 && &su[..2] == b"SP" && su[4..6] == [0xbe, 0xef])
                .then(|| usize::from(su[6])),
        )
    }

    /// The entries of directory `dir` (without `.` and `..`).
    pub fn list(&self, dir: &Entry) -> Result<Vec<Entry>, IsoError> {
        let bytes = self.dir_bytes(dir)?;
        let mut out = Vec::new();
        let mut pos = 0usize;
        let sector = self.block as usize;
        while pos < bytes.len() {
            let len = usize::from(bytes[pos]);
            if len == 0 {
                // Records never cross a sector: the rest of this one is padding.
                pos = (pos / sector + 1) * sector;
                continue;
            }
            let rec = bytes
                .get(pos..pos + len)
                .ok_or_else(|| self.format("a directory record runs past its directory"))?;
            pos += len;
            let Some(mut entry) = record(rec) else {
                return Err(self.format("a directory record is too short"));
            };
            let raw = &rec[33..33 + usize::from(rec[32])];
            if raw == [0] || raw == [1] {
                continue;
            }
            entry.name = match self.names {
                Names::RockRidge { skip } => {
                    let su = system_use(rec).unwrap_or_default();
                    self.rock_ridge_name(su.get(skip..).unwrap_or_default())?
                        .unwrap_or_else(|| plain_name(raw))
                }
                Names::Joliet => joliet_name(raw),
                Names::Plain => plain_name(raw),
            };
            out.push(entry);
        }
        Ok(out)
    }

    /// The NM (alternate name) entries of a record's system use area, following CE
    /// continuation areas.
    fn rock_ridge_name(&self, first: &[u8]) -> Result<Option<String>, IsoError> {
        let mut name: Option<Vec<u8>> = None;
        let mut area = first.to_vec();
        for _ in 0..=CONTINUATIONS_MAX {
            let mut next = None;
            let mut su = area.as_slice();
            while su.len() >= 4 {
                let len = usize::from(su[2]);
                if len < 4 || len > su.len() {
                    break;
                }
                let (sig, data) = (&su[..2], &su[4..len]);
                match sig {
                    b"NM" if !data.is_empty() => {
                        let flags = data[0];
                        if flags & 0x06 == 0 {
                            name.get_or_insert_with(Vec::new)
                                .extend_from_slice(&data[1..]);
                        }
                    }
                    b"CE" if data.len() >= 24 => {
                        let le = |o: usize| {
                            u32::from_le_bytes([data[o], data[o + 1], data[o + 2], data[o + 3]])
                        };
                        next = Some((le(0), le(8), le(16)));
                    }
                    b"ST" => break,
                    _ => {}
                }
                su = &su[len..];
            }
            let Some((block, offset, len)) = next else {
                break;
            };
            if len > self.block as u32 {
                return Err(self.format("a Rock Ridge continuation area longer than a block"));
            }
            area = self.read(
                u64::from(block) * self.block + u64::from(offset),
                len as usize,
            )?;
        }
        Ok(name.map(|n| String::from_utf8_lossy(&n).into_owned()))
    }

    /// The entry at `member` (`casper/vmlinuz`), matched without regard to case.
    pub fn find(&self, member: &str) -> Result<Entry, IsoError> {
        let mut cur = self.root.clone();
        for part in member.split('/').filter(|p| !p.is_empty()) {
            let entries = if cur.is_dir() {
                self.list(&cur)?
            } else {
                Vec::new()
            };
            match entries.iter().find(|e| e.name.eq_ignore_ascii_case(part)) {
                Some(e) => cur = e.clone(),
                None => {
                    return Err(IsoError::NotFound {
                        path: self.path.clone(),
                        member: member.to_owned(),
                        near: entries.into_iter().map(|e| e.name).collect(),
                    });
                }
            }
        }
        if cur.flags & 0x80 != 0 {
            return Err(IsoError::MultiExtent {
                path: self.path.clone(),
                member: member.to_owned(),
            });
        }
        Ok(cur)
    }

    /// Whether `member` is a file in the image.
    pub fn has_file(&self, member: &str) -> bool {
        self.find(member).is_ok_and(|e| !e.is_dir())
    }

    /// Copies the contents of file `entry` to `out`.
    pub fn copy(&self, entry: &Entry, out: &mut dyn Write) -> Result<u64, IsoError> {
        let start = u64::from(entry.extent) * self.block;
        let size = u64::from(entry.size);
        if start.checked_add(size).is_none_or(|end| end > self.len) {
            return Err(self.format(format!("{} runs past the end of the image", entry.name)));
        }
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(1 << 20) as usize;
            let buf = self.read(start + done, n)?;
            out.write_all(&buf).map_err(|source| IsoError::Io {
                path: self.path.clone(),
                source,
            })?;
            done += n as u64;
        }
        Ok(size)
    }
}

/// Parses a directory record (at least 34 bytes with the name).
fn record(rec: &[u8]) -> Option<Entry> {
    if rec.len() < 34 {
        return None;
    }
    let name_len = usize::from(rec[32]);
    if 33 + name_len > rec.len() {
        return None;
    }
    Some(Entry {
        name: String::new(),
        extent: u32::from_le_bytes([rec[2], rec[3], rec[4], rec[5]]),
        size: u32::from_le_bytes([rec[10], rec[11], rec[12], rec[13]]),
        flags: rec[25],
    })
}

/// The system use area of a record: after the name and its padding byte.
fn system_use(rec: &[u8]) -> Option<&[u8]> {
    let name_len = usize::from(*rec.get(32)?);
    let start = 33 + name_len + usize::from(name_len % 2 == 0);
    rec.get(start..)
}

/// `VMLINUZ.;1` → `VMLINUZ`: the version and a bare trailing dot dropped.
fn plain_name(raw: &[u8]) -> String {
    let s = String::from_utf8_lossy(raw);
    let s = s.split(';').next().unwrap_or_default();
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

fn joliet_name(raw: &[u8]) -> String {
    let units: Vec<u16> = raw
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let s = String::from_utf16_lossy(&units);
    s.split(';').next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(plain_name(b"VMLINUZ.;1"), "VMLINUZ");
        assert_eq!(plain_name(b"BOOTX64.EFI;1"), "BOOTX64.EFI");
        assert_eq!(
            joliet_name(&[0, b'a', 0, b'.', 0, b'e', 0, b';', 0, b'1']),
            "a.e"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("gb10-iso-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.iso");
        // A primary descriptor whose root points past the end of the file.
        let mut img = vec![0u8; 17 * 2048];
        let vd = &mut img[16 * 2048..];
        vd[0] = 1;
        vd[1..6].copy_from_slice(b"CD001");
        vd[128..130].copy_from_slice(&2048u16.to_le_bytes());
        vd[156] = 34;
        vd[158..162].copy_from_slice(&1000u32.to_le_bytes());
        vd[166..170].copy_from_slice(&2048u32.to_le_bytes());
        vd[181] = 2;
        vd[188] = 1;
        std::fs::write(&p, &img).unwrap();
        assert!(matches!(Iso::open(&p), Err(IsoError::Format { .. })));
        std::fs::write(&p, vec![0u8; 40_000]).unwrap();
        assert!(matches!(Iso::open(&p), Err(IsoError::Format { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
