//! Host life cycle: registered hosts, their state machine fed by client events, rebuild over Redfish, the ephemeral-key join, the API and the live dashboard.
pub mod api;
pub mod bmc_tls;
pub mod counters;
pub mod dashboard;
pub mod fleet;
pub mod install;
pub mod machine;
pub mod redfish;
pub mod ssh;
pub mod store;

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    sync::{Arc, Mutex, RwLock},
    time::Duration,
};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use self::{
    install::{Handout, Install, InstallStats, Proof},
    machine::{HostState, Machine, Refused, Timeouts, Trigger},
    store::{Bmc, HostRecord, HostStoreError, Source},
};
use crate::{
    clients::{ClientEvent, Clients},
    clock::now_ms,
    inventory::{Host, HostIdentity, Inventory},
    live::Live,
    mac::Mac,
    store::Store,
};

/// Why a host operation failed. Messages never hold a secret.
#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("no host {mac}")]
    NotFound { mac: Mac },
    #[error("host {mac} is already registered")]
    Exists { mac: Mac },
    #[error("host {mac} comes from inventory.toml: change the file instead")]
    FromInventory { mac: Mac },
    #[error("host {mac}: {source}")]
    Refused {
        mac: Mac,
        #[source]
        source: Refused,
    },
    #[error("`{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("host {mac}: making the install's SSH keys")]
    Keys {
        mac: Mac,
        #[source]
        source: ssh::SshError,
    },
    #[error(transparent)]
    BmcTrust(#[from] bmc_tls::TrustError),
    #[error(transparent)]
    Store(#[from] HostStoreError),
}

/// What the API registers.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct Registration {
    pub mac: Mac,
    #[serde(flatten)]
    pub identity: HostIdentity,
    #[serde(default)]
    pub bmc: Option<Bmc>,
    /// Keys no field took: refused, naming them (`deny_unknown_fields` does not work
    /// beside `flatten`).
    #[serde(flatten)]
    pub unknown: BTreeMap<String, serde_json::Value>,
}

#[cfg(test)]
impl Registration {
    /// A host of `profile` and nothing else.
    pub(crate) fn with_profile(mac: Mac, profile: &str) -> Self {
        Self {
            mac,
            identity: HostIdentity {
                profile: Some(profile.into()),
                ..Default::default()
            },
            bmc: None,
            unknown: BTreeMap::new(),
        }
    }
}

/// The registered hosts. Every state change is saved and broadcast to dashboard
/// listeners at once; heartbeats only note the time, saved and broadcast once a second
/// ([`Hosts::save_heartbeats`]), so a heartbeat flood costs no fsync each.
pub struct Hosts {
    records: Mutex<BTreeMap<Mac, HostRecord>>,
    /// The MACs of `records`, readable without its lock (the client table asks under
    /// its own lock which MACs to keep).
    macs: Arc<RwLock<HashSet<Mac>>>,
    /// Hosts whose `last_heartbeat` changed since the last save.
    beats: Mutex<BTreeSet<Mac>>,
    store: Option<Store>,
    changes: broadcast::Sender<HostRecord>,
    timeouts: Timeouts,
    install_stats: InstallStats,
}

impl Default for Hosts {
    fn default() -> Self {
        Self::with(None, Vec::new())
    }
}

impl Hosts {
    fn with(store: Option<Store>, records: Vec<HostRecord>) -> Self {
        let records: BTreeMap<Mac, HostRecord> = records.into_iter().map(|r| (r.mac, r)).collect();
        Self {
            macs: Arc::new(RwLock::new(records.keys().copied().collect())),
            records: Mutex::new(records),
            beats: Mutex::default(),
            store,
            changes: broadcast::channel(256).0,
            timeouts: Timeouts::default(),
            install_stats: InstallStats::default(),
        }
    }

    /// Hosts backed by `store`, with what an earlier run saved.
    pub fn open(store: Store) -> Result<Self, HostStoreError> {
        let records = store::load(&store)?;
        Ok(Self::with(Some(store), records))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Mac, HostRecord>> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Mirrors the MACs of `records` (the caller holds their lock).
    fn mirror(&self, records: &BTreeMap<Mac, HostRecord>) {
        let mut macs = self.macs.write().unwrap_or_else(|p| p.into_inner());
        if macs.len() != records.len() || !records.keys().all(|m| macs.contains(m)) {
            *macs = records.keys().copied().collect();
        }
    }

    /// Whether a MAC is a registered host (inventory or API), as a function that takes
    /// no lock but its own: for the client table's keep rule.
    pub fn registered(&self) -> impl Fn(Mac) -> bool + Send + Sync + 'static {
        let macs = self.macs.clone();
        move |mac| {
            macs.read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(&mac)
        }
    }

