//! Durable leases in the redb store, with group commit: one writer thread takes every
//! lease write that is waiting, commits them in one fsynced transaction, then releases
//! the ACKs that waited on them. Durability per ACK, the fsync cost shared by the batch.
use std::{net::Ipv4Addr, sync::mpsc, thread};

use redb::{Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use tokio::sync::oneshot;
use tracing::{error, warn};

use super::leases::{ClientId, Lease, LeaseState};
use crate::{mac::Mac, store::Store};

/// Leases by IPv4 address (as u32): one encoded [`Lease`] each.
pub const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("dhcp_leases");
/// Record format version; a record of another version is skipped, not misread.
/// 2: the client id is bound to the chaddr (see [`super::handler::client_id`]); a
/// version 1 record is read with its client id carried over to that form.
const VERSION: u8 = 2;
/// Most writes one transaction takes; bounds the latency of the last ACK of a burst.
const MAX_BATCH: usize = 4096;

/// Why a lease write failed (the ACK it guarded is not sent).
#[derive(Debug, thiserror::Error)]
pub enum LeaseStoreError {
    #[error("lease writer has stopped")]
    Stopped,
    #[error("committing {count} lease(s): {reason}")]
    Commit { count: usize, reason: String },
}

/// A lease record that could not be used, and why.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRecord {
    Corrupt,
    Version(u8),
    KeyMismatch { key: Ipv4Addr, ip: Ipv4Addr },
}

/// Encodes a lease: version, state, expiry, MAC, client id, hostname.
pub fn encode(lease: &Lease) -> Vec<u8> {
    let host = lease.hostname.as_deref().unwrap_or("").as_bytes();
    let host = &host[..host.len().min(255)];
    let cid = &lease.client.0[..lease.client.0.len().min(255)];
    let mut v = Vec::with_capacity(18 + cid.len() + host.len() + 4);
    v.push(VERSION);
    v.push(match lease.state {
        LeaseState::Offered => 0,
        LeaseState::Leased => 1,
        LeaseState::Declined => 2,
        LeaseState::Released => 3,
    });
    v.extend_from_slice(&lease.expires.to_be_bytes());
    v.extend_from_slice(&lease.mac.0);
    v.extend_from_slice(&u32::from(lease.ip).to_be_bytes());
    v.push(cid.len() as u8);
    v.extend_from_slice(cid);
    v.push(host.len() as u8);
    v.extend_from_slice(host);
    v
}

/// Decodes a record stored under `key`; anything inconsistent is a [`BadRecord`].
pub fn decode(key: u32, raw: &[u8]) -> Result<Lease, BadRecord> {
    let (&version, rest) = raw.split_first().ok_or(BadRecord::Corrupt)?;
    if version != VERSION && version != 1 {
        return Err(BadRecord::Version(version));
    }
    let (&state, rest) = rest.split_first().ok_or(BadRecord::Corrupt)?;
    let state = match state {
        0 => LeaseState::Offered,
        1 => LeaseState::Leased,
        2 => LeaseState::Declined,
        3 => LeaseState::Released,
        _ => return Err(BadRecord::Corrupt),
    };
    let take = |rest: &mut &[u8], n: usize| -> Result<Vec<u8>, BadRecord> {
        let (head, tail) = rest.split_at_checked(n).ok_or(BadRecord::Corrupt)?;
        *rest = tail;
        Ok(head.to_vec())
    };
    let mut rest = rest;
    let expires = u64::from_be_bytes(
        take(&mut rest, 8)?
            .try_into()
            .map_err(|_| BadRecord::Corrupt)?,
    );
    let mac: [u8; 6] = take(&mut rest, 6)?
        .try_into()
        .map_err(|_| BadRecord::Corrupt)?;
    let ip = Ipv4Addr::from(u32::from_be_bytes(
        take(&mut rest, 4)?
            .try_into()
            .map_err(|_| BadRecord::Corrupt)?,
    ));
    if u32::from(ip) != key {
        return Err(BadRecord::KeyMismatch {
            key: Ipv4Addr::from(key),
            ip,
        });
    }
    let n = usize::from(take(&mut rest, 1)?[0]);
    let mut client = ClientId(take(&mut rest, n)?);
    let own = [&[1u8][..], &mac].concat();
    if version == 1 && !client.0.is_empty() && client.0 != own {
        // Version 1 keyed on option 61 alone; the key is now chaddr, then option 61.
        client = ClientId([&own[..], &[0xff], &client.0].concat());
    }
    let n = usize::from(take(&mut rest, 1)?[0]);
    let host = String::from_utf8(take(&mut rest, n)?).map_err(|_| BadRecord::Corrupt)?;
    if !rest.is_empty() || client.0.is_empty() {
        return Err(BadRecord::Corrupt);
    }
    Ok(Lease {
        ip,
        client,
        mac: Mac(mac),
        state,
        expires,
        hostname: (!host.is_empty()).then_some(host),
    })
}

