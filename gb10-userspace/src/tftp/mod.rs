//! Read-only TFTP on the LAN address for the first boot stage (shim, GRUB, iPXE),
//! confined to `data_path/tftp`.
pub mod packet;
pub mod path;
mod server;
mod session;
pub mod stats;

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::PathBuf,
    sync::Arc,
};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use self::stats::Stats;
use crate::{daemon::Shared, inventory::Mac, lan};

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
pub async fn run(shared: Arc<Shared>, token: CancellationToken) -> anyhow::Result<()> {
    let path = shared.config.data_path.join(ROOT_DIR);
    if let Err(err) = std::fs::create_dir_all(&path) {
        warn!(path = %path.display(), %err, "cannot create the TFTP root");
    }
    let root = path::Root::open(&path).map_err(|source| TftpError::Root {
        path: path.clone(),
        source,
    })?;
    info!(root = %path.display(), "TFTP root");
    let root = Arc::new(root);
    let config = shared.config.tftp.clone();
    lan::follow("tftp", shared.lan_addr.clone(), token, |ip, stop| {
        // Read per bind: the MTU may have changed with the address.
        let limits = packet::Limits {
            max_blksize: lan_mtu(&shared.config.lan_iface).saturating_sub(HEADERS),
            max_window: packet::MAX_WINDOW,
        };
        let ctx = Arc::new(server::Ctx {
            shared: shared.clone(),
            root: root.clone(),
            limits,
            config: config.clone(),
        });
        server::serve(ctx, ip, stop)
    })
    .await;
    Ok(())
}

/// The file a client gets for the (cleaned, root-relative) name it asked for.
///
/// The seam for mapping a client's request to another file. The boot decision already
/// names each client's own boot file (per host, per profile, per architecture) in its
/// DHCP reply, so the client asks for that very name and this is the identity; GRUB's
/// per-host configs are addressed by MAC in their path (`grub/hosts/<mac>.cfg`).
pub fn select_file(_shared: &Shared, _client: Ipv4Addr, requested: &str) -> String {
    requested.to_owned()
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

/// The MAC of `ip` in a `/proc/net/arp` table, when the entry is complete.
pub fn mac_from_arp(table: &str, ip: Ipv4Addr) -> Option<Mac> {
    table.lines().skip(1).find_map(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (addr, flags, mac) = (cols.first()?, cols.get(2)?, cols.get(3)?);
        // Flags 0x0 = incomplete: the MAC column is all zeros then.
        (addr.parse::<Ipv4Addr>().ok()? == ip && *flags != "0x0")
            .then(|| mac.parse().ok())
            .flatten()
    })
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

    #[test]
    fn arp_lookup() {
        let table = "IP address       HW type     Flags       HW address            Mask     Device\n\
            198.18.0.2       0x1         0x2         02:aa:bb:cc:dd:ee     *        gs1\n\
            198.18.0.3       0x1         0x0         00:00:00:00:00:00     *        gs1\n";
        assert_eq!(
            mac_from_arp(table, "198.18.0.2".parse().unwrap()),
            Some("02:aa:bb:cc:dd:ee".parse().unwrap())
        );
        assert_eq!(mac_from_arp(table, "198.18.0.3".parse().unwrap()), None);
        assert_eq!(mac_from_arp(table, "198.18.0.4".parse().unwrap()), None);
    }

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
