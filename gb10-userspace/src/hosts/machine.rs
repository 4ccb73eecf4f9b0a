//! The host life cycle as a pure, table-driven state machine with per-state timeouts and
//! a complete history; no I/O, so it is property-tested on its own.
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Where a host is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostState {
    Registered,
    PxeReady,
    PxeBooted,
    Installing,
    Installed,
    FirstBoot,
    Joining,
    Ready,
    Failed,
}

impl HostState {
    pub const ALL: [HostState; 9] = [
        Self::Registered,
        Self::PxeReady,
        Self::PxeBooted,
        Self::Installing,
        Self::Installed,
        Self::FirstBoot,
        Self::Joining,
        Self::Ready,
        Self::Failed,
    ];

    /// The snake_case name used in JSON, the dashboard and metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Self::Registered => "registered",
            Self::PxeReady => "pxe_ready",
            Self::PxeBooted => "pxe_booted",
            Self::Installing => "installing",
            Self::Installed => "installed",
            Self::FirstBoot => "first_boot",
            Self::Joining => "joining",
            Self::Ready => "ready",
            Self::Failed => "failed",
        }
    }

    /// Whether a network boot must exit to the local disk: the system is on it.
    pub fn boots_local(self) -> bool {
        matches!(
            self,
            Self::Installed | Self::FirstBoot | Self::Joining | Self::Ready
        )
    }
}

/// What happened to a host. Wire events come from DHCP, TFTP and HTTP through the
/// client event stream; the others from the API and the join step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "trigger", rename_all = "snake_case")]
pub enum Trigger {
    /// An operator asked for a reinstall (API).
    Rebuild,
    /// A DHCP request or lease.
    Dhcp,
    /// A boot loader, kernel or initrd was fetched (TFTP or HTTP).
    BootFetch { path: String },
    /// The installer fetched its seed.
    SeedFetch { path: String },
    /// The installer's post-install webhook (heartbeat phase `installed`).
    InstallDone,
    /// The installed system reported in.
    Heartbeat { phase: String },
    /// The join step logged in to the host.
    JoinStarted,
    /// The join command succeeded and the key is gone.
    Joined,
    /// Something went wrong; the reason is kept.
    Fail { reason: String },
    /// The state lasted longer than its timeout.
    Timeout { state: HostState, after_s: u64 },
}

/// The kind of a trigger, the key of the transition table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Rebuild,
    Dhcp,
    BootFetch,
    SeedFetch,
    InstallDone,
    Heartbeat,
    JoinStarted,
    Joined,
}

impl Trigger {
    fn kind(&self) -> Option<Kind> {
        Some(match self {
            Self::Rebuild => Kind::Rebuild,
            Self::Dhcp => Kind::Dhcp,
            Self::BootFetch { .. } => Kind::BootFetch,
            Self::SeedFetch { .. } => Kind::SeedFetch,
            Self::InstallDone => Kind::InstallDone,
            Self::Heartbeat { .. } => Kind::Heartbeat,
            Self::JoinStarted => Kind::JoinStarted,
            Self::Joined => Kind::Joined,
            Self::Fail { .. } | Self::Timeout { .. } => return None,
        })
    }
}

use HostState as S;

/// Every legal move but `failed`, which any state but `failed` may reach. A rebuild is
/// a routine transition from any resting state (seed 004); not while a rebuild is
/// already under way, so a double click cannot reset a machine twice.
const TABLE: &[(HostState, Kind, HostState)] = &[
    (S::Registered, Kind::Rebuild, S::PxeReady),
    (S::Installed, Kind::Rebuild, S::PxeReady),
    (S::FirstBoot, Kind::Rebuild, S::PxeReady),
    (S::Ready, Kind::Rebuild, S::PxeReady),
    (S::Failed, Kind::Rebuild, S::PxeReady),
    (S::PxeReady, Kind::BootFetch, S::PxeBooted),
    (S::PxeBooted, Kind::SeedFetch, S::Installing),
    // A host's first install, without a rebuild: its installer fetched the seed.
    (S::Registered, Kind::SeedFetch, S::Installing),
    (S::Installing, Kind::InstallDone, S::Installed),
    // The installed system's first heartbeat with the install's token: it booted from
    // disk. (Not its DHCP: with the network first in the boot order that is the
    // firmware's PXE request, long before sshd is up, and anyone can send one.)
    (S::Installed, Kind::Heartbeat, S::FirstBoot),
    (S::FirstBoot, Kind::JoinStarted, S::Joining),
    (S::Joining, Kind::Joined, S::Ready),
];