/// Every usable lease in the store, and how many records were skipped. A store that
/// cannot be read at all is logged and treated as empty: it never stops the start.
pub fn load(store: &Store) -> (Vec<Lease>, usize) {
    let read = || -> Result<(Vec<Lease>, usize), redb::Error> {
        let txn = store.db().begin_read()?;
        let table = match txn.open_table(LEASES) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((Vec::new(), 0)),
            Err(e) => return Err(e.into()),
        };
        let (mut leases, mut skipped) = (Vec::new(), 0);
        for entry in table.iter()? {
            let (key, value) = match entry {
                Ok(kv) => kv,
                Err(err) => {
                    warn!(error = %err, "unreadable lease entry skipped");
                    skipped += 1;
                    continue;
                }
            };
            match decode(key.value(), value.value()) {
                Ok(lease) if lease.state == LeaseState::Offered => {}
                Ok(lease) => leases.push(lease),
                Err(why) => {
                    warn!(ip = %Ipv4Addr::from(key.value()), ?why, "bad lease record skipped");
                    skipped += 1;
                }
            }
        }
        Ok((leases, skipped))
    };
    read().unwrap_or_else(|err| {
        error!(error = %err, "lease table unreadable: starting with no leases");
        (Vec::new(), 0)
    })
}

struct Write {
    /// None: a sync marker, acknowledged once everything queued before it is on disk.
    lease: Option<Lease>,
    done: Option<oneshot::Sender<Result<(), LeaseStoreError>>>,
}

/// The handle on the writer thread. Dropping every handle stops it after the last batch.
#[derive(Clone)]
pub struct LeaseWriter {
    tx: mpsc::Sender<Write>,
}

impl LeaseWriter {
    /// Starts the writer thread on `store`.
    pub fn spawn(store: Store) -> Self {
        let (tx, rx) = mpsc::channel::<Write>();
        thread::Builder::new()
            .name("lease-writer".into())
            .spawn(move || writer(store, rx))
            .expect("spawning the lease writer thread");
        Self { tx }
    }

    /// Queues `lease`; the receiver resolves once it is on disk.
    pub fn write(&self, lease: Lease) -> oneshot::Receiver<Result<(), LeaseStoreError>> {
        let (done, rx) = oneshot::channel();
        if let Err(mpsc::SendError(w)) = self.tx.send(Write {
            lease: Some(lease),
            done: Some(done),
        }) && let Some(done) = w.done
        {
            let _ = done.send(Err(LeaseStoreError::Stopped));
        }
        rx
    }

    /// Queues `lease` without waiting for it (releases, declines: nothing waits on them).
    pub fn write_later(&self, lease: Lease) {
        let _ = self.tx.send(Write {
            lease: Some(lease),
            done: None,
        });
    }

