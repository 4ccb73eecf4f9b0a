//! Per-install state of a host: every install (the first one, and each rebuild) gets a
//! fresh random token and instance id and its own SSH host key; its secrets go out once
//! (first come, first served), a second request for them is refused and raises an
//! alarm, and life-cycle heartbeats must carry the token.
use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::Path,
    sync::atomic::{AtomicU64, Ordering},
};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{HostState, Hosts, HostsError, Trigger, ssh};
use crate::{clock::now_ms, mac::Mac};

/// Alarms kept per install; the count keeps counting past it.
const ALARMS_KEPT: usize = 8;

/// One install of a host, as the host record shows it. The secrets ride beside it
/// (never serialised with the record: see [`super::store`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Install {
    /// cloud-init's instance-id: a new one tells cloud-init this is a new machine.
    pub instance_id: String,
    /// When the install was started (Unix ms).
    pub started_ms: u64,
    /// A rebuild: the installer may overwrite a disk that holds data. A first install
    /// refuses to (the machine may hold someone's data).
    pub overwrite: bool,
    /// The host's public SSH host key: its seed installs the private half, the join
    /// step accepts exactly this key.
    pub host_key: String,
    /// Seed paths whose secrets were handed out, and when (Unix ms).
    #[serde(default)]
    pub handed_out: BTreeMap<String, u64>,
    /// The last heartbeat that carried the right token (Unix ms).
    #[serde(default)]
    pub proved_ms: Option<u64>,
    /// When the installer reported `installed` with the right token (Unix ms).
    #[serde(default)]
    pub installed_ms: Option<u64>,
    /// Requests refused because the secrets were already handed out.
    #[serde(default)]
    pub alarms: u64,
    /// The latest of them, newest last.
    #[serde(default)]
    pub alarm_log: Vec<Alarm>,
    /// The token and the private host key. Stored in their own table.
    #[serde(skip)]
    pub secrets: Secrets,
}

/// A refused second request for an install's secrets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alarm {
    pub at_ms: u64,
    pub path: String,
    /// The address that asked.
    pub peer: Option<Ipv4Addr>,
}

/// What only the install's seeds carry.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Secrets {
    /// Sent back in every heartbeat that moves the host; 32 random bytes, hex.
    pub token: String,
    /// The SSH host key's private half (OpenSSH format), until the install ends.
    #[serde(default)]
    pub host_key_private: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(***)")
    }
}

/// Fresh keys for an install, made outside the hosts lock (ssh-keygen).
pub struct NewInstall {
    pub host_key_public: String,
    pub host_key_private: String,
}

impl Install {
    fn new(keys: NewInstall, overwrite: bool, now_ms: u64) -> Self {
        Self {
            instance_id: format!("gb10-{}", random_hex(8)),
            started_ms: now_ms,
            overwrite,
            host_key: keys.host_key_public,
            handed_out: BTreeMap::new(),
            proved_ms: None,
            installed_ms: None,
            alarms: 0,
            alarm_log: Vec::new(),
            secrets: Secrets {
                token: random_hex(32),
                host_key_private: Some(keys.host_key_private),
            },
        }
    }
}

/// How a seed route hands out an install's secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Handout {
    /// No secrets: served to its owner as often as asked.
    Open,
    /// Once per install; a second request is refused with an alarm (the install script:
    /// nothing legitimate fetches it twice).
    Once,
    /// Once per install with the secrets; once the install has proved itself with its
    /// token after that, later requests get the seed with the secrets withheld (cloud-init
    /// reads its seed again on every boot); before that, refused with an alarm.
    OnceThenWithheld,
}

/// What a seed request gets.
#[derive(Debug)]
pub enum Granted {
    /// The seed with the install's secrets.
    Secrets(Box<InstallView>),
    /// The seed without them (a later boot of a proved install).
    Withheld(Box<InstallView>),
}

/// What a seed renders with from the current install.
#[derive(Clone, Debug)]
pub struct InstallView {
    pub instance_id: String,
    pub overwrite: bool,
    pub host_key: String,
    pub secrets: Option<Secrets>,
}

