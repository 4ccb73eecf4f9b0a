//! The embedded store under `data_path/state`: one redb file for leases, client state
//! and host records. Each subsystem defines its own tables next to its code. The
//! directory is the daemon's alone (0700, the store 0600): it holds host records, BMC
//! names, rebuild keys and the made admin token.
use std::{
    fs::Permissions,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating state directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("restricting {path} to the daemon's user")]
    Mode {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening store {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
}

/// File name of the store inside `data_path/state`.
pub const STORE_FILE: &str = "gb10.redb";

/// The store's page cache. redb's default, 1 GiB, would bound nothing in a pod the chart
/// limits to 512 MiB. The contents (leases, client records, installs; a few MiB for a
/// fleet of thousands) fit many times over; a miss reads the kernel's page cache.
pub const CACHE_BYTES: usize = 32 << 20;

/// A shared handle on the store.
#[derive(Clone)]
pub struct Store {
    db: Arc<redb::Database>,
}

impl Store {
    /// Opens (or creates) `data_path/state/gb10.redb`, with a page cache of
    /// [`CACHE_BYTES`].
    pub fn open(data_path: &Path) -> Result<Self, StoreError> {
        let dir = Self::dir(data_path);
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Dir {
            path: dir.clone(),
            source,
        })?;
        restrict(&dir, 0o700)?;
        let path = dir.join(STORE_FILE);
        let db = redb::Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|source| StoreError::Open {
                path: path.clone(),
                source: Box::new(source),
            })?;
        restrict(&path, 0o600)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// `data_path/state`, the daemon's private directory.
    pub fn dir(data_path: &Path) -> PathBuf {
        data_path.join("state")
    }

    /// An in-memory store, for tests.
    pub fn in_memory() -> Self {
        let db = redb::Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .expect("in-memory redb");
        Self { db: Arc::new(db) }
    }

    /// The database, for subsystems to open their tables.
    pub fn db(&self) -> &redb::Database {
        &self.db
    }
}

/// Sets `path`'s mode (an older install made them 0755 and 0644).
fn restrict(path: &Path, mode: u32) -> Result<(), StoreError> {
    std::fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|source| {
        StoreError::Mode {
            path: path.into(),
            source,
        }
    })
}
