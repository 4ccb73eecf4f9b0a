//! Client onboarding state: DHCP, TFTP and HTTP report what a client did, by MAC, through
//! [`Clients::record`]; each client gets a timeline and a state (discovered → pxe_booted →
//! installing → installed → onboarded, or failed), persisted in the store.
use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    net::Ipv4Addr,
    sync::Arc,
    sync::Mutex,
    time::Duration,
};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{clock, hosts::Proof, mac::Mac, store::Store};

/// One row per client: MAC text → JSON of its [`ClientRecord`].
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");

/// Timeline entries kept per client; older ones are dropped first, so a client that
/// heartbeats for months cannot grow its record without bound.
pub const TIMELINE_LIMIT: usize = 200;

/// Clients remembered at most. Heartbeats are unauthenticated, so without a bound anyone
/// on the LAN could grow the store with made-up MACs; past it, new MACs are not recorded.
pub const CLIENT_LIMIT: usize = 65_536;

/// Why client state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum ClientsError {
    #[error("client store")]
    Store {
        #[source]
        source: Box<redb::Error>,
    },
    #[error("client record `{key}` in the store is not valid")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl<E: Into<redb::Error>> From<E> for ClientsError {
    fn from(e: E) -> Self {
        Self::Store {
            source: Box::new(e.into()),
        }
    }
}

/// Something a client did that moves its onboarding along.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClientEvent {
    /// A DHCPDISCOVER (or proxy request) arrived; `arch` is option 93 when sent.
    Discover {
        #[serde(default)]
        arch: Option<u16>,
    },
    /// An address was leased (direct mode).
    Leased { ip: Ipv4Addr },
    /// A boot file was fetched over TFTP or HTTP.
    BootFile { path: String },
    /// A kernel or initrd was fetched.
    Kernel { path: String },
    /// A seed (cloud-init, answer file, ...) was fetched.
    Seed { path: String },
    /// An installed host network-booted and its boot script (`path`) sent it to its
    /// own disk.
    LocalBoot { path: String },
    /// The client POSTed a heartbeat.
    Heartbeat {
        phase: String,
        #[serde(default)]
        message: Option<String>,
        /// The address the client says it has (informational: it never decides who
        /// owns a seed).
        #[serde(default)]
        ip: Option<Ipv4Addr>,
        /// What the heartbeat's install token proved: only a verified one moves a host
        /// with an install; a refused one is kept in the timeline and moves nothing.
        #[serde(default)]
        proof: Proof,
        /// An installer's progress: bytes written of the total.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        progress: Option<Progress>,
    },
    /// Something the client asked for failed: a boot file TFTP or HTTP could not serve, a
    /// seed refused to its address, an offer it never took. Recorded only for clients
    /// already seen (a failure never creates a record); repeats fold into one entry.
    Failure {
        /// Where in the chain.
        stage: Stage,
        /// What it asked for (a path), or what it was offered.
        what: String,
        /// Why, in a word: `not_found`, `denied`, `forbidden`, `busy`, `timeout`,
        /// `unanswered`, `error`, `bad_request`, `render_failed`.
        reason: String,
        /// How many times in a row.
        #[serde(default = "one")]
        times: u32,
    },
}

fn one() -> u32 {
    1
}

/// Longest `what` of a failure kept, in bytes: paths come from the LAN.
pub const FAILURE_WHAT_MAX: usize = 160;

/// Failure entries kept per client: past it the oldest failure goes, so a stranger
/// asking for made-up paths from a client's address cannot push its real events out.
pub const FAILURES_KEPT: usize = 24;

/// A failure equal to one of this many newest entries folds into it (counted, moved
/// last): a firmware retrying DHCP → TFTP adds one failure, not one per round.
const FOLD_WINDOW: usize = 16;