impl From<&Install> for InstallView {
    fn from(i: &Install) -> Self {
        Self {
            instance_id: i.instance_id.clone(),
            overwrite: i.overwrite,
            host_key: i.host_key.clone(),
            secrets: None,
        }
    }
}

/// Why a seed was refused: its secrets were handed out already.
#[derive(Debug, thiserror::Error)]
#[error(
    "the secrets of this install ({path}) were handed out at {handed_out_ms} ms already; \
     a second request is refused (possible theft): rebuild the host to start a new install"
)]
pub struct AlreadyHandedOut {
    pub path: String,
    pub handed_out_ms: u64,
}

/// What a heartbeat's token proves.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proof {
    /// The MAC has no install to prove (an unknown client, a host never installed):
    /// the heartbeat updates the client record only.
    #[default]
    Anonymous,
    /// The token of the host's current install.
    Verified,
    /// The host has an install and the token is missing or wrong: recorded in the
    /// client's timeline, moves nothing.
    Refused,
    /// Anonymous, from an address that is not the MAC's (see
    /// [`crate::identity::Identity::speaks_for`]): recorded in that client's timeline,
    /// moves nothing. Else a stranger could mark an unknown client installed (DHCP then
    /// withholds its boot file) or installing again (its next boot wipes its disk).
    Stranger,
}

impl Proof {
    /// Whether the heartbeat may move the client's state (and note a host's last
    /// heartbeat): anonymous from the MAC's own address, or with its install's token.
    pub fn moves(self) -> bool {
        matches!(self, Self::Anonymous | Self::Verified)
    }
}

/// Counters for `/metrics`.
#[derive(Default)]
pub struct InstallStats {
    /// Second requests for an install's secrets, refused.
    pub alarms: AtomicU64,
    /// Heartbeats for a host with an install, without its token.
    pub unproven_heartbeats: AtomicU64,
    /// Anonymous heartbeats from an address that is not the MAC's.
    pub stranger_heartbeats: AtomicU64,
}

/// Starts an install of `mac`: a fresh SSH host key and join key (ssh-keygen, under
/// `data_path/state/keys`), a token and an instance id. `rebuild`: an operator asked for
/// it (see [`Hosts::start_install`]); else the host's first install, started by its first
/// seed request, which does nothing when an install exists. The join key failing is
/// logged (the join then cannot log in); the host key failing refuses the install (its
/// join could not be pinned).
pub async fn begin(
    hosts: &Hosts,
    data_path: &Path,
    mac: Mac,
    rebuild: bool,
) -> Result<bool, HostsError> {
    if hosts.get(mac).is_none() {
        return Err(HostsError::NotFound { mac });
    }
    if !rebuild && hosts.install_view(mac).is_some() {
        return Ok(false);
    }
    let (host_key_private, host_key_public) = ssh::host_key(data_path, mac)
        .await
        .map_err(|source| HostsError::Keys { mac, source })?;
    let join_key = match ssh::generate(data_path, mac).await {
        Ok(k) => Some(k),
        Err(err) => {
            warn!(%mac, error = %crate::error_chain(&err), "no join key: the join step will not log in");
            None
        }
    };
    let keys = NewInstall {
        host_key_public,
        host_key_private,
    };
    let started = hosts.start_install(mac, keys, join_key, rebuild)?;
    if started {
        let view = hosts.install_view(mac);
        info!(
            %mac,
            instance_id = view.as_ref().map(|v| v.instance_id.as_str()),
            rebuild,
            "install started: new token, instance id and SSH host key"
        );
    }
    Ok(started)
}

impl Hosts {
    /// The current install of `mac`, as a seed renders it (no secrets).
    pub fn install_view(&self, mac: Mac) -> Option<InstallView> {
        self.lock()
            .get(&mac)
            .and_then(|r| r.install.as_ref().map(InstallView::from))
    }

