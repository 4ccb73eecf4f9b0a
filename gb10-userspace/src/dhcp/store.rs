//! Durable leases. Every lease write is appended to the lease log (segments under
//! `data_path/state/dhcp-log`, see [`super::log`]) and the ACK that waited on it leaves
//! once an fdatasync covers it. Two threads make a pipeline, not stop-and-wait: while
//! `lease-sync` runs the fdatasync of what was written, `lease-log` already numbers,
//! encodes and writes the next batch, and one fdatasync releases every batch written
//! before it started. Full segments are folded into the redb table by a third thread
//! (`lease-fold`), off the ACK path; at start, what the log holds beyond the table is
//! replayed and folded. A record is always on disk in the log, the table, or both.
use std::{
    collections::HashMap,
    fs::File,
    net::Ipv4Addr,
    os::unix::fs::FileExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
    thread,
};

use redb::{Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use tokio::sync::oneshot;
use tracing::{error, info, warn};

use super::{
    handler::CLIENT_ID_MAX,
    leases::{ClientId, Lease, LeaseState},
    log,
};
use crate::{mac::Mac, store::Store};

/// Leases by IPv4 address (as u32): one encoded [`Lease`] each.
pub const LEASES: TableDefinition<u32, &[u8]> = TableDefinition::new("dhcp_leases");
/// The lease log's bookkeeping: `folded`, the last log record the table holds.
const LOG_STATE: TableDefinition<&str, u64> = TableDefinition::new("dhcp_lease_log");
/// Record format version; a record of another version is skipped, not misread.
/// 2: the client id is bound to the chaddr (see [`super::handler::client_id`]); a
/// version 1 record is read with its client id carried over to that form.
const VERSION: u8 = 2;
/// Most writes taken in one go; bounds the latency of the last ACK of a burst.
const MAX_BATCH: usize = 4096;
/// A segment this large is closed and folded into the table (~50,000 leases).
const SEGMENT_BYTES: u64 = 4 << 20;
/// The log's directory inside `data_path/state`.
const LOG_DIR: &str = "dhcp-log";

/// The lease log's directory for `data_path`.
pub fn log_dir(data_path: &Path) -> PathBuf {
    data_path.join("state").join(LOG_DIR)
}

/// Why a lease write failed (the ACK it guarded is not sent).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LeaseStoreError {
    #[error("lease writer has stopped")]
    Stopped,
    #[error("lease log: {0}")]
    Log(String),
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
    let cid = &lease.client.0[..lease.client.0.len().min(CLIENT_ID_MAX)];
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
        // Cut as a live request's id is, so the record encodes back to itself.
        let room = CLIENT_ID_MAX - own.len() - 1;
        client = ClientId([&own[..], &[0xff], &client.0[..client.0.len().min(room)]].concat());
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

/// What the table and the log hold: the table's records and the log's newer ones (each
/// encoded, by address), the last record folded into the table, the last record in the
/// log, and how many entries could not be read.
struct Replayed {
    table: HashMap<u32, Vec<u8>>,
    log: HashMap<u32, Vec<u8>>,
    folded: u64,
    last: u64,
    skipped: usize,
}

fn replay(store: &Store, dir: &Path) -> Result<Replayed, redb::Error> {
    let txn = store.db().begin_read()?;
    let mut r = Replayed {
        table: HashMap::new(),
        log: HashMap::new(),
        folded: 0,
        last: 0,
        skipped: 0,
    };
    match txn.open_table(LEASES) {
        Ok(table) => {
            for entry in table.iter()? {
                match entry {
                    Ok((k, v)) => {
                        r.table.insert(k.value(), v.value().to_vec());
                    }
                    Err(err) => {
                        warn!(error = %err, "unreadable lease entry skipped");
                        r.skipped += 1;
                    }
                }
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    r.folded = match txn.open_table(LOG_STATE) {
        Ok(t) => t.get("folded")?.map_or(0, |v| v.value()),
        Err(redb::TableError::TableDoesNotExist(_)) => 0,
        Err(e) => return Err(e.into()),
    };
    r.last = r.folded;
    for (_, path) in segments(dir) {
        let records = log::read(&path).unwrap_or_else(|err| {
            warn!(path = %path.display(), %err, "lease log segment unreadable");
            Vec::new()
        });
        // Records at or below `last` are in the table already (or older than it).
        for record in records {
            if record.seq <= r.last {
                continue;
            }
            r.last = record.seq;
            match record.payload.split_first_chunk::<4>() {
                Some((ip, lease)) => {
                    r.log.insert(u32::from_be_bytes(*ip), lease.to_vec());
                }
                None => r.skipped += 1,
            }
        }
    }
    Ok(r)
}

/// The log's segments, oldest first; none (logged) when the directory is unreadable.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    log::segments(dir).unwrap_or_else(|err| {
        error!(dir = %dir.display(), %err, "lease log unreadable: leases since the last fold are lost");
        Vec::new()
    })
}

/// Every usable lease in the table and the log (`dir`), and how many records were
/// skipped. A store that cannot be read at all is logged and treated as empty: it
/// never stops the start.
pub fn load(store: &Store, dir: &Path) -> (Vec<Lease>, usize) {
    let (mut raw, mut skipped) = match replay(store, dir) {
        Ok(r) => {
            let mut raw = r.table;
            raw.extend(r.log);
            (raw, r.skipped)
        }
        Err(err) => {
            error!(error = %err, "lease table unreadable: starting with no leases");
            (HashMap::new(), 0)
        }
    };
    let mut leases = Vec::new();
    for (ip, bytes) in raw.drain() {
        match decode(ip, &bytes) {
            Ok(lease) if lease.state == LeaseState::Offered => {}
            Ok(lease) => leases.push(lease),
            Err(why) => {
                warn!(ip = %Ipv4Addr::from(ip), ?why, "bad lease record skipped");
                skipped += 1;
            }
        }
    }
    (leases, skipped)
}

/// Folds what an earlier run left in the log into the table and removes the log; the
/// last record number used, for the numbering to go on above it.
fn recover(store: &Store, dir: &Path) -> u64 {
    let r = match replay(store, dir) {
        Ok(r) => r,
        Err(err) => {
            error!(error = %err, "lease table unreadable: the lease log is kept");
            // Numbering on above whatever the log holds keeps replay order right.
            return segments(dir)
                .iter()
                .filter_map(|(_, p)| log::read(p).ok()?.last().map(|r| r.seq))
                .max()
                .unwrap_or(0);
        }
    };
    if !r.log.is_empty() {
        if let Err(err) = commit(store, &r.log, r.last) {
            error!(error = %err, "folding the lease log into the table failed; it is kept");
            return r.last;
        }
        info!(
            leases = r.log.len(),
            "lease log of the last run folded into the table"
        );
    }
    for (_, path) in segments(dir) {
        if let Err(err) = std::fs::remove_file(&path) {
            warn!(path = %path.display(), %err, "folded lease log segment not removed");
        }
    }
    r.last
}

/// One durable transaction: `leases` into the table, `last` as the last record folded.
fn commit(store: &Store, leases: &HashMap<u32, Vec<u8>>, last: u64) -> Result<(), redb::Error> {
    let mut txn = store.db().begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut table = txn.open_table(LEASES)?;
        for (ip, lease) in leases {
            table.insert(*ip, lease.as_slice())?;
        }
        txn.open_table(LOG_STATE)?.insert("folded", last)?;
    }
    txn.commit()?;
    Ok(())
}