impl ClientEvent {
    /// A failure of `what` at `stage` for `reason`, `what` cut to [`FAILURE_WHAT_MAX`].
    pub fn failure(stage: Stage, what: &str, reason: &str) -> Self {
        let mut end = what.len().min(FAILURE_WHAT_MAX);
        while !what.is_char_boundary(end) {
            end -= 1;
        }
        Self::Failure {
            stage,
            what: what[..end].to_owned(),
            reason: reason.to_owned(),
            times: 1,
        }
    }

    /// The stage of the boot chain this event belongs to. Paths over HTTP start with
    /// `/`; TFTP ones are relative to the TFTP root.
    pub fn stage(&self) -> Stage {
        let by_path = |p: &str| {
            if p.starts_with('/') {
                Stage::Http
            } else {
                Stage::Tftp
            }
        };
        match self {
            Self::Discover { .. } | Self::Leased { .. } => Stage::Dhcp,
            Self::BootFile { path } | Self::Kernel { path } => by_path(path),
            Self::Seed { .. } => Stage::Seed,
            // Sent to its own disk: the network boot's last step.
            Self::LocalBoot { path } => by_path(path),
            // The installer's own reports (`installing`, `installed`), else the booted
            // system's.
            Self::Heartbeat { phase, .. } if phase.starts_with("install") => Stage::Installer,
            Self::Heartbeat { .. } => Stage::Heartbeat,
            Self::Failure { stage, .. } => *stage,
        }
    }

    pub fn is_failure(&self) -> bool {
        matches!(self, Self::Failure { .. })
    }

    /// The same failure (what, where, why), whatever the count.
    fn same_failure(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Self::Failure {
                    stage,
                    what,
                    reason,
                    ..
                },
                Self::Failure {
                    stage: s,
                    what: w,
                    reason: r,
                    ..
                },
            ) => stage == s && what == w && reason == r,
            _ => false,
        }
    }
}

/// The steps of a network boot, in order, as the fleet view and `clients watch` show
/// them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Dhcp,
    Tftp,
    Http,
    Seed,
    Installer,
    Heartbeat,
}

/// How far an image install got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Bytes written to the disk.
    pub written: u64,
    /// Bytes of the whole image, when known.
    #[serde(default)]
    pub total: Option<u64>,
}

/// Where a client is in its onboarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientState {
    Discovered,
    PxeBooted,
    Installing,
    Installed,
    Onboarded,
    Failed,
}

impl ClientState {
    pub const ALL: [ClientState; 6] = [
        Self::Discovered,
        Self::PxeBooted,
        Self::Installing,
        Self::Installed,
        Self::Onboarded,
        Self::Failed,
    ];

    /// The snake_case name used in JSON, heartbeat phases and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Discovered => "discovered",
            Self::PxeBooted => "pxe_booted",
            Self::Installing => "installing",
            Self::Installed => "installed",
            Self::Onboarded => "onboarded",
            Self::Failed => "failed",
        }
    }

    /// The state a heartbeat phase names, if it names one.
    pub fn from_phase(phase: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.label() == phase)
    }

    /// The state after `event`. Events seen on the wire only move a client forward
    /// (a reboot into the installed system DHCPs again, which must not undo
    /// `installed`); a heartbeat naming a state sets it, so an installer can report
    /// `failed` or a reinstall can start over at `installing`.
    fn after(current: Option<Self>, event: &ClientEvent) -> Option<Self> {
        let implied = match event {
            ClientEvent::Discover { .. } | ClientEvent::Leased { .. } => Self::Discovered,
            ClientEvent::BootFile { .. } | ClientEvent::Kernel { .. } => Self::PxeBooted,
            ClientEvent::Seed { .. } => Self::Installing,
            // The disk boots: what it reports next says how far it got.
            ClientEvent::LocalBoot { .. } => return current,
            ClientEvent::Heartbeat { proof, .. } if *proof == Proof::Refused => {
                return current;
            }
            ClientEvent::Heartbeat { phase, .. } => {
                return Self::from_phase(phase).or(current);
            }
            // A failure says where it stopped, not where it is.
            ClientEvent::Failure { .. } => return current,
        };
        match current {
            // A failed client that boots again is trying again.
            Some(Self::Failed) => Some(implied),
            Some(s) if s >= implied => Some(s),
            _ => Some(implied),
        }
    }
}