    /// Starts a new install of `mac` with `keys`, replacing any earlier one (its token
    /// and keys are void from now on). `rebuild`: an operator asked for it (the disk may
    /// be overwritten, the host moves to `pxe_ready`); else the host's first install,
    /// which only starts when none exists yet (returns `false` when one does).
    pub fn start_install(
        &self,
        mac: Mac,
        keys: NewInstall,
        join_key: Option<String>,
        rebuild: bool,
    ) -> Result<bool, HostsError> {
        let install = Install::new(keys, rebuild, now_ms());
        if rebuild {
            self.apply(mac, Trigger::Rebuild, |r| {
                r.install = Some(install);
                r.ssh_public_key = join_key;
            })?;
            return Ok(true);
        }
        self.edit(mac, |r| {
            if r.install.is_some() {
                return false;
            }
            r.install = Some(install);
            r.ssh_public_key = join_key;
            true
        })
    }

    /// Hands out (or not) the secrets of `mac`'s current install for a request of `path`
    /// from `peer`, as `handout` says. A refusal is an alarm: logged, counted, kept on the
    /// host record, and the host fails (the real machine's install must not go on
    /// unnoticed). `None` when the host has no install.
    pub fn hand_out(
        &self,
        mac: Mac,
        path: &str,
        handout: Handout,
        peer: Option<Ipv4Addr>,
    ) -> Option<Result<Granted, AlreadyHandedOut>> {
        let now = now_ms();
        let mut records = self.lock();
        let record = records.get_mut(&mac)?;
        let install = record.install.as_mut()?;
        let mut view = InstallView::from(&*install);
        let before = install.handed_out.get(path).copied();
        let outcome = match (handout, before) {
            (Handout::Open, _) => return Some(Ok(Granted::Withheld(Box::new(view)))),
            (_, None) => {
                install.handed_out.insert(path.to_owned(), now);
                view.secrets = Some(install.secrets.clone());
                Ok(Granted::Secrets(Box::new(view)))
            }
            (Handout::OnceThenWithheld, Some(at)) if install.proved_ms.is_some_and(|p| p > at) => {
                return Some(Ok(Granted::Withheld(Box::new(view))));
            }
            (_, Some(at)) => {
                install.alarms += 1;
                if install.alarm_log.len() >= ALARMS_KEPT {
                    install.alarm_log.remove(0);
                }
                install.alarm_log.push(Alarm {
                    at_ms: now,
                    path: path.to_owned(),
                    peer,
                });
                self.install_stats.alarms.fetch_add(1, Ordering::Relaxed);
                warn!(
                    %mac, path, ?peer, handed_out_ms = at,
                    "ALARM: a second request for an install's secrets; refused, the host fails (rebuild it)"
                );
                Err(AlreadyHandedOut {
                    path: path.to_owned(),
                    handed_out_ms: at,
                })
            }
        };
        let mut next = record.clone();
        if let Err(e) = &outcome
            && next.machine.state != HostState::Failed
        {
            let reason = format!("seed alarm: {e}");
            let _ = next.machine.apply(Trigger::Fail { reason }, now);
        }
        if let Err(err) = self.commit(&next) {
            warn!(%mac, error = %crate::error_chain(&err), "saving a hand-out failed");
        }
        *record = next;
        Some(outcome)
    }

    /// Takes back a hand-out whose seed could not be rendered (the client got a 500 and
    /// none of it, so asking again is not an alarm).
    pub fn take_back(&self, mac: Mac, path: &str) {
        let _ = self.edit(mac, |r| {
            if let Some(i) = r.install.as_mut() {
                i.handed_out.remove(path);
            }
        });
    }