    /// Resolves once every write queued before it is on disk (at shutdown, so the
    /// last releases are not lost).
    pub async fn sync(&self) {
        let (done, rx) = oneshot::channel();
        if self
            .tx
            .send(Write {
                lease: None,
                done: Some(done),
            })
            .is_ok()
        {
            let _ = rx.await;
        }
    }
}

fn writer(store: Store, rx: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = commit(&store, &batch).map_err(|e| LeaseStoreError::Commit {
            count: batch.len(),
            reason: crate::error_chain(&e),
        });
        if let Err(err) = &result {
            error!(error = %err, "lease batch not written: its ACKs are not sent");
        }
        for w in batch.drain(..) {
            if let Some(done) = w.done {
                let _ = done.send(match &result {
                    Ok(()) => Ok(()),
                    Err(LeaseStoreError::Commit { count, reason }) => {
                        Err(LeaseStoreError::Commit {
                            count: *count,
                            reason: reason.clone(),
                        })
                    }
                    Err(LeaseStoreError::Stopped) => Err(LeaseStoreError::Stopped),
                });
            }
        }
    }
}

fn commit(store: &Store, batch: &[Write]) -> Result<(), redb::Error> {
    let mut txn = store.db().begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut table = txn.open_table(LEASES)?;
        for lease in batch.iter().filter_map(|w| w.lease.as_ref()) {
            table.insert(u32::from(lease.ip), encode(lease).as_slice())?;
        }
    }
    txn.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(n: u8) -> Lease {
        Lease {
            ip: Ipv4Addr::new(198, 18, 0, n),
            client: ClientId(vec![1, 2, 0, 0, 0, 0, n]),
            mac: Mac([2, 0, 0, 0, 0, n]),
            state: LeaseState::Leased,
            expires: 1_000 + u64::from(n),
            hostname: n.is_multiple_of(2).then(|| format!("h{n}")),
        }
    }

    #[test]
    fn round_trip_and_bad_records() {
        let l = lease(7);
        assert_eq!(decode(u32::from(l.ip), &encode(&l)).unwrap(), l);
        assert!(matches!(
            decode(1, &encode(&l)),
            Err(BadRecord::KeyMismatch { .. })
        ));
        let mut raw = encode(&l);
        raw[0] = 9;
        assert_eq!(decode(u32::from(l.ip), &raw), Err(BadRecord::Version(9)));
        // Version 1 keyed option-61 clients on option 61 alone: read bound to the MAC.
        let mut v1 = l.clone();
        v1.client = ClientId(vec![255, 0, 0, 0, 1]);
        let mut raw = encode(&v1);
        raw[0] = 1;
        let read = decode(u32::from(l.ip), &raw).unwrap();
        let want = [&[1u8][..], &l.mac.0, &[0xff, 255, 0, 0, 0, 1]].concat();
        assert_eq!(read.client, ClientId(want));
        for cut in 0..raw.len() {
            assert!(
                decode(u32::from(l.ip), &encode(&l)[..cut]).is_err(),
                "cut {cut}"
            );
        }
    }

    #[tokio::test]
    async fn group_commit_persists_and_skips_poison() {
        let store = Store::in_memory();
        let w = LeaseWriter::spawn(store.clone());
        let waits: Vec<_> = (1..=50).map(|n| w.write(lease(n))).collect();
        for r in waits {
            r.await.unwrap().unwrap();
        }
        w.write_later(lease(51));
        w.sync().await;
        assert!(
            load(&store).0.contains(&lease(51)),
            "sync waits for earlier writes"
        );
        // A poisoned record beside the good ones.
        let txn = store.db().begin_write().unwrap();
        txn.open_table(LEASES)
            .unwrap()
            .insert(
                u32::from(Ipv4Addr::new(198, 18, 0, 200)),
                [1u8, 7, 7].as_slice(),
            )
            .unwrap();
        txn.commit().unwrap();
        let (leases, skipped) = load(&store);
        assert_eq!(leases.len(), 51);
        assert_eq!(skipped, 1);
        assert!(leases.contains(&lease(33)));
    }
}