    /// Saves and announces `record` (the caller holds the lock, so writes are ordered).
    fn commit(&self, record: &HostRecord) -> Result<(), HostStoreError> {
        if let Some(store) = &self.store {
            store::save(store, record)?;
        }
        let _ = self.changes.send(record.clone());
        Ok(())
    }

    /// Changes as they happen, for the dashboard.
    pub fn subscribe(&self) -> broadcast::Receiver<HostRecord> {
        self.changes.subscribe()
    }

    /// Every host, by MAC.
    pub fn list(&self) -> Vec<HostRecord> {
        self.lock().values().cloned().collect()
    }

    /// How many hosts are in each state (every state listed).
    pub fn counts(&self) -> Vec<(HostState, usize)> {
        let records = self.lock();
        HostState::ALL
            .into_iter()
            .map(|s| (s, records.values().filter(|r| r.machine.state == s).count()))
            .collect()
    }

    /// The record of `mac`.
    pub fn get(&self, mac: Mac) -> Option<HostRecord> {
        self.lock().get(&mac).cloned()
    }

    /// The file is the declarative source: each inventory host gets a record (source
    /// `inventory`) that follows the file; a host gone from the file is forgotten (its
    /// MAC returned: its keys must go too). API hosts are left alone, unless the file
    /// now declares the same MAC: the file wins.
    pub fn sync_inventory(&self, inv: &Inventory) -> Result<Vec<Mac>, HostStoreError> {
        let mut records = self.lock();
        for h in &inv.hosts {
            let existing = records.get(&h.mac);
            let mut record = existing.cloned().unwrap_or_else(|| HostRecord {
                mac: h.mac,
                identity: HostIdentity::default(),
                bmc: None,
                source: Source::Inventory,
                ssh_public_key: None,
                last_heartbeat: None,
                install: None,
                machine: Machine::new(now_ms()),
            });
            record.source = Source::Inventory;
            record.identity.clone_from(&h.identity);
            record.bmc = h.vars.get("bmc").and_then(|v| v.clone().try_into().ok());
            if existing != Some(&record) {
                self.commit(&record)?;
                records.insert(h.mac, record);
            }
        }
        let gone: Vec<Mac> = records
            .values()
            .filter(|r| r.source == Source::Inventory && inv.host(r.mac).is_none())
            .map(|r| r.mac)
            .collect();
        for &mac in &gone {
            records.remove(&mac);
            if let Some(store) = &self.store {
                store::remove(store, mac)?;
            }
        }
        self.mirror(&records);
        Ok(gone)
    }

    /// Registers a host through the API.
    pub fn register(&self, inv: &Inventory, reg: Registration) -> Result<HostRecord, HostsError> {
        let Registration {
            mac,
            identity,
            bmc,
            unknown,
        } = reg;
        if let Some(key) = unknown.keys().next() {
            return Err(HostsError::Invalid {
                field: "body",
                reason: format!("unknown field `{key}`"),
            });
        }
        if let Some(p) = &identity.profile
            && !inv.profiles.contains_key(p)
        {
            return Err(HostsError::Invalid {
                field: "profile",
                reason: format!("no profile `{p}` in the inventory"),
            });
        }
        if let Some(b) = &bmc {
            redfish::check_bmc(b)?;
        }
        let mut records = self.lock();
        if records.contains_key(&mac) {
            return Err(HostsError::Exists { mac });
        }
        let record = HostRecord {
            mac,
            identity,
            bmc,
            source: Source::Api,
            ssh_public_key: None,
            last_heartbeat: None,
            install: None,
            machine: Machine::new(now_ms()),
        };
        self.commit(&record)?;
        records.insert(mac, record.clone());
        self.mirror(&records);
        Ok(record)
    }

    /// Forgets an API host.
    pub fn delete(&self, mac: Mac) -> Result<HostRecord, HostsError> {
        let mut records = self.lock();
        let record = records.get(&mac).ok_or(HostsError::NotFound { mac })?;
        if record.source == Source::Inventory {
            return Err(HostsError::FromInventory { mac });
        }
        if let Some(store) = &self.store {
            store::remove(store, mac)?;
        }
        let record = records.remove(&mac).expect("checked above");
        self.mirror(&records);
        Ok(record)
    }

