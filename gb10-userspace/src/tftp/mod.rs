//! Read-only TFTP on the LAN address for the first boot stage (shim, GRUB, iPXE),
//! confined to `data_path/tftp`.
pub mod packet;
pub mod path;
mod server;
mod session;
mod shared;
pub mod stats;

use std::{net::SocketAddrV4, path::PathBuf, sync::Arc};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::stats::Stats;
use crate::{
    clients::Clients,
    config::TftpConfig,
    identity::Identity,
    lan::{self, LanAddr},
    seeds::Seeds,
    xdp::LanXdp,
};

/// What the TFTP service uses.
pub struct Tftp {
    pub config: TftpConfig,
    /// `data_path/tftp`.
    pub root: PathBuf,
    /// For the MTU, which bounds the block size.
    pub lan_iface: String,
    pub lan_addr: LanAddr,
    /// GRUB's configs are rendered, not read; they name the HTTP port.
    pub seeds: Seeds,
    pub http_port: u16,
    /// Who fetched a boot file, for the client's timeline.
    pub identity: Identity,
    pub events: Arc<Clients>,
    pub stats: Arc<Stats>,
    /// Transfer ports are registered with the LAN program, so its counters and guard
    /// know them.
    pub xdp: Option<Arc<LanXdp>>,
}

/// The TFTP root inside `data_path`.
pub const ROOT_DIR: &str = "tftp";
/// IPv4 (20) + UDP (8) + TFTP (4) headers: the largest block a LAN frame carries whole.
const HEADERS: u16 = 32;

/// Why the TFTP service cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TftpError {
    #[error("opening the TFTP root {path} (create it, or fix data_path)")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("binding TFTP on {addr}")]
    Bind {
        addr: SocketAddrV4,
        #[source]
        source: std::io::Error,
    },
}

/// Serves TFTP on the live LAN address until `token` fires.
pub async fn run(tftp: Tftp, token: CancellationToken) -> anyhow::Result<()> {
    let path = tftp.root.clone();
    if let Err(err) = std::fs::create_dir_all(&path) {
        warn!(path = %path.display(), %err, "cannot create the TFTP root");
    }
    let root = path::Root::open(&path).map_err(|source| TftpError::Root {
        path: path.clone(),
        source,
    })?;
    info!(root = %path.display(), "TFTP root");
    let root = Arc::new(root);
    let lan_addr = tftp.lan_addr.clone();
    let tftp = Arc::new(tftp);
    let shared = Arc::new(shared::Shared::default());
    lan::follow("tftp", lan_addr, token, |ip, stop| {
        // Read per bind: the MTU may have changed with the address.
        let limits = packet::Limits {
            max_blksize: lan_mtu(&tftp.lan_iface).saturating_sub(HEADERS),
            max_window: packet::MAX_WINDOW,
        };
        let ctx = Arc::new(server::Ctx {
            tftp: tftp.clone(),
            root: root.clone(),
            limits,
            shared: shared.clone(),
        });
        server::serve(ctx, ip, stop)
    })
    .await;
    Ok(())
}

/// The LAN interface's MTU from sysfs; 1500 when unreadable.
fn lan_mtu(iface: &str) -> u16 {
    let file = format!("/sys/class/net/{iface}/mtu");
    match std::fs::read_to_string(&file).map(|t| t.trim().parse::<u16>()) {
        Ok(Ok(mtu)) if mtu > HEADERS + 8 => mtu,
        other => {
            warn!(%file, ?other, "LAN MTU unknown; assuming 1500");
            1500
        }
    }
}

/// Runs a network packet through everything a request meets before a file is opened:
/// parsing, option reading and negotiation, OACK encoding, name cleaning. The fuzz
/// target and the corpus replay test call this; it must never panic.
pub fn exercise_request(data: &[u8]) {
    let Ok(request) = packet::parse_request(data) else {
        let _ = packet::parse_reply(data);
        return;
    };
    let requested = packet::read_options(&request.options);
    let limits = packet::Limits {
        max_blksize: 1468,
        max_window: packet::MAX_WINDOW,
    };
    let n = packet::negotiate(&requested, limits, Some(data.len() as u64));
    assert!(packet::BLKSIZE_RANGE.contains(&n.blksize));
    assert!((1..=packet::MAX_WINDOW).contains(&n.windowsize));
    let _ = packet::oack(&n.oack);
    if let Ok(name) = path::clean(&request.filename) {
        assert!(!name.starts_with('/') && !name.split('/').any(|p| p == ".." || p.is_empty()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus() -> Vec<Vec<u8>> {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/tftp_request");
        std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| std::fs::read(e.unwrap().path()).unwrap())
            .collect()
    }

    /// Replays the fuzz corpus (fuzz/corpus/tftp_request) so the normal test command
    /// covers it without cargo-fuzz.
    #[test]
    fn replays_fuzz_corpus() {
        let corpus = corpus();
        assert!(corpus.len() >= 10, "corpus too small: {}", corpus.len());
        for data in corpus {
            exercise_request(&data);
        }
    }

    /// A poor man's fuzzer on every test run: deterministic byte changes, truncations
    /// and insertions of NUL, `/` and `.` on the corpus.
    #[test]
    fn mutated_corpus_never_panics() {
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for seed in corpus() {
            for _ in 0..2000 {
                let mut data = seed.clone();
                for _ in 0..=(next() % 4) {
                    let at = (next() as usize) % (data.len() + 1);
                    match next() % 3 {
                        0 if at < data.len() => data[at] = next() as u8,
                        1 => data.truncate(at),
                        _ => data.insert(at, [0, b'/', b'.'][next() as usize % 3]),
                    }
                }
                exercise_request(&data);
            }
        }
    }
}
