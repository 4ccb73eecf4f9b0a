//! File contents shared by the transfers reading them at once: a rack booting together
//! holds one copy of its boot loader, not a read buffer per transfer.
use std::{
    collections::HashMap,
    fs::{File, Metadata},
    io,
    os::unix::fs::FileExt as _,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::OnceCell;

use crate::confine::Stamp;

/// Largest file held in memory: boot loaders (shim, GRUB, iPXE: 0.1-3 MiB) fit; a
/// kernel or initrd sent over TFTP is streamed.
pub const MAX_FILE: u64 = 16 << 20;
/// Most bytes held at once over all files; a file that does not fit is streamed. The
/// files are the operator's, and a file is held only while a transfer reads it.
pub const BUDGET: u64 = 64 << 20;

/// Bytes a transfer sends from memory: a rendered config, or a file's contents shared
/// with every transfer of the same file version.
pub struct Bytes {
    bytes: OnceCell<Box<[u8]>>,
    /// What this copy counts against the budget, given back when the last reader drops it.
    reserved: Option<(u64, Arc<AtomicU64>)>,
}

impl Bytes {
    /// Bytes of one transfer's own (a rendered config).
    pub fn own(bytes: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            bytes: OnceCell::new_with(Some(bytes.into_boxed_slice())),
            reserved: None,
        })
    }

    /// The contents (empty until read).
    pub fn get(&self) -> &[u8] {
        self.bytes.get().map_or(&[], |b| b)
    }
}

impl Drop for Bytes {
    fn drop(&mut self) {
        if let Some((size, held)) = &self.reserved {
            held.fetch_sub(*size, Ordering::Relaxed);
        }
    }
}

/// The files being read now.
#[derive(Default)]
pub struct Shared {
    files: Mutex<HashMap<Stamp, Weak<Bytes>>>,
    /// Bytes of every copy alive.
    held: Arc<AtomicU64>,
}

impl Shared {
    /// The contents of `file`, shared with every other transfer reading the same version
    /// (read once, by the first; the others wait for it). `Ok(None)` when the file is
    /// larger than [`MAX_FILE`] or does not fit the budget: stream it.
    pub async fn contents(&self, file: &File, meta: &Metadata) -> io::Result<Option<Arc<Bytes>>> {
        // A file replaced or rewritten is another version: a transfer never mixes old
        // and new bytes.
        let version = Stamp::of(meta);
        let Some(bytes) = self.slot(version, meta.len()) else {
            return Ok(None);
        };
        let size = meta.len() as usize;
        bytes
            .bytes
            .get_or_try_init(|| async move {
                let file = file.try_clone()?;
                tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0; size];
                    file.read_exact_at(&mut buf, 0)?;
                    Ok::<_, io::Error>(buf.into_boxed_slice())
                })
                .await
                .map_err(io::Error::other)?
            })
            .await?;
        Ok(Some(bytes))
    }

    /// The copy of `version`, new (unread) if none is alive; `None` over the limits.
    fn slot(&self, version: Stamp, size: u64) -> Option<Arc<Bytes>> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bytes) = files.get(&version).and_then(Weak::upgrade) {
            return Some(bytes);
        }
        if size > MAX_FILE {
            return None;
        }
        let held = self.held.fetch_add(size, Ordering::Relaxed);
        if held + size > BUDGET {
            self.held.fetch_sub(size, Ordering::Relaxed);
            return None;
        }
        // Versions nobody reads any more go, so the map holds only live copies.
        files.retain(|_, w| w.strong_count() > 0);
        let bytes = Arc::new(Bytes {
            bytes: OnceCell::new(),
            reserved: Some((size, self.held.clone())),
        });
        files.insert(version, Arc::downgrade(&bytes));
        Some(bytes)
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &std::path::Path, name: &str, len: usize) -> File {
        let path = dir.join(name);
        std::fs::write(&path, (0..len).map(|i| (i % 251) as u8).collect::<Vec<_>>()).unwrap();
        File::open(path).unwrap()
    }

    /// A sparse file of `len` bytes, opened for reading.
    fn sized(dir: &std::path::Path, name: &str, len: u64) -> File {
        File::create(dir.join(name)).unwrap().set_len(len).unwrap();
        File::open(dir.join(name)).unwrap()
    }

    async fn contents(shared: &Shared, file: File) -> Option<Arc<Bytes>> {
        let meta = file.metadata().unwrap();
        shared.contents(&file, &meta).await.unwrap()
    }

    fn tempdir(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("gb10-shared-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[tokio::test]
    async fn readers_of_one_file_share_one_copy_until_the_last_ends() {
        let dir = tempdir("one");
        let shared = Shared::default();
        let a = contents(&shared, file(&dir, "shim.efi", 100_000))
            .await
            .unwrap();
        let b = contents(&shared, File::open(dir.join("shim.efi")).unwrap())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the second reader got its own copy");
        assert_eq!(a.get(), std::fs::read(dir.join("shim.efi")).unwrap());
        assert_eq!(shared.held(), 100_000);
        drop(a);
        assert_eq!(shared.held(), 100_000, "one reader still reads it");
        drop(b);
        assert_eq!(shared.held(), 0, "nobody reads it, yet it is held");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_storm_of_first_readers_reads_once() {
        let dir = tempdir("storm");
        let shared = Shared::default();
        file(&dir, "shim.efi", 300_000);
        let files: Vec<File> = (0..50)
            .map(|_| File::open(dir.join("shim.efi")).unwrap())
            .collect();
        let all = futures::future::join_all(files.into_iter().map(|f| contents(&shared, f))).await;
        let all: Vec<_> = all.into_iter().map(Option::unwrap).collect();
        assert!(
            all.iter().all(|b| Arc::ptr_eq(b, &all[0])),
            "more than one copy"
        );
        assert_eq!(shared.held(), 300_000);
        assert_eq!(all[0].get().len(), 300_000);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_rewritten_file_is_a_new_copy() {
        let dir = tempdir("rewrite");
        let shared = Shared::default();
        let old = contents(&shared, file(&dir, "grub.efi", 5000))
            .await
            .unwrap();
        // Replaced as operators do (a new file renamed over it), and rewritten in place.
        std::fs::write(dir.join("new"), b"new grub").unwrap();
        std::fs::rename(dir.join("new"), dir.join("grub.efi")).unwrap();
        let new = contents(&shared, File::open(dir.join("grub.efi")).unwrap())
            .await
            .unwrap();
        assert_eq!(new.get(), b"new grub");
        assert_eq!(old.get().len(), 5000, "a running transfer's bytes changed");
        std::fs::write(dir.join("grub.efi"), b"new grub, longer").unwrap();
        let third = contents(&shared, File::open(dir.join("grub.efi")).unwrap())
            .await
            .unwrap();
        assert_eq!(third.get(), b"new grub, longer");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn files_past_the_limits_are_streamed() {
        let dir = tempdir("limits");
        let shared = Shared::default();
        let big = sized(&dir, "big", MAX_FILE + 1);
        assert!(contents(&shared, big).await.is_none());
        // Filling the budget with files of MAX_FILE: the next one does not fit.
        let mut held = Vec::new();
        for i in 0..BUDGET / MAX_FILE {
            let f = sized(&dir, &format!("f{i}"), MAX_FILE);
            held.push(contents(&shared, f).await.expect("within budget"));
        }
        let one_more = file(&dir, "one-more", 10);
        assert!(contents(&shared, one_more).await.is_none());
        assert_eq!(shared.held(), BUDGET);
        held.pop();
        let again = File::open(dir.join("one-more")).unwrap();
        assert!(contents(&shared, again).await.is_some());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
