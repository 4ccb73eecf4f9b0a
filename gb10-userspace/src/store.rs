//! The embedded store under `data_path/state`: one redb file for leases, client state
//! and host records. Each subsystem defines its own tables next to its code.
use std::{path::Path, sync::Arc};

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating state directory {path}")]
    Dir {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening store {path}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: Box<redb::DatabaseError>,
    },
}

/// File name of the store inside `data_path/state`.
pub const STORE_FILE: &str = "gb10.redb";

/// A shared handle on the store.
#[derive(Clone)]
pub struct Store {
    db: Arc<redb::Database>,
}

impl Store {
    /// Opens (or creates) `data_path/state/gb10.redb`.
    pub fn open(data_path: &Path) -> Result<Self, StoreError> {
        let dir = data_path.join("state");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Dir {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(STORE_FILE);
        let db = redb::Database::create(&path).map_err(|source| StoreError::Open {
            path,
            source: Box::new(source),
        })?;
        Ok(Self { db: Arc::new(db) })
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