/// How long each state may last before the host is failed; `None`: no limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    pub pxe_ready: Option<Duration>,
    pub pxe_booted: Option<Duration>,
    pub installing: Option<Duration>,
    pub installed: Option<Duration>,
    pub first_boot: Option<Duration>,
    pub joining: Option<Duration>,
}

impl Default for Timeouts {
    fn default() -> Self {
        let min = |m: u64| Some(Duration::from_secs(m * 60));
        Self {
            // Waiting for the BMC reset and firmware to PXE.
            pxe_ready: min(20),
            pxe_booted: min(20),
            installing: min(120),
            installed: min(30),
            first_boot: min(30),
            joining: min(10),
        }
    }
}

impl Timeouts {
    /// The limit of `state`.
    pub fn of(&self, state: HostState) -> Option<Duration> {
        match state {
            S::PxeReady => self.pxe_ready,
            S::PxeBooted => self.pxe_booted,
            S::Installing => self.installing,
            S::Installed => self.installed,
            S::FirstBoot => self.first_boot,
            S::Joining => self.joining,
            S::Registered | S::Ready | S::Failed => None,
        }
    }
}

/// One change of state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transition {
    /// Unix time in milliseconds.
    pub at_ms: u64,
    pub from: HostState,
    pub to: HostState,
    #[serde(flatten)]
    pub trigger: Trigger,
}

/// Transitions kept per host; the oldest go first.
pub const HISTORY_LIMIT: usize = 500;

/// A refused transition.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{trigger} is not allowed in state {state}")]
pub struct Refused {
    pub state: &'static str,
    pub trigger: String,
}

/// A host's state, since when, why it failed, and how it got there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub state: HostState,
    /// When `state` was entered (Unix ms).
    pub since_ms: u64,
    /// Why the host failed (only in `failed`).
    #[serde(default)]
    pub reason: Option<String>,
    /// Oldest first, at most [`HISTORY_LIMIT`].
    pub history: Vec<Transition>,
}

impl Machine {
    /// A host registered at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            state: S::Registered,
            since_ms: now_ms,
            reason: None,
            history: Vec::new(),
        }
    }

    /// The state `trigger` leads to from `state`, or `None` when it is not allowed.
    pub fn next(state: HostState, trigger: &Trigger) -> Option<HostState> {
        match trigger.kind() {
            None => (state != S::Failed).then_some(S::Failed),
            Some(kind) => TABLE
                .iter()
                .find(|(from, k, _)| *from == state && *k == kind)
                .map(|(_, _, to)| *to),
        }
    }

    /// Applies `trigger` at `now_ms`, recording it; refuses an illegal one unchanged.
    pub fn apply(&mut self, trigger: Trigger, now_ms: u64) -> Result<HostState, Refused> {
        let Some(to) = Self::next(self.state, &trigger) else {
            return Err(Refused {
                state: self.state.label(),
                trigger: trigger_label(&trigger).to_owned(),
            });
        };
        self.reason = match &trigger {
            Trigger::Fail { reason } => Some(reason.clone()),
            Trigger::Timeout { state, after_s } => {
                Some(format!("no progress in {} for {after_s} s", state.label()))
            }
            _ => None,
        };
        if self.history.len() >= HISTORY_LIMIT {
            self.history.remove(0);
        }
        self.history.push(Transition {
            at_ms: now_ms,
            from: self.state,
            to,
            trigger,
        });
        self.state = to;
        self.since_ms = now_ms;
        Ok(to)
    }

    /// Fails the host when its state outlived its timeout; returns whether it did.
    pub fn check_timeout(&mut self, timeouts: &Timeouts, now_ms: u64) -> bool {
        let Some(limit) = timeouts.of(self.state) else {
            return false;
        };
        if now_ms.saturating_sub(self.since_ms) < limit.as_millis() as u64 {
            return false;
        }
        let trigger = Trigger::Timeout {
            state: self.state,
            after_s: limit.as_secs(),
        };
        self.apply(trigger, now_ms).is_ok()
    }
}