/// One entry of a client's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: ClientEvent,
}

/// Everything known about one client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientRecord {
    pub mac: Mac,
    pub state: ClientState,
    /// The address its last heartbeat reported.
    #[serde(default)]
    pub reported_ip: Option<Ipv4Addr>,
    /// The image install under way: the latest progress heartbeat (its timeline keeps
    /// one entry for the whole run, updated in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<TimelineEntry>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Oldest first, at most [`TIMELINE_LIMIT`].
    pub timeline: VecDeque<TimelineEntry>,
}

impl ClientRecord {
    /// The stage of its last step forward (failures skipped), and since when it has been
    /// in it: the first of the newest run of steps in that stage.
    pub fn stage(&self) -> Option<(Stage, u64)> {
        let mut steps = self.timeline.iter().rev().filter(|e| !e.event.is_failure());
        let last = steps.next()?;
        let stage = last.event.stage();
        let since = steps
            .take_while(|e| e.event.stage() == stage)
            .last()
            .unwrap_or(last)
            .at_ms;
        Some((stage, since))
    }

    /// Why it stopped: its newest event when that is a failure (nothing went forward
    /// since). A retrying firmware's repeated failure folds last, so it stays the answer.
    pub fn stopped(&self) -> Option<&TimelineEntry> {
        self.timeline.back().filter(|e| e.event.is_failure())
    }

    /// The architecture its firmware sent (option 93) in its newest DISCOVER that had one.
    pub fn arch(&self) -> Option<u16> {
        self.timeline.iter().rev().find_map(|e| match e.event {
            ClientEvent::Discover { arch } => arch,
            _ => None,
        })
    }
}

#[derive(Default)]
struct Inner {
    records: BTreeMap<Mac, ClientRecord>,
    /// Clients changed since the last [`Clients::flush`].
    dirty: BTreeSet<Mac>,
}

/// The event sink: DHCP, TFTP and HTTP record what clients do here; each event lands in
/// the client's record and on a broadcast the host life cycle follows. Cheap to call
/// from any task: [`Clients::record`] only touches memory; [`flush_loop`] writes changed
/// records to the store in one transaction per second, so a burst of DHCP traffic never
/// waits on fsync.
pub struct Clients {
    inner: Mutex<Inner>,
    store: Option<Store>,
    /// Every recorded event, for the host life cycle ([`Clients::subscribe`]).
    events: tokio::sync::broadcast::Sender<(Mac, ClientEvent)>,
}

/// Events buffered for a subscriber that falls behind.
const EVENT_BUFFER: usize = 1024;

impl Clients {
    /// Client state in memory only (tests, tools).
    pub fn in_memory() -> Self {
        Self::with(None, BTreeMap::new())
    }

    fn with(store: Option<Store>, records: BTreeMap<Mac, ClientRecord>) -> Self {
        Self {
            inner: Mutex::new(Inner {
                records,
                dirty: BTreeSet::new(),
            }),
            store,
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
        }
    }

