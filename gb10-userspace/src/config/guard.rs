//! `[guard]`: what the eBPF programs enforce. Rates are packets a second (0 = no limit),
//! bursts are packets.
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::{Base, ConfigError, invalid};

/// `[guard]` as written.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// `enforce` (drop), `monitor` (count what enforce would drop) or `off` (default enforce).
    #[arg(id = "guard_mode", long = "guard", env = "GB10_GUARD_MODE")]
    pub mode: Option<GuardMode>,
    /// Interfaces that must not carry provisioning traffic (comma-separated); default every
    /// interface that is up but loopback, the LAN and the LAN bridge's ports, followed as
    /// interfaces come and go.
    #[arg(
        id = "guard_interfaces",
        long = "guard-interfaces",
        env = "GB10_GUARD_INTERFACES",
        value_delimiter = ','
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<String>>,
    /// DHCP/TFTP requests a second per unknown client MAC (default 20).
    #[arg(long = "guard-client-rate", env = "GB10_GUARD_CLIENT_RATE")]
    pub client_rate: Option<u64>,
    /// Burst per unknown client (default 60).
    #[arg(long = "guard-client-burst", env = "GB10_GUARD_CLIENT_BURST")]
    pub client_burst: Option<u64>,
    /// Requests a second from all unknown clients together (default 2500).
    #[arg(long = "guard-global-rate", env = "GB10_GUARD_GLOBAL_RATE")]
    pub global_rate: Option<u64>,
    /// Burst of all unknown clients together (default 5000).
    #[arg(long = "guard-global-burst", env = "GB10_GUARD_GLOBAL_BURST")]
    pub global_burst: Option<u64>,
    /// Requests a second per inventory host; they are exempt from the global cap (default 100).
    #[arg(long = "guard-known-rate", env = "GB10_GUARD_KNOWN_RATE")]
    pub known_rate: Option<u64>,
    /// Burst per inventory host (default 300).
    #[arg(long = "guard-known-burst", env = "GB10_GUARD_KNOWN_BURST")]
    pub known_burst: Option<u64>,
}

/// What the guard does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum GuardMode {
    /// Drop floods, malformed DHCP/TFTP frames, and provisioning traffic on other interfaces.
    #[default]
    Enforce,
    /// Count what enforce would drop; drop nothing.
    Monitor,
    /// Neither.
    Off,
}

/// Validated `[guard]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuardConfig {
    pub mode: GuardMode,
    /// `None`: every other interface that is up.
    pub interfaces: Option<Vec<String>>,
    /// (rate, burst) pairs.
    pub client: (u64, u64),
    pub global: (u64, u64),
    pub known: (u64, u64),
}

impl RawGuard {
    pub(super) fn validate(self, base: &Base<'_>) -> Result<GuardConfig, ConfigError> {
        let RawGuard {
            mode,
            interfaces,
            client_rate,
            client_burst,
            global_rate,
            global_burst,
            known_rate,
            known_burst,
        } = self;
        if let Some(list) = &interfaces
            && let Some(bad) = list
                .iter()
                .find(|i| i.as_str() == base.lan_iface || i.is_empty())
        {
            return Err(invalid(
                "guard.interfaces",
                bad,
                "the guard must not run on the LAN interface itself (nor an empty name)",
            ));
        }
        Ok(GuardConfig {
            mode: mode.unwrap_or_default(),
            interfaces,
            client: (client_rate.unwrap_or(20), client_burst.unwrap_or(60)),
            global: (global_rate.unwrap_or(2500), global_burst.unwrap_or(5000)),
            known: (known_rate.unwrap_or(100), known_burst.unwrap_or(300)),
        })
    }
}
