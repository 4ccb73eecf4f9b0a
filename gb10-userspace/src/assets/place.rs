//! Writing assets into `data_path`: each file staged once (hashed while written), then
//! put at each destination by rename, unless the file there already has the same
//! sha256; the manifest records what is there.
use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{self, Read, Write},
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The manifest's file name, in `data_path`.
pub const MANIFEST: &str = "boot-assets.json";
/// Where files are staged before they are put in place (same filesystem, so renames
/// are atomic); removed when done.
const STAGING: &str = ".boot-assets.staging";

/// A file written to the staging directory.
#[derive(Debug)]
pub struct Staged {
    pub tmp: PathBuf,
    pub sha256: String,
    pub size: u64,
}

/// What happened at one destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// There was no file.
    Placed,
    /// There was a different file.
    Replaced,
    /// The file there already had this content.
    Unchanged,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Self::Placed => "placed",
            Self::Replaced => "replaced",
            Self::Unchanged => "unchanged",
        }
    }
}

/// One file of the manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Relative to `data_path`, like `tftp/shimx64.efi`.
    pub path: String,
    pub sha256: String,
    pub size: u64,
    pub arch: String,
    pub role: String,
    /// Where it came from: package, version, file and member, or image and member.
    pub origin: serde_json::Value,
}

/// `boot-assets.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub files: Vec<ManifestEntry>,
}

/// The staging area under `data_path`; removed on drop.
pub struct Stage {
    dir: PathBuf,
    next: u32,
}

impl Stage {
    pub fn new(data_path: &Path) -> io::Result<Self> {
        let dir = data_path.join(STAGING);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        Ok(Self { dir, next: 0 })
    }

    /// Writes `from` to a new staged file, hashing it on the way.
    pub fn write(&mut self, from: &mut dyn Read) -> io::Result<Staged> {
        self.next += 1;
        let tmp = self.dir.join(format!("{}", self.next));
        let mut out = File::create(&tmp)?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        let mut size = 0u64;
        loop {
            let n = from.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])?;
            size += n as u64;
        }
        out.sync_all()?;
        Ok(Staged {
            tmp,
            sha256: hex(&hasher.finalize()),
            size,
        })
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of the file at `path`, `None` when there is no regular file.
pub fn sha256_of(path: &Path) -> io::Result<Option<String>> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(Some(hex(&hasher.finalize())))
}

/// Puts `staged` at `data_path/dest` unless an identical file is there.
pub fn put(data_path: &Path, staged: &Staged, dest: &str) -> io::Result<Outcome> {
    let full = data_path.join(dest);
    let before = sha256_of(&full)?;
    if before.as_deref() == Some(staged.sha256.as_str()) {
        return Ok(Outcome::Unchanged);
    }
    if let Some(parent) = full.parent() {
        fs::create_dir_all(parent)?;
    }
    let existed = fs::symlink_metadata(&full).is_ok();
    let file_name = full.file_name().unwrap_or_default().to_string_lossy();
    let tmp = full.with_file_name(format!(".{file_name}.gb10-tmp"));
    let _ = fs::remove_file(&tmp);
    // The first destination takes the staged file itself (a link, and the staging
    // directory goes); the others get copies. Not links between tftp/ and www/: a `cp`
    // over one (which writes in place) would change the other behind the operator's back.
    let unlinked = fs::metadata(&staged.tmp).is_ok_and(|m| {
        use std::os::unix::fs::MetadataExt as _;
        m.nlink() == 1
    });
    if !(unlinked && fs::hard_link(&staged.tmp, &tmp).is_ok()) {
        fs::copy(&staged.tmp, &tmp)?;
    }
    set_readable(&tmp)?;
    fs::rename(&tmp, &full)?;
    Ok(if existed {
        Outcome::Replaced
    } else {
        Outcome::Placed
    })
}

fn set_readable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
}

/// The manifest now in `data_path` (empty when there is none or it does not parse).
pub fn load_manifest(data_path: &Path) -> Manifest {
    fs::read(data_path.join(MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// Merges `entries` into the manifest: entries for the same paths are replaced, entries
/// whose file is gone or changed since are dropped. Written only when it changes, so a
/// re-run leaves the file byte for byte as it was. Whether it was written.
pub fn write_manifest(data_path: &Path, entries: Vec<ManifestEntry>) -> io::Result<bool> {
    let old = load_manifest(data_path);
    let mut by_path: BTreeMap<String, ManifestEntry> = BTreeMap::new();
    for e in old.files {
        if sha256_of(&data_path.join(&e.path))?.as_deref() == Some(e.sha256.as_str()) {
            by_path.insert(e.path.clone(), e);
        }
    }
    for e in entries {
        by_path.insert(e.path.clone(), e);
    }
    let manifest = Manifest {
        files: by_path.into_values().collect(),
    };
    let mut text = serde_json::to_vec_pretty(&manifest).map_err(io::Error::other)?;
    text.push(b'\n');
    let path = data_path.join(MANIFEST);
    if fs::read(&path).ok().as_deref() == Some(text.as_slice()) {
        return Ok(false);
    }
    let tmp = data_path.join(format!(".{MANIFEST}.gb10-tmp"));
    fs::write(&tmp, &text)?;
    set_readable(&tmp)?;
    fs::rename(&tmp, &path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_is_idempotent_and_replaces_changed_files() {
        let dir = std::env::temp_dir().join(format!("gb10-place-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mut stage = Stage::new(&dir).unwrap();
        let a = stage.write(&mut &b"one"[..]).unwrap();
        assert_eq!(
            a.sha256,
            "7692c3ad3540bb803c020b3aee66cd8887123234ea0c6e7143c0add73ff431ed"
        );
        assert_eq!(put(&dir, &a, "tftp/x.efi").unwrap(), Outcome::Placed);
        assert_eq!(put(&dir, &a, "www/x.efi").unwrap(), Outcome::Placed);
        assert_eq!(put(&dir, &a, "tftp/x.efi").unwrap(), Outcome::Unchanged);
        let b = stage.write(&mut &b"two"[..]).unwrap();
        assert_eq!(put(&dir, &b, "tftp/x.efi").unwrap(), Outcome::Replaced);
        assert_eq!(fs::read(dir.join("tftp/x.efi")).unwrap(), b"two");
        assert_eq!(fs::read(dir.join("www/x.efi")).unwrap(), b"one");
        let entry = |p: &str, s: &Staged| ManifestEntry {
            path: p.into(),
            sha256: s.sha256.clone(),
            size: s.size,
            arch: "amd64".into(),
            role: "shim".into(),
            origin: serde_json::Value::Null,
        };
        assert!(
            write_manifest(&dir, vec![entry("tftp/x.efi", &b), entry("www/x.efi", &a)]).unwrap()
        );
        assert!(!write_manifest(&dir, vec![entry("tftp/x.efi", &b)]).unwrap());
        assert_eq!(load_manifest(&dir).files.len(), 2);
        drop(stage);
        assert!(!dir.join(STAGING).exists());
        let _ = fs::remove_dir_all(&dir);
    }
}