    /// Client state backed by `store`, loading what an earlier run saved.
    pub fn open(store: Store) -> Result<Self, ClientsError> {
        let mut records = BTreeMap::new();
        let txn = store.db().begin_read()?;
        match txn.open_table(CLIENTS) {
            Ok(table) => {
                for row in table.iter()? {
                    let (key, value) = row?;
                    let record: ClientRecord =
                        serde_json::from_slice(value.value()).map_err(|source| {
                            ClientsError::Decode {
                                key: key.value().to_owned(),
                                source,
                            }
                        })?;
                    records.insert(record.mac, record);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Self::with(Some(store), records))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `mac` did `event`.
    pub fn record(&self, mac: Mac, event: ClientEvent) {
        let at_ms = clock::now_ms();
        let mut inner = self.lock();
        let known = inner.records.contains_key(&mac);
        if event.is_failure() && !known {
            // Failures come from addresses and paths anyone on the LAN picks: they never
            // make a record, so they cannot fill the table.
            debug!(%mac, ?event, "failure of a client never seen; not recorded");
            return;
        }
        if inner.records.len() >= CLIENT_LIMIT && !known {
            warn!(%mac, limit = CLIENT_LIMIT, ?event, "client table full; event not recorded");
            return;
        }
        let existing = inner.records.get(&mac).map(|r| r.state);
        let state = ClientState::after(existing, &event).unwrap_or(ClientState::Discovered);
        let record = inner.records.entry(mac).or_insert_with(|| ClientRecord {
            mac,
            state,
            reported_ip: None,
            progress: None,
            first_seen_ms: at_ms,
            last_seen_ms: at_ms,
            timeline: VecDeque::new(),
        });
        if record.state != state {
            debug!(%mac, from = record.state.label(), to = state.label(), "client state");
        }
        record.state = state;
        record.last_seen_ms = at_ms;
        // The address it leases is not kept here: the lease table knows who holds an
        // address now (a record would keep it past a release, a decline or an expiry).
        if let ClientEvent::Heartbeat {
            ip: Some(ip),
            proof,
            ..
        } = &event
            && *proof != Proof::Refused
        {
            record.reported_ip = Some(*ip);
        }
        let progress = matches!(
            &event,
            ClientEvent::Heartbeat { progress: Some(_), proof, .. } if *proof != Proof::Refused
        );
        if progress {
            record.progress = Some(TimelineEntry {
                at_ms,
                event: event.clone(),
            });
        } else if matches!(&event, ClientEvent::Heartbeat { phase, proof, .. }
            if *proof != Proof::Refused && phase != "installing")
        {
            record.progress = None;
        }
        debug!(%mac, ?event, "client event");
        let kept = push(&mut record.timeline, at_ms, event, progress);
        // No subscriber (tests, tools) is not an error.
        let _ = self.events.send((mac, kept));
        inner.dirty.insert(mac);
    }

    /// Every event recorded from now on (the host state machines follow this stream).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(Mac, ClientEvent)> {
        self.events.subscribe()
    }

    /// Events recorded for `mac`, oldest first.
    pub fn events(&self, mac: Mac) -> Vec<ClientEvent> {
        self.lock().records.get(&mac).map_or_else(Vec::new, |r| {
            r.timeline.iter().map(|e| e.event.clone()).collect()
        })
    }

    /// The record of `mac`.
    pub fn get(&self, mac: Mac) -> Option<ClientRecord> {
        self.lock().records.get(&mac).cloned()
    }

    /// Every record, by MAC.
    pub fn all(&self) -> Vec<ClientRecord> {
        self.lock().records.values().cloned().collect()
    }

    /// The state of `mac`, if it was ever seen.
    pub fn state(&self, mac: Mac) -> Option<ClientState> {
        self.lock().records.get(&mac).map(|r| r.state)
    }

    /// How many clients are in each state (every state listed, zeros included).
    pub fn counts(&self) -> Vec<(ClientState, usize)> {
        let inner = self.lock();
        ClientState::ALL
            .into_iter()
            .map(|s| (s, inner.records.values().filter(|r| r.state == s).count()))
            .collect()
    }

    /// Writes the records changed since the last flush, in one transaction.
    pub fn flush(&self) -> Result<(), ClientsError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let batch: Vec<(String, Vec<u8>)> = {
            let mut inner = self.lock();
            let dirty = std::mem::take(&mut inner.dirty);
            dirty
                .into_iter()
                .filter_map(|mac| {
                    let r = inner.records.get(&mac)?;
                    // A record of plain data always serialises.
                    Some((mac.to_string(), serde_json::to_vec(r).unwrap_or_default()))
                })
                .collect()
        };
        if batch.is_empty() {
            return Ok(());
        }
        let result = (|| -> Result<(), ClientsError> {
            let txn = store.db().begin_write()?;
            {
                let mut table = txn.open_table(CLIENTS)?;
                for (key, value) in &batch {
                    table.insert(key.as_str(), value.as_slice())?;
                }
            }
            txn.commit()?;
            Ok(())
        })();
        if result.is_err() {
            // Try again next time rather than lose the change.
            let mut inner = self.lock();
            for (key, _) in &batch {
                if let Ok(mac) = key.parse() {
                    inner.dirty.insert(mac);
                }
            }
        }
        result
    }
}

/// Appends `event` to `timeline`, bounded: a failure equal to a recent one folds into it
/// (counted, moved last), failures beyond [`FAILURES_KEPT`] drop the oldest failure, a
/// `progress` beat replaces the progress beat before it (an install that reports every
/// few seconds for an hour does not push the rest of its history out), and past
/// [`TIMELINE_LIMIT`] the oldest entry goes. Returns the event as kept.
fn push(
    timeline: &mut VecDeque<TimelineEntry>,
    at_ms: u64,
    mut event: ClientEvent,
    progress: bool,
) -> ClientEvent {
    let last_is_progress = timeline.back().is_some_and(|last| {
        matches!(
            &last.event,
            ClientEvent::Heartbeat {
                progress: Some(_),
                ..
            }
        )
    });
    if progress && last_is_progress {
        timeline.pop_back();
    }
    if event.is_failure() {
        let recent = timeline.len().saturating_sub(FOLD_WINDOW)..timeline.len();
        let same = recent
            .rev()
            .find(|&i| timeline[i].event.same_failure(&event));
        if let Some(old) = same.and_then(|i| timeline.remove(i)) {
            event = old.event;
            if let ClientEvent::Failure { times, .. } = &mut event {
                *times = times.saturating_add(1);
            }
        } else if timeline.iter().filter(|e| e.event.is_failure()).count() >= FAILURES_KEPT
            && let Some(oldest) = timeline.iter().position(|e| e.event.is_failure())
        {
            timeline.remove(oldest);
        }
    }
    if timeline.len() >= TIMELINE_LIMIT {
        timeline.pop_front();
    }
    timeline.push_back(TimelineEntry {
        at_ms,
        event: event.clone(),
    });
    event
}

/// Flushes `clients` every second until `token` fires, then once more.
pub async fn flush_loop(clients: Arc<Clients>, token: CancellationToken) {
    let flush = |clients: Arc<Clients>| async move {
        let result = tokio::task::spawn_blocking(move || clients.flush()).await;
        if let Ok(Err(err)) = result {
            warn!(error = %crate::error_chain(&err), "saving client state failed; will retry");
        }
    };
    loop {
        tokio::select! {
            _ = token.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_secs(1)) => flush(clients.clone()).await,
        }
    }
    flush(clients).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([2, 0, 0, 0, 0, 1]);

