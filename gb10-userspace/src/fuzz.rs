//! The fuzz targets' entries (`fuzz/fuzz_targets/*.rs`) and their corpus replay: each
//! takes arbitrary bytes to a parser that reads what a stranger (or a corrupt file) can
//! write, and panics only on a broken invariant. `cargo test` replays every corpus entry
//! (`fuzz/corpus/<target>/`) and deterministic mutations of them on stable;
//! `cargo xtask fuzz` runs the targets under libFuzzer where a nightly toolchain exists.
use std::{net::Ipv4Addr, path::Path};

use crate::{
    clients::ClientRecord,
    config::{Config, RawConfig},
    dhcp::store as lease_store,
    inventory::Inventory,
};

/// A target's entry: arbitrary bytes in, a panic only on a broken invariant.
pub type Entry = fn(&[u8]);

/// Every target: its name (the corpus directory) and its entry.
pub const TARGETS: &[(&str, Entry)] = &[
    ("dhcp_message", crate::dhcp::fuzz::exercise),
    ("tftp_request", crate::tftp::exercise_request),
    ("http_request", http_request),
    ("config", config),
    ("inventory", inventory),
    ("lease_record", lease_record),
    ("client_record", client_record),
];

/// The config file: TOML through the raw schema and validation. Never panics.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(raw) = RawConfig::from_toml(text) {
        // The file layer under an empty flag layer, as `serve` builds it.
        let _ = Config::try_from(raw.overlay(RawConfig::default()));
    }
}

/// `inventory.toml`: parse and validate. Never panics.
pub fn inventory(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(inv) = Inventory::parse(Path::new("inventory.toml"), text) {
        let _ = inv.validate();
    }
}

/// A lease row as the store loader reads it: the key (4 bytes) and the value. A record
/// that decodes encodes back to the same lease.
pub fn lease_record(data: &[u8]) {
    let Some((key, raw)) = data.split_first_chunk::<4>() else {
        return;
    };
    let key = u32::from_be_bytes(*key);
    if let Ok(lease) = lease_store::decode(key, raw) {
        assert_eq!(lease.ip, Ipv4Addr::from(key));
        let again = lease_store::decode(key, &lease_store::encode(&lease));
        assert_eq!(again.as_ref(), Ok(&lease), "lease record round trip");
    }
}

/// A client row as the store loader reads it (JSON of a [`ClientRecord`]). A record that
/// decodes encodes and decodes to itself.
pub fn client_record(data: &[u8]) {
    if let Ok(record) = serde_json::from_slice::<ClientRecord>(data) {
        let text = serde_json::to_vec(&record).expect("a record serialises");
        let again: ClientRecord = serde_json::from_slice(&text).expect("its JSON decodes");
        assert_eq!(again, record, "client record round trip");
    }
}

/// An HTTP request's path, `Range` and `If-None-Match` (split at the first two NULs) and
/// a file length, through what runs before a file is opened.
pub fn http_request(data: &[u8]) {
    let (len, rest) = match data.split_first_chunk::<2>() {
        Some((l, rest)) => (u64::from(u16::from_be_bytes(*l)), rest),
        None => (0, data),
    };
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.splitn(3, '\0');
    let path = parts.next().unwrap_or("");
    let range = parts.next().unwrap_or("");
    let etag = parts.next().unwrap_or("");
    crate::http::static_files::exercise_request(path, range, etag, len);
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::TARGETS;

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| {
                let path = e.expect("corpus entry").path();
                let data = std::fs::read(&path).expect("corpus file");
                (path, data)
            })
            .collect();
        files.sort();
        files
    }

    /// Every corpus entry of every target (the seeds, and every crash found, kept as a
    /// regression), on stable, in the normal test run.
    #[test]
    fn every_corpus_entry_replays() {
        for (target, run) in TARGETS {
            let files = corpus(target);
            assert!(
                files.len() >= 3,
                "{target}: only {} corpus files",
                files.len()
            );
            for (path, data) in files {
                let result = std::panic::catch_unwind(|| run(&data));
                assert!(result.is_ok(), "{target}: {} panicked", path.display());
            }
        }
    }

    /// A bounded, deterministic stand-in for the fuzzer where there is no nightly: byte
    /// changes, truncations and insertions on every corpus entry of the new targets
    /// (DHCP and TFTP have their own, beside their parsers).
    #[test]
    fn mutated_corpus_never_panics() {
        let mut x = 0x51_7cc1_b727_220a_u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for (target, run) in &TARGETS[2..] {
            for (_, seed) in corpus(target) {
                for _ in 0..300 {
                    let mut data = seed.clone();
                    for _ in 0..=(next() % 4) {
                        let at = (next() as usize) % (data.len() + 1);
                        match next() % 3 {
                            0 if at < data.len() => data[at] = next() as u8,
                            1 => data.truncate(at),
                            _ => data.insert(at, b"\0\"=[]-/.,%\n"[next() as usize % 11]),
                        }
                    }
                    run(&data);
                }
            }
        }
    }
}
