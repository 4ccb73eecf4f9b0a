//! `[tftp]`: the read-only TFTP service on the LAN address (root `data_path/tftp`).
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{Base, ConfigError, count, duration};

/// Default TFTP port.
pub const DEFAULT_TFTP_PORT: u16 = 69;
/// Default cap on concurrent TFTP transfers.
pub const DEFAULT_TFTP_MAX_SESSIONS: usize = 64;
/// Default TFTP retransmission timeout (tftp-hpa's too).
pub const DEFAULT_TFTP_TIMEOUT: Duration = Duration::from_secs(1);
/// Default consecutive TFTP timeouts before a client is given up.
pub const DEFAULT_TFTP_RETRIES: u32 = 5;
/// Default cap on transfers from one client address: a firmware runs one or two at once
/// (EDK2's size probe, then the file); eight leaves room for a few machines behind one
/// relay or NAT, and keeps one address to an eighth of the default 64 slots.
pub const DEFAULT_TFTP_MAX_PER_CLIENT: usize = 8;
/// Default timeouts before a transfer whose first packet was never acknowledged ends:
/// 1 + 2 + 4 s with the default timeout. A client that lost three answers in a row asks
/// again (its request starts a new transfer); one that never asked holds no slot long.
pub const DEFAULT_TFTP_FIRST_ACK_RETRIES: u32 = 2;

/// `[tftp]` as written.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTftp {
    /// UDP port of the TFTP listener on the LAN address (default 69).
    #[arg(id = "tftp_port", long = "tftp-port", env = "GB10_TFTP_PORT")]
    pub port: Option<u16>,
    /// Transfers running at once; requests beyond get a "busy" error (default 64).
    #[arg(
        id = "tftp_max_sessions",
        long = "tftp-max-sessions",
        env = "GB10_TFTP_MAX_SESSIONS"
    )]
    pub max_sessions: Option<usize>,
    /// Transfers from one client address at once; more get "busy" (default 8).
    #[arg(
        id = "tftp_max_per_client",
        long = "tftp-max-per-client",
        env = "GB10_TFTP_MAX_PER_CLIENT"
    )]
    pub max_per_client: Option<usize>,
    /// Timeouts after which a transfer whose first packet (OACK or first DATA) was never
    /// acknowledged is given up (default 2: about 7 s with the default timeout).
    #[arg(
        id = "tftp_first_ack_retries",
        long = "tftp-first-ack-retries",
        env = "GB10_TFTP_FIRST_ACK_RETRIES"
    )]
    pub first_ack_retries: Option<u32>,
    /// Wait for an ACK before retransmitting, like `1s` or `500ms`, doubled per retry up
    /// to 8x; a client's `timeout` option shortens it (default 1s).
    #[arg(id = "tftp_timeout", long = "tftp-timeout", env = "GB10_TFTP_TIMEOUT")]
    pub timeout: Option<String>,
    /// Consecutive timeouts after which a client is given up (default 5).
    #[arg(id = "tftp_retries", long = "tftp-retries", env = "GB10_TFTP_RETRIES")]
    pub retries: Option<u32>,
    /// Answer transfers from the listening port instead of one port per transfer, for
    /// clients behind a relay or firewall that only passes port 69 (default false).
    #[arg(
        id = "tftp_single_port",
        long = "tftp-single-port",
        env = "GB10_TFTP_SINGLE_PORT",
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub single_port: Option<bool>,
}

/// Validated `[tftp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TftpConfig {
    pub port: u16,
    pub max_sessions: usize,
    pub max_per_client: usize,
    pub timeout: Duration,
    pub retries: u32,
    pub first_ack_retries: u32,
    pub single_port: bool,
}

impl RawTftp {
    pub(super) fn validate(self, _: &Base<'_>) -> Result<TftpConfig, ConfigError> {
        let RawTftp {
            port,
            max_sessions,
            max_per_client,
            first_ack_retries,
            timeout,
            retries,
            single_port,
        } = self;
        Ok(TftpConfig {
            port: port.unwrap_or(DEFAULT_TFTP_PORT),
            max_sessions: count(
                "tftp.max_sessions",
                max_sessions,
                DEFAULT_TFTP_MAX_SESSIONS,
                1..=65536,
            )?,
            max_per_client: count(
                "tftp.max_per_client",
                max_per_client,
                DEFAULT_TFTP_MAX_PER_CLIENT,
                1..=65536,
            )?,
            first_ack_retries: count(
                "tftp.first_ack_retries",
                first_ack_retries,
                DEFAULT_TFTP_FIRST_ACK_RETRIES,
                0..=100,
            )?,
            timeout: duration(
                "tftp.timeout",
                timeout,
                DEFAULT_TFTP_TIMEOUT,
                Duration::from_millis(100)..=Duration::from_secs(255),
            )?,
            retries: count("tftp.retries", retries, DEFAULT_TFTP_RETRIES, 1..=100)?,
            single_port: single_port.unwrap_or(false),
        })
    }
}