    fn heartbeat(phase: &str) -> ClientEvent {
        ClientEvent::Heartbeat {
            phase: phase.into(),
            message: None,
            ip: None,
            proof: Proof::Anonymous,
            progress: None,
        }
    }

    fn beat(proof: Proof, written: Option<u64>) -> ClientEvent {
        ClientEvent::Heartbeat {
            phase: "installing".into(),
            message: None,
            ip: None,
            proof,
            progress: written.map(|written| Progress {
                written,
                total: Some(1000),
            }),
        }
    }

    #[test]
    fn progress_is_one_entry_and_refused_beats_move_nothing() {
        let c = Clients::in_memory();
        c.record(
            MAC,
            ClientEvent::Seed {
                path: "/install/x".into(),
            },
        );
        c.record(MAC, beat(Proof::Verified, None));
        for w in [100, 200, 300] {
            c.record(MAC, beat(Proof::Verified, Some(w)));
        }
        let r = c.get(MAC).unwrap();
        assert_eq!(r.timeline.len(), 3, "{:?}", r.timeline);
        let Some(TimelineEntry {
            event: ClientEvent::Heartbeat {
                progress: Some(p), ..
            },
            ..
        }) = r.progress
        else {
            panic!("{:?}", r.progress);
        };
        assert_eq!(p.written, 300);
        // Someone else's beats, without the token: in the timeline, nothing moves.
        for phase in ["failed", "installed", "onboarded"] {
            let mut e = heartbeat(phase);
            if let ClientEvent::Heartbeat { proof, .. } = &mut e {
                *proof = Proof::Refused;
            }
            c.record(MAC, e);
        }
        let r = c.get(MAC).unwrap();
        assert_eq!(r.state, ClientState::Installing);
        assert!(r.progress.is_some());
        assert_eq!(r.timeline.len(), 6);
        let mut installed = heartbeat("installed");
        if let ClientEvent::Heartbeat { proof, .. } = &mut installed {
            *proof = Proof::Verified;
        }
        c.record(MAC, installed);
        let r = c.get(MAC).unwrap();
        assert_eq!(r.state, ClientState::Installed);
        assert!(r.progress.is_none());
    }