    /// Applies `trigger` to `mac`, with `edit` run on the record when it is accepted.
    pub fn apply(
        &self,
        mac: Mac,
        trigger: Trigger,
        edit: impl FnOnce(&mut HostRecord),
    ) -> Result<HostRecord, HostsError> {
        let mut records = self.lock();
        let record = records.get_mut(&mac).ok_or(HostsError::NotFound { mac })?;
        let mut next = record.clone();
        let from = next.machine.state;
        next.machine
            .apply(trigger, now_ms())
            .map_err(|source| HostsError::Refused { mac, source })?;
        edit(&mut next);
        info!(%mac, from = from.label(), to = next.machine.state.label(), reason = ?next.machine.reason, "host state");
        self.commit(&next)?;
        *record = next.clone();
        Ok(next)
    }

    /// Runs `edit` on the record of `mac` and saves it (no state change).
    pub fn edit<T>(
        &self,
        mac: Mac,
        edit: impl FnOnce(&mut HostRecord) -> T,
    ) -> Result<T, HostsError> {
        let mut records = self.lock();
        let record = records.get_mut(&mac).ok_or(HostsError::NotFound { mac })?;
        let mut next = record.clone();
        let out = edit(&mut next);
        if next != *record {
            self.commit(&next)?;
            *record = next;
        }
        Ok(out)
    }

    /// Fails `mac` with `reason` (logged; the reason never holds a secret).
    pub fn fail(&self, mac: Mac, reason: String) -> Option<HostRecord> {
        match self.apply(mac, Trigger::Fail { reason }, |_| {}) {
            Ok(r) => Some(r),
            Err(err) => {
                warn!(%mac, error = %crate::error_chain(&err), "could not fail host");
                None
            }
        }
    }

    /// Moves a host along on what DHCP, TFTP and HTTP saw. Events that do not apply in
    /// the current state are normal (a retried fetch, a DHCP renewal) and ignored.
    /// Heartbeats move a host only when they carry its install's token: an anonymous
    /// one from the host's own address is noted for the dashboard when the host has no
    /// install, a refused or a stranger's one not at all.
    pub fn on_client_event(&self, mac: Mac, event: &ClientEvent) {
        let trigger = match event {
            ClientEvent::Discover { .. } | ClientEvent::Leased { .. } => Trigger::Dhcp,
            ClientEvent::BootFile { path } | ClientEvent::Kernel { path } => {
                Trigger::BootFetch { path: path.clone() }
            }
            ClientEvent::Seed { path } => Trigger::SeedFetch { path: path.clone() },
            // What failed shows in the fleet view; the host's own timeouts fail it.
            ClientEvent::Failure { .. } | ClientEvent::LocalBoot { .. } => return,
            ClientEvent::Heartbeat {
                phase,
                message,
                proof,
                ..
            } => {
                if proof.moves() {
                    self.note_heartbeat(mac, phase);
                }
                if *proof != Proof::Verified {
                    return;
                }
                match phase.as_str() {
                    "installed" => Trigger::InstallDone,
                    // Progress of the installer: no move.
                    "installing" => return,
                    "failed" => Trigger::Fail {
                        reason: format!(
                            "host reported failure: {}",
                            message.as_deref().unwrap_or("no message")
                        ),
                    },
                    _ => Trigger::Heartbeat {
                        phase: phase.clone(),
                    },
                }
            }
        };
        let Some(state) = self.get(mac).map(|r| r.machine.state) else {
            return;
        };
        if Machine::next(state, &trigger).is_none() {
            debug!(%mac, state = state.label(), ?trigger, "event does not move the host");
            return;
        }
        if let Err(err) = self.apply(mac, trigger, |_| {}) {
            warn!(%mac, error = %crate::error_chain(&err), "host event not applied");
        }
    }