    /// Checks a heartbeat's token against `mac`'s current install, in constant time.
    /// A good one is remembered (seeds fetched before it may go out without secrets
    /// later); `installed` marks the install done.
    pub fn prove(&self, mac: Mac, token: Option<&str>, phase: &str) -> Proof {
        let now = now_ms();
        let mut records = self.lock();
        let Some(install) = records.get_mut(&mac).and_then(|r| r.install.as_mut()) else {
            return Proof::Anonymous;
        };
        let good =
            token.is_some_and(|t| constant_time_eq(t.as_bytes(), install.secrets.token.as_bytes()));
        if !good {
            self.install_stats
                .unproven_heartbeats
                .fetch_add(1, Ordering::Relaxed);
            warn!(%mac, phase, token = if token.is_some() { "wrong" } else { "missing" },
                "heartbeat for a host with an install but without its token: moves nothing");
            return Proof::Refused;
        }
        // Saved when it changes a decision: the install is done, or seeds handed out
        // since the last proof may now go out again without their secrets.
        let decides = (phase == "installed" && install.installed_ms.is_none())
            || install
                .handed_out
                .values()
                .any(|at| install.proved_ms.is_none_or(|p| p <= *at));
        install.proved_ms = Some(now);
        if phase == "installed" && install.installed_ms.is_none() {
            install.installed_ms = Some(now);
        }
        if decides
            && let Some(record) = records.get(&mac)
            && let Err(err) = self.commit(record)
        {
            warn!(%mac, error = %crate::error_chain(&err), "saving a proof failed");
        }
        Proof::Verified
    }

    /// Whether `mac`'s current install was reported installed with its token.
    pub fn install_done(&self, mac: Mac) -> Option<bool> {
        self.lock()
            .get(&mac)
            .and_then(|r| r.install.as_ref())
            .map(|i| i.installed_ms.is_some())
    }

    /// Forgets the private host key of `mac`'s install (a rebuild that timed out: nobody
    /// may fetch it any more).
    pub fn drop_host_key(&self, mac: Mac) {
        let _ = self.edit(mac, |r| {
            if let Some(i) = r.install.as_mut() {
                i.secrets.host_key_private = None;
            }
        });
    }

    /// The counters of hand-outs and proofs.
    pub fn install_stats(&self) -> &InstallStats {
        &self.install_stats
    }
}