    #[test]
    fn moves_forward_and_heartbeats_set_state() {
        let c = Clients::in_memory();
        c.record(MAC, ClientEvent::Discover { arch: Some(7) });
        assert_eq!(c.state(MAC), Some(ClientState::Discovered));
        c.record(
            MAC,
            ClientEvent::BootFile {
                path: "x.efi".into(),
            },
        );
        assert_eq!(c.state(MAC), Some(ClientState::PxeBooted));
        c.record(MAC, ClientEvent::Seed { path: "u".into() });
        c.record(MAC, heartbeat("installed"));
        assert_eq!(c.state(MAC), Some(ClientState::Installed));
        // The installed system DHCPs again: still installed.
        c.record(MAC, ClientEvent::Discover { arch: None });
        assert_eq!(c.state(MAC), Some(ClientState::Installed));
        c.record(MAC, heartbeat("alive"));
        assert_eq!(c.state(MAC), Some(ClientState::Installed));
        c.record(MAC, heartbeat("failed"));
        assert_eq!(c.state(MAC), Some(ClientState::Failed));
        c.record(MAC, ClientEvent::Kernel { path: "k".into() });
        assert_eq!(c.state(MAC), Some(ClientState::PxeBooted));
        assert_eq!(c.events(MAC).len(), 8);
    }

    #[test]
    fn timeline_is_bounded() {
        let c = Clients::in_memory();
        c.record(
            MAC,
            ClientEvent::Leased {
                ip: Ipv4Addr::new(198, 18, 0, 100),
            },
        );
        for _ in 0..TIMELINE_LIMIT + 10 {
            c.record(MAC, heartbeat("alive"));
        }
        assert_eq!(c.events(MAC).len(), TIMELINE_LIMIT);
    }

    fn failure(what: &str) -> ClientEvent {
        ClientEvent::failure(Stage::Tftp, what, "not_found")
    }

    #[test]
    fn failures_fold_are_bounded_and_never_create_a_record() {
        let c = Clients::in_memory();
        c.record(MAC, failure("shimx64.efi"));
        assert_eq!(c.get(MAC), None, "a failure made a record");
        c.record(MAC, ClientEvent::Discover { arch: Some(7) });
        let mut rx = c.subscribe();
        // A firmware retrying: DHCP, then the same TFTP failure, three rounds.
        for _ in 0..3 {
            c.record(
                MAC,
                ClientEvent::Leased {
                    ip: Ipv4Addr::new(198, 18, 0, 9),
                },
            );
            c.record(MAC, failure("shimx64.efi"));
        }
        let r = c.get(MAC).unwrap();
        let failures: Vec<_> = r.timeline.iter().filter(|e| e.event.is_failure()).collect();
        assert_eq!(failures.len(), 1, "{:?}", r.timeline);
        assert_eq!(
            r.timeline.back().unwrap().event,
            ClientEvent::Failure {
                stage: Stage::Tftp,
                what: "shimx64.efi".into(),
                reason: "not_found".into(),
                times: 3,
            }
        );
        assert_eq!(
            r.state,
            ClientState::Discovered,
            "a failure moved the state"
        );
        // The broadcast carries the count.
        let mut last = None;
        while let Ok((_, e)) = rx.try_recv() {
            last = Some(e);
        }
        assert!(
            matches!(last, Some(ClientEvent::Failure { times: 3, .. })),
            "{last:?}"
        );
        // Made-up paths: at most FAILURES_KEPT failures, the real events stay.
        for i in 0..100 {
            c.record(MAC, failure(&format!("x/{i}/{}", "y".repeat(300))));
        }
        let r = c.get(MAC).unwrap();
        let kept: Vec<_> = r.timeline.iter().filter(|e| e.event.is_failure()).collect();
        assert_eq!(kept.len(), FAILURES_KEPT);
        assert!(
            r.timeline
                .iter()
                .any(|e| e.event == ClientEvent::Discover { arch: Some(7) })
        );
        let ClientEvent::Failure { what, .. } = &r.timeline.back().unwrap().event else {
            panic!()
        };
        assert_eq!(what.len(), FAILURE_WHAT_MAX);
        assert!(what.starts_with("x/99/"));
    }