    /// Notes a heartbeat in memory; [`Hosts::save_heartbeats`] saves it.
    fn note_heartbeat(&self, mac: Mac, phase: &str) {
        let mut records = self.lock();
        let Some(record) = records.get_mut(&mac) else {
            return;
        };
        record.last_heartbeat = Some((now_ms(), phase.to_owned()));
        self.beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mac);
    }

    /// Saves and announces the heartbeats noted since the last call.
    pub fn save_heartbeats(&self) {
        let beats = std::mem::take(&mut *self.beats.lock().unwrap_or_else(|p| p.into_inner()));
        let records = self.lock();
        for mac in beats {
            if let Some(record) = records.get(&mac)
                && let Err(err) = self.commit(record)
            {
                warn!(%mac, error = %crate::error_chain(&err), "saving heartbeat failed");
            }
        }
    }

    /// Replays what `clients` recorded for each host since it entered its state: after
    /// the event stream lagged, the transitions it would have made are made now.
    pub fn rederive(&self, clients: &Clients) {
        let hosts: Vec<(Mac, u64)> = self
            .lock()
            .values()
            .map(|r| (r.mac, r.machine.since_ms))
            .collect();
        for (mac, since_ms) in hosts {
            let Some(record) = clients.get(mac) else {
                continue;
            };
            for entry in record.timeline.iter().filter(|e| e.at_ms >= since_ms) {
                self.on_client_event(mac, &entry.event);
            }
        }
    }

    /// Fails every host whose state outlived its timeout; returns those that did (their
    /// keys go: nobody may log in with them or fetch them any more).
    pub fn check_timeouts(&self) -> Vec<Mac> {
        let now = now_ms();
        let mut records = self.lock();
        let mut failed = Vec::new();
        for record in records.values_mut() {
            let mut next = record.clone();
            if next.machine.check_timeout(&self.timeouts, now) {
                warn!(mac = %next.mac, reason = ?next.machine.reason, "host timed out");
                if let Some(i) = next.install.as_mut() {
                    i.secrets.host_key_private = None;
                }
                next.ssh_public_key = None;
                match self.commit(&next) {
                    Ok(()) => {
                        failed.push(next.mac);
                        *record = next;
                    }
                    Err(err) => warn!(error = %crate::error_chain(&err), "saving timeout failed"),
                }
            }
        }
        failed
    }

    /// Whether a network boot of `mac` must go to its local disk, when the host life
    /// cycle decides it (`None`: not a registered host; the client's own state decides).
    /// Installed and later → yes; an install or rebuild under way → no; a host that
    /// failed or was never installed by us: yes once its current install was reported
    /// installed with its token (a failed join must not wipe the disk again), else no.
    pub fn boots_local(&self, mac: Mac) -> Option<bool> {
        let record = self.get(mac)?;
        Some(match record.machine.state {
            HostState::Registered | HostState::Failed => {
                record.install.is_some_and(|i| i.installed_ms.is_some())
            }
            s => s.boots_local(),
        })
    }

    /// The host seeds render for: the inventory entry or, for an API host, one made from
    /// its record; with the rebuild's ephemeral public key added to `ssh_authorized_keys`.
    pub fn effective_host(&self, inv: &Inventory, mac: Mac) -> Option<Host> {
        let record = self.get(mac);
        let mut host = inv
            .host(mac)
            .cloned()
            .or_else(|| Some(Host::new(mac, record.as_ref()?.identity.clone())))?;
        if let Some(key) = record.and_then(|r| r.ssh_public_key) {
            let keys = host
                .vars
                .entry("ssh_authorized_keys".into())
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let toml::Value::Array(list) = keys {
                list.push(toml::Value::String(key));
            }
        }
        Some(host)
    }
}