/// A lease write, or (without a lease) a sync marker acknowledged once everything
/// queued before it is on disk and folded into the table.
struct Write {
    lease: Option<Lease>,
    done: Option<Done>,
}

type Done = oneshot::Sender<Result<(), LeaseStoreError>>;

/// The handle on the writer threads. Dropping every handle stops them after the last
/// batch.
#[derive(Clone)]
pub struct LeaseWriter {
    tx: mpsc::Sender<Write>,
}

impl LeaseWriter {
    /// Starts the writer on `store` with its log in `dir`: first folds what an earlier
    /// run left in the log, then appends.
    pub fn spawn(store: Store, dir: PathBuf) -> Self {
        let (tx, rx) = mpsc::channel::<Write>();
        thread::Builder::new()
            .name("lease-log".into())
            .spawn(move || Appender::start(store, dir).run(&rx))
            .expect("spawning the lease log thread");
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

    /// Resolves once every write queued before it is on disk and in the table (at
    /// shutdown, so that the next start has no log to replay).
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

/// Records numbered and encoded, not yet written.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    first: u64,
    leases: Vec<(u32, Vec<u8>)>,
    done: Vec<Done>,
}

/// The segment being appended to.
struct Segment {
    file: Arc<File>,
    path: PathBuf,
    len: u64,
    /// The newest record per address written to it, for its fold.
    leases: HashMap<u32, Vec<u8>>,
}

/// `lease-log`: numbers, encodes and writes batches, and hands each to `lease-sync`.
struct Appender {
    dir: PathBuf,
    /// The last record number used.
    seq: u64,
    segment: Option<Segment>,
    /// Set by `lease-sync` when an fdatasync failed: what the page cache holds may
    /// never reach the disk, so nothing is acknowledged from then on.
    broken: Arc<AtomicBool>,
    sync: mpsc::Sender<SyncJob>,
    fold: mpsc::Sender<FoldJob>,
}

impl Appender {
    fn start(store: Store, dir: PathBuf) -> Self {
        let seq = recover(&store, &dir);
        let broken = Arc::new(AtomicBool::new(false));
        let (sync, sync_rx) = mpsc::channel();
        let flag = broken.clone();
        thread::Builder::new()
            .name("lease-sync".into())
            .spawn(move || syncer(&sync_rx, &flag))
            .expect("spawning the lease sync thread");
        let (fold, fold_rx) = mpsc::channel();
        thread::Builder::new()
            .name("lease-fold".into())
            .spawn(move || folder(&store, &fold_rx))
            .expect("spawning the lease fold thread");
        Self {
            dir,
            seq,
            segment: None,
            broken,
            sync,
            fold,
        }
    }