/// The snake_case name of a trigger, for errors and logs.
pub fn trigger_label(trigger: &Trigger) -> &'static str {
    match trigger {
        Trigger::Rebuild => "rebuild",
        Trigger::Dhcp => "dhcp",
        Trigger::BootFetch { .. } => "boot_fetch",
        Trigger::SeedFetch { .. } => "seed_fetch",
        Trigger::InstallDone => "install_done",
        Trigger::Heartbeat { .. } => "heartbeat",
        Trigger::JoinStarted => "join_started",
        Trigger::Joined => "joined",
        Trigger::Fail { .. } => "fail",
        Trigger::Timeout { .. } => "timeout",
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn trigger() -> impl Strategy<Value = Trigger> {
        prop_oneof![
            Just(Trigger::Rebuild),
            Just(Trigger::Dhcp),
            Just(Trigger::BootFetch { path: "k".into() }),
            Just(Trigger::SeedFetch { path: "s".into() }),
            Just(Trigger::InstallDone),
            Just(Trigger::Heartbeat {
                phase: "alive".into()
            }),
            Just(Trigger::JoinStarted),
            Just(Trigger::Joined),
            "[a-z]{1,8}".prop_map(|reason| Trigger::Fail { reason }),
        ]
    }

    /// The happy path, end to end.
    #[test]
    fn a_rebuild_walks_to_ready() {
        let mut m = Machine::new(0);
        let steps = [
            (Trigger::Rebuild, S::PxeReady),
            (
                Trigger::BootFetch {
                    path: "ipxe".into(),
                },
                S::PxeBooted,
            ),
            (Trigger::SeedFetch { path: "ud".into() }, S::Installing),
            (Trigger::InstallDone, S::Installed),
            (
                Trigger::Heartbeat {
                    phase: "onboarded".into(),
                },
                S::FirstBoot,
            ),
            (Trigger::JoinStarted, S::Joining),
            (Trigger::Joined, S::Ready),
            (Trigger::Rebuild, S::PxeReady),
        ];
        for (i, (t, want)) in steps.into_iter().enumerate() {
            assert_eq!(m.apply(t, i as u64), Ok(want));
        }
        assert_eq!(m.history.len(), 8);
        assert_eq!(
            m.apply(Trigger::Joined, 9).unwrap_err().to_string(),
            "joined is not allowed in state pxe_ready"
        );
    }

    proptest! {
        /// Any sequence of triggers: a refused one changes nothing; an accepted one is
        /// in the table (or is a failure from a non-failed state), is the last history
        /// entry, and links to the one before; `failed` always has a reason.
        #[test]
        fn transitions_follow_the_table(triggers in prop::collection::vec(trigger(), 0..60)) {
            let mut m = Machine::new(0);
            for (i, t) in triggers.into_iter().enumerate() {
                let before = m.clone();
                let legal = match t.kind() {
                    Some(k) => TABLE.iter().any(|(f, kk, _)| *f == before.state && *kk == k),
                    None => before.state != S::Failed,
                };
                match m.apply(t.clone(), i as u64 + 1) {
                    Ok(to) => {
                        prop_assert!(legal);
                        prop_assert_eq!(m.history.len(), before.history.len() + 1);
                        let last = m.history.last().unwrap();
                        prop_assert_eq!(last.from, before.state);
                        prop_assert_eq!(last.to, to);
                        prop_assert_eq!(&last.trigger, &t);
                        prop_assert_eq!(m.since_ms, i as u64 + 1);
                    }
                    Err(_) => {
                        prop_assert!(!legal);
                        prop_assert_eq!(&m, &before);
                    }
                }
                prop_assert_eq!(m.state == S::Failed, m.reason.is_some());
            }
            // The history is complete: each entry starts where the previous one ended,
            // and the last one ends in the current state.
            let mut at = S::Registered;
            for t in &m.history {
                prop_assert_eq!(t.from, at);
                at = t.to;
            }
            prop_assert_eq!(at, m.state);
        }

        /// Staying in a state with a timeout past it ends in `failed`, naming the
        /// state; a state without one never times out; before the limit nothing moves.
        #[test]
        fn timeouts_end_in_failed(
            triggers in prop::collection::vec(trigger(), 0..20),
            limit_s in 1u64..10_000,
            extra_ms in 0u64..1_000_000,
        ) {
            let limit = Some(Duration::from_secs(limit_s));
            let timeouts = Timeouts {
                pxe_ready: limit, pxe_booted: limit, installing: limit,
                installed: limit, first_boot: limit, joining: limit,
            };
            let mut m = Machine::new(0);
            for t in triggers {
                let _ = m.apply(t, 0);
            }
            let state = m.state;
            prop_assert!(!m.check_timeout(&timeouts, limit_s * 1000 - 1));
            prop_assert_eq!(m.state, state);
            let fired = m.check_timeout(&timeouts, limit_s * 1000 + extra_ms);
            prop_assert_eq!(fired, timeouts.of(state).is_some());
            if fired {
                prop_assert_eq!(m.state, S::Failed);
                let reason = m.reason.clone().unwrap();
                prop_assert!(reason.contains(state.label()), "{}", reason);
                let last = m.history.last().unwrap();
                prop_assert_eq!(last.from, state);
                let is_timeout = matches!(last.trigger, Trigger::Timeout { .. });
                prop_assert!(is_timeout);
            } else {
                prop_assert_eq!(m.state, state);
            }
        }
    }
}