    #[test]
    fn stage_since_and_why_it_stopped() {
        let entry = |at_ms, event| TimelineEntry { at_ms, event };
        let mut r = ClientRecord {
            mac: MAC,
            state: ClientState::Discovered,
            reported_ip: None,
            progress: None,
            first_seen_ms: 1,
            last_seen_ms: 1,
            timeline: VecDeque::new(),
        };
        assert_eq!((r.stage(), r.stopped(), r.arch()), (None, None, None));
        r.timeline.extend([
            entry(1, ClientEvent::Discover { arch: Some(11) }),
            entry(
                2,
                ClientEvent::Leased {
                    ip: Ipv4Addr::new(198, 18, 0, 9),
                },
            ),
            entry(3, failure("grubaa64.efi")),
        ]);
        // Still in DHCP since the DISCOVER; stopped on the TFTP failure.
        assert_eq!(r.stage(), Some((Stage::Dhcp, 1)));
        assert_eq!(r.stopped().map(|e| e.at_ms), Some(3));
        assert_eq!(r.arch(), Some(11));
        r.timeline.extend([
            entry(
                4,
                ClientEvent::BootFile {
                    path: "grubaa64.efi".into(),
                },
            ),
            entry(
                5,
                ClientEvent::BootFile {
                    path: "grub/grub.cfg".into(),
                },
            ),
        ]);
        // A step forward: the failure is history, not the reason.
        assert_eq!(r.stage(), Some((Stage::Tftp, 4)));
        assert_eq!(r.stopped(), None);
    }

    #[test]
    fn stages() {
        let path = |p: &str| ClientEvent::BootFile { path: p.into() }.stage();
        assert_eq!(path("shimx64.efi"), Stage::Tftp);
        assert_eq!(path("/ipxe/x"), Stage::Http);
        assert_eq!(heartbeat("installing").stage(), Stage::Installer);
        assert_eq!(heartbeat("onboarded").stage(), Stage::Heartbeat);
        assert_eq!(failure("a").stage(), Stage::Tftp);
        let json = serde_json::to_string(&failure("a")).unwrap();
        assert_eq!(
            json,
            r#"{"event":"failure","stage":"tftp","what":"a","reason":"not_found","times":1}"#
        );
    }

    #[test]
    fn persists_through_the_store() {
        let store = Store::in_memory();
        let c = Clients::open(store.clone()).unwrap();
        c.record(MAC, ClientEvent::Discover { arch: None });
        c.record(MAC, heartbeat("onboarded"));
        c.flush().unwrap();
        drop(c);
        let again = Clients::open(store).unwrap();
        let r = again.get(MAC).unwrap();
        assert_eq!(r.state, ClientState::Onboarded);
        assert_eq!(r.timeline.len(), 2);
        let counts = again.counts();
        assert!(counts.contains(&(ClientState::Onboarded, 1)));
    }
}
