//! The live inventory and templates: one snapshot on a `watch` channel, replaced whole
//! when `data_path`'s files change. Readers take the current snapshot (a cheap `Arc`
//! clone) or await the next one; nobody polls.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::{
    inventory::{INVENTORY_FILE, Inventory, InventoryError},
    seeds::table::BUILTIN,
    templates::{self, TemplateError, Templates},
};

/// The inventory and templates that were on disk together.
pub struct Snapshot {
    pub inventory: Inventory,
    pub templates: Templates,
}

impl Snapshot {
    /// Reads both from `data_path`. Either failing to parse is refused (a reload keeps
    /// what serves now); a seed that does not render for some host is not checked here
    /// (see [`crate::seeds::check_logged`]), so one host's missing variable never blocks others.
    pub fn load(data_path: &Path) -> Result<Self, ReloadError> {
        Ok(Self {
            inventory: Inventory::load(data_path)?,
            templates: Templates::load(data_path, BUILTIN)?,
        })
    }

    /// The built-in templates with `inventory`.
    pub fn builtin(inventory: Inventory) -> Self {
        Self {
            inventory,
            templates: Templates::builtin(BUILTIN),
        }
    }
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error(transparent)]
    Template(#[from] TemplateError),
}

/// A reader of the live snapshot.
#[derive(Clone)]
pub struct Live(watch::Receiver<Arc<Snapshot>>);

impl Live {
    /// A snapshot that never changes (tests, one-shot tools).
    pub fn fixed(snapshot: Snapshot) -> Self {
        Self(watch::channel(Arc::new(snapshot)).1)
    }

    /// The snapshot as it is now.
    pub fn now(&self) -> Arc<Snapshot> {
        self.0.borrow().clone()
    }

    /// Waits for the next snapshot and returns it; never returns when nothing can
    /// publish one any more (a fixed snapshot).
    pub async fn changed(&mut self) -> Arc<Snapshot> {
        if self.0.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
        self.0.borrow_and_update().clone()
    }
}

/// Publishes new snapshots when the files under `data_path` change.
pub struct Publisher {
    tx: watch::Sender<Arc<Snapshot>>,
    data_path: PathBuf,
}

/// Loads the first snapshot; the publisher then follows the files.
pub fn start(data_path: &Path) -> Result<(Live, Publisher), ReloadError> {
    let (tx, rx) = watch::channel(Arc::new(Snapshot::load(data_path)?));
    Ok((
        Live(rx),
        Publisher {
            tx,
            data_path: data_path.to_owned(),
        },
    ))
}

/// What the files looked like: (path, mtime, length) of each, so an edit (or a file
/// appearing or vanishing) changes it.
type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(data_path: &Path) -> Fingerprint {
    let mut files = vec![data_path.join(INVENTORY_FILE)];
    files.extend(
        templates::override_files(&data_path.join(templates::TEMPLATES_DIR)).unwrap_or_default(),
    );
    files
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let mtime = meta.as_ref().and_then(|m| m.modified().ok());
            (p, mtime, meta.map_or(0, |m| m.len()))
        })
        .collect()
}

impl Publisher {
    /// Looks at the files every second and publishes a new snapshot when they changed
    /// and load, after `check` (which logs seeds that do not render); a broken edit keeps
    /// what is serving now and logs why, with file and line. Until `token` fires.
    pub async fn run(self, token: CancellationToken, check: fn(&Snapshot)) {
        let mut last = fingerprint(&self.data_path);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let dp = self.data_path.clone();
            let Ok(now) = tokio::task::spawn_blocking(move || fingerprint(&dp)).await else {
                continue;
            };
            if now == last {
                continue;
            }
            last = now;
            let dp = self.data_path.clone();
            match tokio::task::spawn_blocking(move || Snapshot::load(&dp).inspect(check)).await {
                Ok(Ok(snapshot)) => {
                    info!(
                        hosts = snapshot.inventory.hosts.len(),
                        profiles = snapshot.inventory.profiles.len(),
                        "inventory and templates reloaded"
                    );
                    self.tx.send_replace(Arc::new(snapshot));
                }
                Ok(Err(err)) => error!(
                    error = %crate::error_chain(&err),
                    "inventory or templates changed but do not load; still serving the previous ones"
                ),
                Err(_) => {}
            }
        }
    }
}