/// Feeds client events into the host machines, follows the inventory, checks timeouts
/// and starts the join step of hosts that reached `first_boot`, until `token` fires.
pub async fn run(
    hosts: Arc<Hosts>,
    clients: Arc<Clients>,
    mut events: broadcast::Receiver<(Mac, ClientEvent)>,
    mut live: Live,
    joiner: ssh::Joiner,
    bmc: bmc_tls::BmcSettings,
    token: CancellationToken,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = token.cancelled() => {
                hosts.save_heartbeats();
                return Ok(());
            }
            event = events.recv() => match event {
                Ok((mac, event)) => {
                    hosts.on_client_event(mac, &event);
                    joiner.maybe_join(mac);
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    // The client records hold what the stream dropped.
                    warn!(missed = n, "host events lagged; re-deriving host states from client records");
                    hosts.rederive(&clients);
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            },
            snapshot = live.changed() => {
                match hosts.sync_inventory(&snapshot.inventory) {
                    Ok(gone) => {
                        for mac in gone {
                            ssh::delete(&joiner.data_path, mac).await;
                        }
                    }
                    Err(err) => warn!(error = %crate::error_chain(&err), "syncing hosts from the inventory failed"),
                }
                redfish::warn_untrusted(&snapshot.inventory, &bmc);
            }
            _ = tick.tick() => {
                hosts.save_heartbeats();
                for mac in hosts.check_timeouts() {
                    ssh::delete(&joiner.data_path, mac).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const MAC: Mac = Mac([2, 0, 0, 0, 0, 7]);

    fn inventory(text: &str) -> Inventory {
        Inventory::parse(Path::new("inventory.toml"), text).unwrap()
    }

    fn beat(phase: &str) -> ClientEvent {
        ClientEvent::Heartbeat {
            phase: phase.into(),
            message: None,
            ip: None,
            proof: Proof::Verified,
            progress: None,
        }
    }

    #[test]
    fn events_drive_the_machine_and_records_persist() {
        let store = Store::in_memory();
        let hosts = Hosts::open(store.clone()).unwrap();
        let inv = inventory("[profiles.p]\nkernel = \"k\"\n");
        let reg = Registration::with_profile(MAC, "p");
        hosts.register(&inv, reg.clone()).unwrap();
        assert!(matches!(
            hosts.register(&inv, reg),
            Err(HostsError::Exists { .. })
        ));
        // Registered, never installed: the profile boots.
        assert_eq!(hosts.boots_local(MAC), Some(false));
        hosts.apply(MAC, Trigger::Rebuild, |_| {}).unwrap();
        assert_eq!(hosts.boots_local(MAC), Some(false));
        // A DHCP renewal in pxe_ready moves nothing.
        hosts.on_client_event(MAC, &ClientEvent::Discover { arch: None });
        hosts.on_client_event(MAC, &ClientEvent::Kernel { path: "k".into() });
        hosts.on_client_event(MAC, &ClientEvent::Seed { path: "s".into() });
        hosts.on_client_event(MAC, &beat("installed"));
        assert_eq!(hosts.get(MAC).unwrap().machine.state, HostState::Installed);
        assert_eq!(hosts.boots_local(MAC), Some(true));
        hosts.on_client_event(MAC, &beat("failed"));
        let r = hosts.get(MAC).unwrap();
        assert_eq!(r.machine.state, HostState::Failed);
        assert!(r.machine.reason.unwrap().contains("host reported failure"));
        assert_eq!(r.last_heartbeat.unwrap().1, "failed");
        assert_eq!(r.machine.history.len(), 5);
        let again = Hosts::open(store).unwrap();
        assert_eq!(again.get(MAC), hosts.get(MAC));
    }

    /// Heartbeats cost no write each; events the stream dropped are re-derived from the
    /// client records.
    #[test]
    fn heartbeats_are_coalesced_and_a_lag_is_re_derived() {
        let store = Store::in_memory();
        let hosts = Hosts::open(store.clone()).unwrap();
        let inv = inventory("[profiles.p]\nkernel = \"k\"\n");
        let reg = Registration::with_profile(MAC, "p");
        hosts.register(&inv, reg).unwrap();
        assert!(hosts.registered()(MAC));
        hosts.apply(MAC, Trigger::Rebuild, |_| {}).unwrap();
        for _ in 0..1000 {
            hosts.on_client_event(MAC, &beat("alive"));
        }
        let saved = |s: &Store| Hosts::open(s.clone()).unwrap().get(MAC).unwrap();
        assert_eq!(
            saved(&store).last_heartbeat,
            None,
            "not saved per heartbeat"
        );
        hosts.save_heartbeats();
        assert_eq!(saved(&store).last_heartbeat.unwrap().1, "alive");
        // The stream lost the kernel and seed fetches; the client records hold them.
        let clients = Clients::in_memory();
        clients.record(MAC, ClientEvent::Kernel { path: "k".into() });
        clients.record(MAC, ClientEvent::Seed { path: "s".into() });
        hosts.rederive(&clients);
        assert_eq!(hosts.get(MAC).unwrap().machine.state, HostState::Installing);
    }

    #[test]
    fn the_file_is_the_declarative_source() {
        let hosts = Hosts::default();
        let inv = inventory(
            "[profiles.p]\nkernel = \"k\"\n[[hosts]]\nmac = \"02:00:00:00:00:07\"\nprofile = \"p\"\n\
             [hosts.vars.bmc]\nurl = \"http://198.18.1.2\"\ncredentials = \"b\"\n",
        );
        hosts.sync_inventory(&inv).unwrap();
        let r = hosts.get(MAC).unwrap();
        assert_eq!(r.source, Source::Inventory);
        assert_eq!(r.bmc.unwrap().credentials, "b");
        assert!(matches!(
            hosts.delete(MAC),
            Err(HostsError::FromInventory { .. })
        ));
        hosts
            .apply(MAC, Trigger::Rebuild, |r| {
                r.ssh_public_key = Some("ssh-ed25519 A c".into())
            })
            .unwrap();
        let host = hosts.effective_host(&inv, MAC).unwrap();
        assert_eq!(
            host.vars["ssh_authorized_keys"],
            toml::Value::Array(vec![toml::Value::String("ssh-ed25519 A c".into())])
        );
        assert_eq!(hosts.sync_inventory(&inventory("")).unwrap(), [MAC]);
        assert!(hosts.get(MAC).is_none());
    }
}