/// Compares without stopping at the first difference, so timing tells nothing.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `bytes` random bytes from the kernel, as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: writes at most `buf.len() - filled` bytes into our buffer.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        // getrandom(2) only fails when interrupted or before the pool is ready; retry.
        if n > 0 {
            filled += n as usize;
        }
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::{
        hosts::{HostState, Registration},
        inventory::{HostIdentity, Inventory},
        store::Store,
    };

    const MAC: Mac = Mac([2, 0, 0, 0, 0, 9]);
    const UD: &str = "/cloud-init/{mac}/user-data";
    const SCRIPT: &str = "/install/{mac}";

    fn keys() -> NewInstall {
        NewInstall {
            host_key_public: "ssh-ed25519 AAAA host".into(),
            host_key_private: "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n".into(),
        }
    }

    fn hosts() -> Hosts {
        let hosts = Hosts::open(Store::in_memory()).unwrap();
        let inv = Inventory::parse(Path::new("inventory.toml"), "[profiles.p]\n").unwrap();
        hosts
            .register(&inv, Registration::with_profile(MAC, "p"))
            .unwrap();
        hosts
    }

    fn token(hosts: &Hosts) -> String {
        match hosts.hand_out(MAC, "/probe", Handout::Once, None) {
            Some(Ok(Granted::Secrets(v))) => v.secrets.unwrap().token,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn secrets_go_out_once_and_a_second_request_is_an_alarm() {
        let hosts = hosts();
        assert!(hosts.hand_out(MAC, SCRIPT, Handout::Once, None).is_none());
        assert!(hosts.start_install(MAC, keys(), None, false).unwrap());
        // A first install never replaces one under way.
        assert!(!hosts.start_install(MAC, keys(), None, false).unwrap());
        let Some(Ok(Granted::Secrets(first))) = hosts.hand_out(MAC, SCRIPT, Handout::Once, None)
        else {
            panic!("first request");
        };
        let secrets = first.secrets.unwrap();
        assert_eq!(secrets.token.len(), 64);
        assert!(!first.overwrite);
        let peer = Some(Ipv4Addr::new(198, 18, 0, 66));
        let second = hosts.hand_out(MAC, SCRIPT, Handout::Once, peer).unwrap();
        assert!(second.is_err(), "{second:?}");
        let r = hosts.get(MAC).unwrap();
        let i = r.install.as_ref().unwrap();
        assert_eq!(i.alarms, 1);
        assert_eq!(i.alarm_log[0].peer, peer);
        assert_eq!(r.machine.state, HostState::Failed);
        assert!(r.machine.reason.as_deref().unwrap().contains("seed alarm"));
        assert_eq!(hosts.install_stats().alarms.load(Ordering::Relaxed), 1);
        // The record as the API shows it holds no secret.
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains(&secrets.token), "{json}");
        assert!(!json.contains("PRIVATE KEY"), "{json}");
    }

    #[test]
    fn cloud_init_reads_again_without_secrets_once_proved() {
        let hosts = hosts();
        hosts.start_install(MAC, keys(), None, false).unwrap();
        let token = token(&hosts);
        assert!(matches!(
            hosts.hand_out(MAC, UD, Handout::OnceThenWithheld, None),
            Some(Ok(Granted::Secrets(_)))
        ));
        // Before the install proves itself, a second request is an alarm...
        let hosts2 = self::hosts();
        hosts2.start_install(MAC, keys(), None, false).unwrap();
        hosts2.hand_out(MAC, UD, Handout::OnceThenWithheld, None);
        assert!(
            hosts2
                .hand_out(MAC, UD, Handout::OnceThenWithheld, None)
                .unwrap()
                .is_err()
        );
        // ...after it, the seed without its secrets, no alarm.
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(hosts.prove(MAC, Some("nope"), "alive"), Proof::Refused);
        assert_eq!(hosts.prove(MAC, None, "alive"), Proof::Refused);
        assert_eq!(hosts.prove(MAC, Some(&token), "onboarded"), Proof::Verified);
        let later = hosts.hand_out(MAC, UD, Handout::OnceThenWithheld, None);
        let Some(Ok(Granted::Withheld(v))) = later else {
            panic!("{later:?}");
        };
        assert!(v.secrets.is_none());
        assert_eq!(hosts.get(MAC).unwrap().install.unwrap().alarms, 0);
        assert_eq!(
            hosts
                .install_stats()
                .unproven_heartbeats
                .load(Ordering::Relaxed),
            2
        );
    }

    #[test]
    fn a_rebuild_rotates_token_and_instance_and_allows_overwrite() {
        let hosts = hosts();
        hosts.start_install(MAC, keys(), None, false).unwrap();
        let (id1, t1) = (hosts.install_view(MAC).unwrap().instance_id, token(&hosts));
        assert_eq!(hosts.prove(MAC, Some(&t1), "installed"), Proof::Verified);
        assert_eq!(hosts.install_done(MAC), Some(true));
        hosts
            .start_install(MAC, keys(), Some("ssh-ed25519 J k".into()), true)
            .unwrap();
        let view = hosts.install_view(MAC).unwrap();
        assert_ne!(view.instance_id, id1);
        assert!(view.overwrite);
        assert_eq!(hosts.install_done(MAC), Some(false));
        assert_eq!(hosts.prove(MAC, Some(&t1), "alive"), Proof::Refused);
        assert_ne!(token(&hosts), t1);
        assert_eq!(hosts.get(MAC).unwrap().machine.state, HostState::PxeReady);
    }

    #[test]
    fn secrets_survive_a_restart() {
        let store = Store::in_memory();
        let hosts = Hosts::open(store.clone()).unwrap();
        hosts
            .register(
                &Inventory::default(),
                Registration {
                    mac: MAC,
                    identity: HostIdentity::default(),
                    bmc: None,
                    unknown: BTreeMap::new(),
                },
            )
            .unwrap();
        hosts.start_install(MAC, keys(), None, false).unwrap();
        let t = token(&hosts);
        drop(hosts);
        let again = Hosts::open(store).unwrap();
        assert_eq!(again.prove(MAC, Some(&t), "alive"), Proof::Verified);
        assert!(
            again
                .hand_out(MAC, "/probe", Handout::Once, None)
                .unwrap()
                .is_err()
        );
    }

    #[test]
    fn random_hex_is_random() {
        let (a, b) = (random_hex(16), random_hex(16));
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
    }
}