    fn run(mut self, rx: &mpsc::Receiver<Write>) {
        let mut batch = Batch::default();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(w) = next.take() {
                taken += 1;
                match w.lease {
                    Some(lease) => self.add(&mut batch, &lease, w.done),
                    None => {
                        self.append(&mut batch);
                        let settled = self.settle();
                        if let Some(done) = w.done {
                            let _ = done.send(settled);
                        }
                    }
                }
                if taken < MAX_BATCH {
                    next = rx.try_recv().ok();
                }
            }
            self.append(&mut batch);
        }
        let _ = self.settle();
    }

    fn add(&mut self, batch: &mut Batch, lease: &Lease, done: Option<Done>) {
        self.seq += 1;
        if batch.bytes.is_empty() {
            batch.first = self.seq;
        }
        let encoded = encode(lease);
        let ip = u32::from(lease.ip);
        let mut record = Vec::with_capacity(4 + encoded.len());
        record.extend_from_slice(&ip.to_be_bytes());
        record.extend_from_slice(&encoded);
        log::encode(&mut batch.bytes, self.seq, &record);
        batch.leases.push((ip, encoded));
        batch.done.extend(done);
    }

    /// Writes `batch` to the open segment and queues its fdatasync; closes the segment
    /// once it is full.
    fn append(&mut self, batch: &mut Batch) {
        if batch.bytes.is_empty() {
            return;
        }
        match self.write(batch) {
            Ok(file) => {
                let _ = self.sync.send(SyncJob {
                    file,
                    done: std::mem::take(&mut batch.done),
                    then: None,
                });
            }
            Err(why) => {
                error!(leases = batch.leases.len(), %why, "lease batch not written: its ACKs are not sent");
                for done in batch.done.drain(..) {
                    let _ = done.send(Err(LeaseStoreError::Log(why.clone())));
                }
            }
        }
        batch.bytes.clear();
        batch.leases.clear();
        if self
            .segment
            .as_ref()
            .is_some_and(|s| s.len >= SEGMENT_BYTES)
        {
            self.close(None);
        }
    }

    fn write(&mut self, batch: &mut Batch) -> Result<Arc<File>, String> {
        if self.broken.load(Ordering::Relaxed) {
            return Err("an earlier fdatasync failed".into());
        }
        let seg = match &mut self.segment {
            Some(seg) => seg,
            None => {
                let (file, path) = log::create(&self.dir, batch.first)
                    .map_err(|e| format!("creating a segment in {}: {e}", self.dir.display()))?;
                self.segment.insert(Segment {
                    file: Arc::new(file),
                    path,
                    len: log::HEADER_LEN,
                    leases: HashMap::new(),
                })
            }
        };
        if let Err(err) = seg.file.write_all_at(&batch.bytes, seg.len) {
            // Whatever part of the batch landed is cut off again; if even that fails,
            // the segment is closed (its good records folded) and the next one starts.
            if seg.file.set_len(seg.len).is_err() {
                self.close(None);
            }
            return Err(err.to_string());
        }
        seg.len += batch.bytes.len() as u64;
        seg.leases.extend(batch.leases.drain(..));
        Ok(seg.file.clone())
    }

