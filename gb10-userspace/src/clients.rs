//! Client onboarding state: DHCP, TFTP and HTTP report what a client did, by MAC, through
//! [`Clients::record`]; each client gets a timeline and a state (discovered → pxe_booted →
//! installing → installed → onboarded, or failed), persisted in the store.
use std::{
    collections::{BTreeSet, VecDeque},
    net::Ipv4Addr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{bounded::Bounded, clock, config::ClientsConfig, hosts::Proof, mac::Mac, store::Store};

/// One row per client: MAC text → JSON of its [`ClientRecord`].
const CLIENTS: TableDefinition<&str, &[u8]> = TableDefinition::new("clients");

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

/// Heartbeats that moved nothing (a stranger's, or without the install's token) kept per
/// client: past it the oldest of them goes. Anyone on the LAN can post them in any
/// client's name, each a different phase, so they get a share of the timeline of their
/// own instead of pushing the client's real events out.
pub const UNPROVEN_KEPT: usize = 8;

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
            // Sent to its own disk: the network boot's last step, by DHCP (`dhcp: …`) or
            // by the boot loader's script.
            Self::LocalBoot { path } if path.starts_with("dhcp:") => Stage::Dhcp,
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

    /// A heartbeat that moved nothing (a refused or a stranger's): kept in the timeline
    /// for the operator, never the client's stage, nor what hides why it stopped.
    fn moved_nothing(&self) -> bool {
        matches!(self, Self::Heartbeat { proof, .. } if !proof.moves())
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

/// An install's progress at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProgressMark {
    pub at_ms: u64,
    pub written: u64,
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
            ClientEvent::Heartbeat { proof, .. } if !proof.moves() => {
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
    /// Unix time in milliseconds (of the last repeat).
    pub at_ms: u64,
    #[serde(flatten)]
    pub event: ClientEvent,
    /// How many times more the same heartbeat came right after this one (folded into
    /// this entry, so a client that heartbeats for months keeps one entry for it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub repeats: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
    /// Where that install's progress started (its first progress beat): how fast it
    /// writes, over the whole run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_start: Option<ProgressMark>,
    /// Until when (Unix ms) the last lease DHCP gave it runs: while it does, the record
    /// is never forgotten to make room. Only that: who holds an address now is the
    /// lease table's to say (a release or a move ends a lease before this time).
    #[serde(default)]
    pub leased_until_ms: Option<u64>,
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Oldest first, at most `[clients] timeline` entries.
    pub timeline: VecDeque<TimelineEntry>,
}

impl ClientRecord {
    /// The stage of its last step forward (failures skipped), and since when it has been
    /// in it: the first of the newest run of steps in that stage.
    pub fn stage(&self) -> Option<(Stage, u64)> {
        let mut steps = self
            .timeline
            .iter()
            .rev()
            .filter(|e| !e.event.is_failure() && !e.event.moved_nothing());
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
        self.timeline
            .iter()
            .rev()
            .find(|e| !e.event.moved_nothing())
            .filter(|e| e.event.is_failure())
    }

    /// The architecture its firmware sent (option 93) in its newest DISCOVER that had one.
    pub fn arch(&self) -> Option<u16> {
        self.timeline.iter().rev().find_map(|e| match e.event {
            ClientEvent::Discover { arch } => arch,
            _ => None,
        })
    }

    fn new(mac: Mac, at_ms: u64) -> Self {
        Self {
            mac,
            state: ClientState::Discovered,
            reported_ip: None,
            progress: None,
            progress_start: None,
            leased_until_ms: None,
            first_seen_ms: at_ms,
            last_seen_ms: at_ms,
            timeline: VecDeque::new(),
        }
    }

    /// Applies `event` at `at_ms`, keeping at most `timeline` entries. Returns the event
    /// as kept (a repeated failure carries its count).
    fn apply(
        &mut self,
        event: ClientEvent,
        at_ms: u64,
        lease_ms: u64,
        timeline: usize,
    ) -> ClientEvent {
        let state = ClientState::after(Some(self.state), &event).unwrap_or(ClientState::Discovered);
        if self.state != state {
            debug!(mac = %self.mac, from = self.state.label(), to = state.label(), "client state");
        }
        self.state = state;
        self.last_seen_ms = at_ms;
        // The address it leases is not kept here: the lease table knows who holds an
        // address now (a record would keep it past a release, a decline or an expiry).
        // Only how long the record itself must stay.
        match &event {
            ClientEvent::Leased { .. } => self.leased_until_ms = Some(at_ms + lease_ms),
            ClientEvent::Heartbeat {
                ip: Some(ip),
                proof,
                ..
            } if proof.moves() => self.reported_ip = Some(*ip),
            _ => {}
        }
        let beat = match &event {
            ClientEvent::Heartbeat {
                progress: Some(p),
                proof,
                ..
            } if proof.moves() => Some(*p),
            _ => None,
        };
        let progress = beat.is_some();
        if let Some(p) = beat {
            // A run starts at its first beat, and again when the count goes back (the
            // installer started over).
            let before = match self.progress.as_ref().map(|e| &e.event) {
                Some(ClientEvent::Heartbeat {
                    progress: Some(b), ..
                }) => Some(b.written),
                _ => None,
            };
            if self.progress_start.is_none() || before.is_none_or(|b| p.written < b) {
                self.progress_start = Some(ProgressMark {
                    at_ms,
                    written: p.written,
                });
            }
            self.progress = Some(TimelineEntry {
                at_ms,
                event: event.clone(),
                repeats: 0,
            });
        } else if matches!(&event, ClientEvent::Heartbeat { phase, proof, .. }
            if proof.moves() && phase != "installing")
        {
            self.progress = None;
            self.progress_start = None;
        }
        push(&mut self.timeline, at_ms, event, progress, timeline)
    }

    /// Whether a lease DHCP gave it still runs at `now_ms`.
    fn holds_lease(&self, now_ms: u64) -> bool {
        self.leased_until_ms.is_some_and(|t| t > now_ms)
    }
}

/// What became of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// In the client's record (saved with the next flush).
    Record,
    /// A heartbeat from a MAC nobody knows, kept in memory among the strays.
    Stray,
    /// Not kept: a failure of a client never seen, a heartbeat from a MAC nobody knows
    /// with `[clients] strays = 0`, or the table is full of records that must stay.
    Refused,
}

struct Inner {
    records: Bounded<Mac, ClientRecord>,
    /// Heartbeats from MACs that are not hosts, hold no lease and were never seen
    /// booting: memory only, least recently heard forgotten first.
    strays: Bounded<Mac, ClientRecord>,
    /// Clients changed since the last [`Clients::flush`].
    dirty: BTreeSet<Mac>,
    /// Clients forgotten since the last flush, to delete from the store.
    gone: BTreeSet<Mac>,
}

/// Says whether a MAC is a host (inventory or API) whose record must never be forgotten.
pub type Keep = Box<dyn Fn(Mac) -> bool + Send + Sync>;

/// The event sink: DHCP, TFTP and HTTP record what clients do here; each event lands in
/// the client's record and on a broadcast the host life cycle follows. Cheap to call
/// from any task: [`Clients::record`] only touches memory; [`flush_loop`] writes changed
/// records to the store in one transaction per second, so a burst of DHCP traffic or a
/// heartbeat flood never waits on fsync.
///
/// Anyone on the LAN can make up MACs, so the records are bounded (`[clients]
/// max_records`): past the bound the least recently seen client that is neither a host
/// nor holding a live lease is forgotten; hosts and lease holders are always kept (their
/// number is bounded by the inventory and the pools).
pub struct Clients {
    inner: Mutex<Inner>,
    store: Option<Store>,
    limits: ClientsConfig,
    /// The DHCP lease time, for how long a `leased` record is kept.
    lease_ms: u64,
    /// Which MACs are hosts; until set (start-up), nothing is forgotten.
    keep: OnceLock<Keep>,
    /// Every recorded event, for the host life cycle ([`Clients::subscribe`]).
    events: tokio::sync::broadcast::Sender<(Mac, ClientEvent)>,
}

/// Events buffered for a subscriber that falls behind.
const EVENT_BUFFER: usize = 1024;

impl Clients {
    /// Client state in memory only (tests, tools), with the default limits.
    pub fn in_memory() -> Self {
        Self::with(
            None,
            Vec::new(),
            ClientsConfig::default(),
            Duration::from_secs(12 * 3600),
            0,
        )
    }

    fn with(
        store: Option<Store>,
        mut saved: Vec<ClientRecord>,
        limits: ClientsConfig,
        lease_time: Duration,
        holders: usize,
    ) -> Self {
        // Room for `max_records` others beside every client that can hold a lease: a
        // pool larger than the bound never leaves a new machine's DISCOVER unrecorded
        // because lease holders (who must stay) fill the table.
        let mut records = Bounded::new(limits.max_records.saturating_add(holders));
        // Oldest first, so the least recently seen go first once the keep rule is known.
        saved.sort_by_key(|r| r.last_seen_ms);
        for r in saved {
            let _ = records.insert(r.mac, r, |_, _| true, true);
        }
        Self {
            inner: Mutex::new(Inner {
                records,
                strays: Bounded::new(limits.strays),
                dirty: BTreeSet::new(),
                gone: BTreeSet::new(),
            }),
            store,
            limits,
            lease_ms: lease_time.as_millis() as u64,
            keep: OnceLock::new(),
            events: tokio::sync::broadcast::channel(EVENT_BUFFER).0,
        }
    }

    /// Client state backed by `store`, loading what an earlier run saved. `holders`: how
    /// many clients can hold a lease at once (the pools' addresses), kept beside
    /// `max_records` others.
    pub fn open(
        store: Store,
        limits: ClientsConfig,
        lease_time: Duration,
        holders: usize,
    ) -> Result<Self, ClientsError> {
        let mut records = Vec::new();
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
                    records.push(record);
                }
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(Self::with(
            Some(store),
            records,
            limits,
            lease_time,
            holders,
        ))
    }

    /// Sets which MACs are hosts, and forgets what an earlier run kept beyond the bound.
    pub fn keep_with(&self, keep: Keep) {
        if self.keep.set(keep).is_err() {
            warn!("client keep rule set twice; the first stays");
        }
        let now = clock::now_ms();
        let mut inner = self.lock();
        let evicted = inner.records.trim(|mac, r| self.kept(*mac, r, now));
        if !evicted.is_empty() {
            warn!(
                forgotten = evicted.len(),
                max = self.limits.max_records,
                "more client records than [clients] max_records; least recently seen forgotten"
            );
        }
        for (mac, _) in evicted {
            inner.dirty.remove(&mac);
            inner.gone.insert(mac);
        }
    }

    fn is_host(&self, mac: Mac) -> bool {
        // Before the rule is known, everyone is kept.
        self.keep.get().is_none_or(|keep| keep(mac))
    }

    fn kept(&self, mac: Mac, record: &ClientRecord, now_ms: u64) -> bool {
        record.holds_lease(now_ms) || self.is_host(mac)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `mac` did `event`.
    pub fn record(&self, mac: Mac, event: ClientEvent) -> Recorded {
        let at_ms = clock::now_ms();
        let event = self.bound(event);
        let (lease_ms, timeline) = (self.lease_ms, self.limits.timeline);
        let mut inner = self.lock();
        let recorded = if let Some(record) = inner.records.touch(&mac) {
            let kept = record.apply(event, at_ms, lease_ms, timeline);
            inner.dirty.insert(mac);
            Some((kept, Recorded::Record))
        } else if event.is_failure() {
            // Failures come from addresses and paths anyone on the LAN picks: they never
            // make a record (nor touch a stray), so they cannot fill the table.
            debug!(%mac, ?event, "failure of a client never seen; not recorded");
            None
        } else if matches!(event, ClientEvent::Heartbeat { .. }) && !self.is_host(mac) {
            // Unauthenticated and from a MAC nobody knows: never a record, never a write.
            if self.limits.strays == 0 {
                None
            } else {
                let mut stray = inner
                    .strays
                    .remove(&mac)
                    .unwrap_or_else(|| ClientRecord::new(mac, at_ms));
                let kept = stray.apply(event, at_ms, lease_ms, timeline);
                let _ = inner.strays.insert(mac, stray, |_, _| false, false);
                Some((kept, Recorded::Stray))
            }
        } else {
            // A client seen on the wire (or a host): a record, its stray past folded in.
            let mut record = inner
                .strays
                .remove(&mac)
                .unwrap_or_else(|| ClientRecord::new(mac, at_ms));
            let kept = record.apply(event, at_ms, lease_ms, timeline);
            let must = self.kept(mac, &record, at_ms);
            match inner
                .records
                .insert(mac, record, |m, r| self.kept(*m, r, at_ms), must)
            {
                Ok(evicted) => {
                    for (gone, _) in evicted {
                        debug!(mac = %gone, "client record forgotten to make room");
                        inner.dirty.remove(&gone);
                        inner.gone.insert(gone);
                    }
                    inner.gone.remove(&mac);
                    inner.dirty.insert(mac);
                    Some((kept, Recorded::Record))
                }
                Err(_) => {
                    warn!(%mac, max = self.limits.max_records, event = ?kept,
                        "client table full of hosts and lease holders; event not recorded");
                    None
                }
            }
        };
        drop(inner);
        match recorded {
            Some((kept, recorded)) => {
                debug!(%mac, event = ?kept, "client event");
                // No subscriber (tests, tools) is not an error.
                let _ = self.events.send((mac, kept));
                recorded
            }
            None => Recorded::Refused,
        }
    }

    /// `event` with its free text cut to `[clients] message_max` bytes.
    fn bound(&self, mut event: ClientEvent) -> ClientEvent {
        let max = self.limits.message_max;
        if let ClientEvent::Heartbeat {
            message: Some(m), ..
        } = &mut event
            && m.len() > max
        {
            let mut end = max.saturating_sub('…'.len_utf8());
            while !m.is_char_boundary(end) {
                end -= 1;
            }
            m.truncate(end);
            m.push('…');
        }
        event
    }

    /// Every event recorded from now on (the host state machines follow this stream).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<(Mac, ClientEvent)> {
        self.events.subscribe()
    }

    /// The record of `mac` (or what its heartbeats said, for a stray).
    pub fn get(&self, mac: Mac) -> Option<ClientRecord> {
        let inner = self.lock();
        inner
            .records
            .get(&mac)
            .or_else(|| inner.strays.get(&mac))
            .cloned()
    }

    /// Events recorded for `mac`, oldest first.
    pub fn events(&self, mac: Mac) -> Vec<ClientEvent> {
        self.get(mac).map_or_else(Vec::new, |r| {
            r.timeline.into_iter().map(|e| e.event).collect()
        })
    }

    /// Every record and stray, by MAC.
    pub fn all(&self) -> Vec<ClientRecord> {
        let inner = self.lock();
        let mut all: Vec<ClientRecord> = inner
            .records
            .values()
            .chain(inner.strays.values())
            .cloned()
            .collect();
        all.sort_by_key(|r| r.mac);
        all
    }

    /// The state of `mac`, if it was ever seen.
    pub fn state(&self, mac: Mac) -> Option<ClientState> {
        let inner = self.lock();
        inner
            .records
            .get(&mac)
            .or_else(|| inner.strays.get(&mac))
            .map(|r| r.state)
    }

    /// How many clients are in each state (every state listed, zeros included).
    pub fn counts(&self) -> Vec<(ClientState, usize)> {
        let inner = self.lock();
        let mut counts: Vec<(ClientState, usize)> =
            ClientState::ALL.into_iter().map(|s| (s, 0)).collect();
        for r in inner.records.values().chain(inner.strays.values()) {
            if let Some(c) = counts.iter_mut().find(|(s, _)| *s == r.state) {
                c.1 += 1;
            }
        }
        counts
    }

    /// Writes the records changed since the last flush and deletes the forgotten ones,
    /// in one transaction.
    pub fn flush(&self) -> Result<(), ClientsError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let (batch, gone): (Vec<(String, Vec<u8>)>, BTreeSet<Mac>) = {
            let mut inner = self.lock();
            let dirty = std::mem::take(&mut inner.dirty);
            let gone = std::mem::take(&mut inner.gone);
            let batch = dirty
                .into_iter()
                .filter_map(|mac| {
                    let r = inner.records.get(&mac)?;
                    // A record of plain data always serialises.
                    Some((mac.to_string(), serde_json::to_vec(r).unwrap_or_default()))
                })
                .collect();
            (batch, gone)
        };
        if batch.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let result = (|| -> Result<(), ClientsError> {
            let txn = store.db().begin_write()?;
            {
                let mut table = txn.open_table(CLIENTS)?;
                for (key, value) in &batch {
                    table.insert(key.as_str(), value.as_slice())?;
                }
                for mac in &gone {
                    table.remove(mac.to_string().as_str())?;
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
            for mac in gone {
                if !inner.records.contains(&mac) {
                    inner.gone.insert(mac);
                }
            }
        }
        result
    }
}

/// Appends `event` to `timeline`, bounded: a failure equal to a recent one folds into it
/// (counted, moved last), failures beyond [`FAILURES_KEPT`] drop the oldest failure, a
/// `progress` beat replaces the progress beat before it (an install that reports every
/// few seconds for an hour does not push the rest of its history out), a heartbeat equal
/// to the last entry only counts a repeat, heartbeats that moved nothing beyond
/// [`UNPROVEN_KEPT`] drop the oldest of them, and past `limit` entries the oldest goes.
/// Returns the event as kept.
fn push(
    timeline: &mut VecDeque<TimelineEntry>,
    at_ms: u64,
    mut event: ClientEvent,
    progress: bool,
    limit: usize,
) -> ClientEvent {
    if let Some(last) = timeline.back_mut()
        && matches!(event, ClientEvent::Heartbeat { .. })
        && last.event == event
    {
        last.at_ms = at_ms;
        last.repeats += 1;
        return event;
    }
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
    if event.moved_nothing()
        && timeline.iter().filter(|e| e.event.moved_nothing()).count() >= UNPROVEN_KEPT
        && let Some(oldest) = timeline.iter().position(|e| e.event.moved_nothing())
    {
        timeline.remove(oldest);
    }
    while timeline.len() >= limit.max(1) {
        timeline.pop_front();
    }
    timeline.push_back(TimelineEntry {
        at_ms,
        event: event.clone(),
        repeats: 0,
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
        // The run's start: its first beat, kept while later ones replace the entry.
        assert_eq!(r.progress_start.map(|s| s.written), Some(100));
        c.record(MAC, beat(Proof::Verified, Some(50)));
        let r = c.get(MAC).unwrap();
        assert_eq!(
            r.progress_start.map(|s| s.written),
            Some(50),
            "an installer that starts over starts a new run"
        );
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
        assert!(r.progress.is_none() && r.progress_start.is_none());
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
        let limit = ClientsConfig::default().timeline;
        // Repeats of one heartbeat fold into one entry; different ones each take one.
        for _ in 0..10 {
            c.record(MAC, heartbeat("alive"));
        }
        assert_eq!(c.get(MAC).unwrap().timeline.back().unwrap().repeats, 9);
        for i in 0..limit + 10 {
            c.record(MAC, heartbeat(&format!("p{i}")));
        }
        assert_eq!(c.events(MAC).len(), limit);
        assert!(c.get(MAC).unwrap().holds_lease(clock::now_ms()));
    }

    #[test]
    fn unproven_heartbeats_keep_a_share_of_their_own() {
        let c = Clients::in_memory();
        c.record(
            MAC,
            ClientEvent::Leased {
                ip: Ipv4Addr::new(198, 18, 0, 100),
            },
        );
        c.record(MAC, heartbeat("installed"));
        let limit = ClientsConfig::default().timeline;
        for i in 0..limit + 10 {
            let mut beat = heartbeat(&format!("p{i}"));
            if let ClientEvent::Heartbeat { proof, .. } = &mut beat {
                *proof = if i % 2 == 0 {
                    Proof::Stranger
                } else {
                    Proof::Refused
                };
            }
            c.record(MAC, beat);
        }
        let events = c.events(MAC);
        assert_eq!(events.len(), 2 + UNPROVEN_KEPT, "{events:?}");
        assert!(matches!(events[0], ClientEvent::Leased { .. }));
        assert!(matches!(&events[1], ClientEvent::Heartbeat { phase, .. } if phase == "installed"));
        // The newest are kept.
        assert!(
            matches!(&events[2 + UNPROVEN_KEPT - 1], ClientEvent::Heartbeat { phase, .. } if *phase == format!("p{}", limit + 9))
        );
        assert_eq!(c.state(MAC), Some(ClientState::Installed));
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
        let entry = |at_ms, event| TimelineEntry {
            at_ms,
            event,
            repeats: 0,
        };
        let mut r = ClientRecord {
            mac: MAC,
            state: ClientState::Discovered,
            reported_ip: None,
            progress: None,
            progress_start: None,
            leased_until_ms: None,
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
        // A stranger's heartbeat after it neither moves the stage nor hides the reason.
        let mut stranger = heartbeat("onboarded");
        if let ClientEvent::Heartbeat { proof, .. } = &mut stranger {
            *proof = Proof::Stranger;
        }
        r.timeline.push_back(entry(4, stranger));
        assert_eq!(r.stage(), Some((Stage::Dhcp, 1)));
        assert_eq!(r.stopped().map(|e| e.at_ms), Some(3));
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
    fn messages_are_cut_at_a_character_boundary() {
        let c = Clients::in_memory();
        let max = ClientsConfig::default().message_max;
        c.record(MAC, ClientEvent::Discover { arch: None });
        c.record(
            MAC,
            ClientEvent::Heartbeat {
                phase: "installing".into(),
                message: Some("é".repeat(max)),
                ip: None,
                proof: Proof::Anonymous,
                progress: None,
            },
        );
        let Some(ClientEvent::Heartbeat {
            message: Some(m), ..
        }) = c.events(MAC).pop()
        else {
            panic!("no heartbeat");
        };
        assert!(m.len() <= max && m.ends_with('…'), "{} bytes", m.len());
    }

    fn mac(i: u32) -> Mac {
        let b = i.to_be_bytes();
        Mac([6, 0, b[0], b[1], b[2], b[3]])
    }

    /// Made-up MACs never push out a host or a lease holder; strays stay apart and
    /// bounded; what is forgotten is deleted from the store.
    #[test]
    fn the_table_is_bounded_and_keeps_hosts_and_leases() {
        let limits = ClientsConfig {
            max_records: 16,
            strays: 4,
            ..ClientsConfig::default()
        };
        let store = Store::in_memory();
        let c = Clients::open(store.clone(), limits.clone(), Duration::from_secs(3600), 0).unwrap();
        const HOST: Mac = Mac([2, 0, 0, 0, 0, 9]);
        c.keep_with(Box::new(|m| m == HOST));
        c.record(HOST, ClientEvent::Discover { arch: None });
        c.record(
            MAC,
            ClientEvent::Leased {
                ip: Ipv4Addr::new(198, 18, 0, 100),
            },
        );
        for i in 0..1000 {
            assert_eq!(c.record(mac(i), heartbeat("alive")), Recorded::Stray);
            c.record(mac(100_000 + i), ClientEvent::Discover { arch: None });
        }
        c.flush().unwrap();
        let all = c.all();
        assert_eq!(all.len(), 16 + 4, "{all:?}");
        assert!(c.get(HOST).is_some() && c.get(MAC).is_some());
        assert!(c.get(mac(999)).is_some() && c.get(mac(0)).is_none());
        // A host's heartbeat is a record even when nothing else was seen of it.
        let again = Clients::open(store, limits, Duration::from_secs(3600), 0).unwrap();
        assert_eq!(again.all().len(), 16, "strays are never saved");
        assert!(again.get(HOST).is_some() && again.get(MAC).is_some());
        // With strays refused, an unknown MAC's heartbeat leaves nothing behind.
        let none = Clients::open(
            Store::in_memory(),
            ClientsConfig {
                strays: 0,
                ..ClientsConfig::default()
            },
            Duration::from_secs(3600),
            0,
        )
        .unwrap();
        none.keep_with(Box::new(|_| false));
        assert_eq!(none.record(mac(1), heartbeat("alive")), Recorded::Refused);
        assert!(none.all().is_empty());
    }

    #[test]
    fn persists_through_the_store() {
        let store = Store::in_memory();
        let open = |s: &Store| {
            Clients::open(
                s.clone(),
                ClientsConfig::default(),
                Duration::from_secs(3600),
                0,
            )
            .unwrap()
        };
        let c = open(&store);
        c.record(MAC, ClientEvent::Discover { arch: None });
        c.record(MAC, heartbeat("onboarded"));
        c.flush().unwrap();
        drop(c);
        let again = open(&store);
        let r = again.get(MAC).unwrap();
        assert_eq!(r.state, ClientState::Onboarded);
        assert_eq!(r.timeline.len(), 2);
        let counts = again.counts();
        assert!(counts.contains(&(ClientState::Onboarded, 1)));
    }
}
