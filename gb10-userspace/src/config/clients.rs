//! `[clients]`: how much the daemon remembers about LAN clients. Anyone on the LAN can
//! make up MACs and post heartbeats, so every table keyed by a client has a bound, and
//! every record a size.
use clap::Args;
use serde::{Deserialize, Serialize};

use super::{Base, ConfigError, count};

/// `[clients] max_records` when unset: four 1,000-machine racks of machines the
/// inventory does not name, beside every inventory host and leased client (kept anyway).
pub const DEFAULT_MAX_RECORDS: usize = 4096;
/// `[clients] timeline` when unset: a boot chain with retries is 20-30 events, and
/// repeats of one heartbeat fold into one entry.
pub const DEFAULT_TIMELINE: usize = 100;
/// `[clients] message_max` when unset: a status line or an installer's last error.
pub const DEFAULT_MESSAGE_MAX: usize = 256;
/// `[clients] strays` when unset.
pub const DEFAULT_STRAYS: usize = 256;

/// `[clients]` as written.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClients {
    /// Client records kept (and saved), and rows of the per-client DHCP and TFTP
    /// counters (default 4096). Past it, the least recently seen client that is neither
    /// an inventory host, a host registered through the API, nor holding a live lease is
    /// forgotten to make room; those are always kept, beyond the bound if need be (their
    /// number is bounded by the inventory and the pools, and the table has room for the
    /// pools' addresses on top of this bound).
    #[arg(
        id = "clients_max_records",
        long = "clients-max-records",
        env = "GB10_CLIENTS_MAX_RECORDS"
    )]
    pub max_records: Option<usize>,
    /// Timeline entries kept per client, oldest dropped first; consecutive identical
    /// heartbeats fold into one entry with a count (default 100).
    #[arg(
        id = "clients_timeline",
        long = "clients-timeline",
        env = "GB10_CLIENTS_TIMELINE"
    )]
    pub timeline: Option<usize>,
    /// Bytes of a heartbeat's `message` kept; a longer one is cut at a character boundary
    /// and marked with `…` (default 256).
    #[arg(
        id = "clients_message_max",
        long = "clients-message-max",
        env = "GB10_CLIENTS_MESSAGE_MAX"
    )]
    pub message_max: Option<usize>,
    /// Heartbeats from a MAC that is not in the inventory, not registered, holds no
    /// lease and was never seen booting are kept apart, in memory only, for at most this
    /// many MACs, the least recently heard going first; 0 refuses them (default 256).
    /// They never displace a client record nor cost a disk write.
    #[arg(
        id = "clients_strays",
        long = "clients-strays",
        env = "GB10_CLIENTS_STRAYS"
    )]
    pub strays: Option<usize>,
}

/// Validated `[clients]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientsConfig {
    pub max_records: usize,
    pub timeline: usize,
    pub message_max: usize,
    pub strays: usize,
}

impl Default for ClientsConfig {
    fn default() -> Self {
        Self {
            max_records: DEFAULT_MAX_RECORDS,
            timeline: DEFAULT_TIMELINE,
            message_max: DEFAULT_MESSAGE_MAX,
            strays: DEFAULT_STRAYS,
        }
    }
}

impl RawClients {
    pub(super) fn validate(self, _: &Base<'_>) -> Result<ClientsConfig, ConfigError> {
        let RawClients {
            max_records,
            timeline,
            message_max,
            strays,
        } = self;
        Ok(ClientsConfig {
            max_records: count(
                "clients.max_records",
                max_records,
                DEFAULT_MAX_RECORDS,
                16..=1_000_000,
            )?,
            timeline: count("clients.timeline", timeline, DEFAULT_TIMELINE, 8..=10_000)?,
            message_max: count(
                "clients.message_max",
                message_max,
                DEFAULT_MESSAGE_MAX,
                16..=4096,
            )?,
            strays: count("clients.strays", strays, DEFAULT_STRAYS, 0..=65_536)?,
        })
    }
}