    /// Closes the open segment and hands it to `lease-fold`; `done` hears whether the
    /// fold committed.
    fn close(&mut self, done: Option<mpsc::Sender<bool>>) {
        match self.segment.take() {
            Some(seg) => {
                let _ = self.fold.send(FoldJob {
                    leases: seg.leases,
                    last: self.seq,
                    paths: vec![seg.path],
                    done: done.into_iter().collect(),
                });
            }
            None => {
                if let Some(done) = done {
                    let _ = done.send(true);
                }
            }
        }
    }

    /// Waits until everything written is on disk, then folds the open segment into
    /// the table.
    fn settle(&mut self) -> Result<(), LeaseStoreError> {
        let mut synced = true;
        if let Some(seg) = &self.segment {
            let (then, heard) = mpsc::channel();
            let _ = self.sync.send(SyncJob {
                file: seg.file.clone(),
                done: Vec::new(),
                then: Some(then),
            });
            synced = heard.recv().unwrap_or(false);
        }
        let (done, heard) = mpsc::channel();
        self.close(Some(done));
        let folded = heard.recv().unwrap_or(false);
        if synced || folded {
            Ok(())
        } else {
            Err(LeaseStoreError::Log("neither synced nor folded".into()))
        }
    }
}

/// Batches written to `file`, waiting for an fdatasync.
struct SyncJob {
    file: Arc<File>,
    done: Vec<Done>,
    /// Hears whether the sync succeeded (a sync marker waits on it).
    then: Option<mpsc::Sender<bool>>,
}

/// `lease-sync`: one fdatasync for everything written since the last one started,
/// then the ACKs that waited on it go.
fn syncer(rx: &mpsc::Receiver<SyncJob>, broken: &AtomicBool) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        let mut result: Result<(), String> = Ok(());
        if broken.load(Ordering::Relaxed) {
            result = Err("an earlier fdatasync failed".into());
        } else {
            // One call per file: a closed segment and the next may share a round.
            let mut synced: Vec<*const File> = Vec::new();
            for job in &jobs {
                let file = Arc::as_ptr(&job.file);
                if synced.contains(&file) {
                    continue;
                }
                synced.push(file);
                if let Err(err) = job.file.sync_data() {
                    error!(%err, "fdatasync of the lease log failed: no more ACKs until restart");
                    broken.store(true, Ordering::Relaxed);
                    result = Err(err.to_string());
                    break;
                }
            }
        }
        for job in jobs {
            for done in job.done {
                let _ = done.send(result.clone().map_err(LeaseStoreError::Log));
            }
            if let Some(then) = job.then {
                let _ = then.send(result.is_ok());
            }
        }
    }
}

/// A closed segment's leases for the table.
struct FoldJob {
    /// The newest record per address.
    leases: HashMap<u32, Vec<u8>>,
    /// The last record number in it.
    last: u64,
    /// Segment files to remove once the table holds their records.
    paths: Vec<PathBuf>,
    done: Vec<mpsc::Sender<bool>>,
}

/// `lease-fold`: commits closed segments into the table, in order, and removes them.
/// A fold that fails is retried with the next one: a later fold must never mark
/// records folded that an earlier, failed one left out.
fn folder(store: &Store, rx: &mpsc::Receiver<FoldJob>) {
    let mut carried: Option<FoldJob> = None;
    while let Ok(job) = rx.recv() {
        let job = match carried.take() {
            Some(mut older) => {
                older.leases.extend(job.leases);
                older.last = job.last;
                older.paths.extend(job.paths);
                older.done = job.done;
                older
            }
            None => job,
        };
        let ok = match commit(store, &job.leases, job.last) {
            Ok(()) => {
                for path in &job.paths {
                    if let Err(err) = std::fs::remove_file(path) {
                        warn!(path = %path.display(), %err, "folded lease log segment not removed");
                    }
                }
                true
            }
            Err(err) => {
                error!(error = %err, leases = job.leases.len(), "folding leases into the table failed; retried with the next segment");
                false
            }
        };
        for done in &job.done {
            let _ = done.send(ok);
        }
        if !ok {
            carried = Some(FoldJob {
                done: Vec::new(),
                ..job
            });
        }
    }
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
    fn the_longest_client_id_round_trips() {
        use dhcproto::v4::{DhcpOption, Message};
        // A 16-byte chaddr and a 255-byte option 61: cut where the store cuts it.
        let mut m = Message::default();
        m.set_chaddr(&[7u8; 16]);
        m.opts_mut()
            .insert(DhcpOption::ClientIdentifier(vec![9; 255]));
        let client = super::super::handler::client_id(&m);
        assert_eq!(client.0.len(), CLIENT_ID_MAX);
        let lease = Lease {
            ip: Ipv4Addr::new(198, 18, 0, 9),
            client,
            mac: Mac([2, 0, 0, 0, 0, 1]),
            state: LeaseState::Leased,
            expires: 10,
            hostname: None,
        };
        assert_eq!(decode(u32::from(lease.ip), &encode(&lease)), Ok(lease));
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

    /// A log directory of its own for one test.
    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gb10-leases-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn writes_persist_and_poison_is_skipped() {
        let store = Store::in_memory();
        let dir = scratch("persist");
        let w = LeaseWriter::spawn(store.clone(), dir.clone());
        let waits: Vec<_> = (1..=50).map(|n| w.write(lease(n))).collect();
        for r in waits {
            r.await.unwrap().unwrap();
        }
        // On disk in the log before any fold: what a crash now would leave.
        let (leases, _) = load(&store, &dir);
        assert_eq!(leases.len(), 50);
        w.write_later(lease(51));
        w.sync().await;
        assert!(
            load(&store, &dir).0.contains(&lease(51)),
            "sync waits for earlier writes"
        );
        assert!(
            log::segments(&dir).unwrap().is_empty(),
            "sync folds the log into the table"
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
        let (leases, skipped) = load(&store, &dir);
        assert_eq!(leases.len(), 51);
        assert_eq!(skipped, 1);
        assert!(leases.contains(&lease(33)));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_crash_leaves_the_log_and_the_next_start_replays_it() {
        let store = Store::in_memory();
        let dir = scratch("crash");
        let w = LeaseWriter::spawn(store.clone(), dir.clone());
        for n in 1..=20 {
            w.write(lease(n)).await.unwrap().unwrap();
        }
        w.sync().await;
        // Newer states of the same addresses, synced to the log but never folded: the
        // writer is forgotten without its shutdown sync, as a crash would.
        let mut newer = lease(3);
        newer.state = LeaseState::Released;
        let mut renewed = lease(30);
        renewed.expires = 99_999;
        for l in [newer.clone(), renewed.clone(), lease(31)] {
            w.write(l).await.unwrap().unwrap();
        }
        std::mem::forget(w);
        // A torn record at the tail, as a crash in the middle of an append leaves.
        let (_, path) = log::segments(&dir).unwrap().pop().unwrap();
        let mut torn = std::fs::read(&path).unwrap();
        log::encode(&mut torn, 1_000_000, b"torn");
        torn.truncate(torn.len() - 3);
        std::fs::write(&path, &torn).unwrap();

        let (leases, skipped) = load(&store, &dir);
        assert_eq!((leases.len(), skipped), (22, 0));
        assert!(leases.contains(&newer) && leases.contains(&renewed));
        assert!(!leases.contains(&lease(3)), "the log's newer state wins");
        // The next writer folds the log and numbers on above it.
        let w = LeaseWriter::spawn(store.clone(), dir.clone());
        let mut later = lease(3);
        later.expires = 5;
        w.write(later.clone()).await.unwrap().unwrap();
        let (leases, _) = load(&store, &dir);
        assert!(leases.contains(&later) && leases.contains(&renewed));
        w.sync().await;
        let (leases, _) = load(&store, &dir);
        assert_eq!(leases.len(), 22);
        assert!(leases.contains(&later));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn full_segments_are_folded_while_writes_go_on() {
        let store = Store::in_memory();
        let dir = scratch("fold");
        let w = LeaseWriter::spawn(store.clone(), dir.clone());
        // Enough records for a few segments (about 80 bytes each).
        let waits: Vec<_> = (0..160_000u32)
            .map(|n| {
                let mut l = lease(1);
                l.ip = Ipv4Addr::from(0xc612_0000 + (n % 60_000));
                l.expires = u64::from(n);
                w.write(l)
            })
            .collect();
        for r in waits {
            r.await.unwrap().unwrap();
        }
        // (Not read while folds may be running: a start reads before writing.)
        w.sync().await;
        assert!(log::segments(&dir).unwrap().is_empty());
        let (leases, _) = load(&store, &dir);
        assert_eq!(leases.len(), 60_000);
        assert!(leases.iter().any(|l| l.expires == 159_999));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
