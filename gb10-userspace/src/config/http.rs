//! `[http]`: static mounts beside `data_path/www`, the seed owner check, and the
//! connection limits of every HTTP listener.
use std::{path::PathBuf, time::Duration};

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{Base, ConfigError, count, duration, invalid};

/// `[http] max_connections` when unset.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1024;
/// `[http] max_connections_per_address` when unset: far more than one machine opens
/// (firmware and boot loaders use one connection, an installer a few; an operator's
/// dashboards and `clients watch` up to the 32 event streams a listener allows), few
/// enough that one address holds 1/16 of the slots.
pub const DEFAULT_HTTP_MAX_PER_ADDRESS: usize = 64;
/// `[http] request_timeout` when unset: our requests are a head and at most a small
/// body (a heartbeat, an API call); 30 s is hyper's header timeout and plenty on a lossy
/// link.
pub const DEFAULT_HTTP_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// `[http] idle_timeout` when unset (nginx keeps idle connections 75 s, Apache 5 s).
pub const DEFAULT_HTTP_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// `[http] write_timeout` when unset: nginx's `send_timeout`. It bounds a write that
/// makes no progress, never a whole response, so a 1 GiB image at any rate that moves
/// at least every minute completes.
pub const DEFAULT_HTTP_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// `[http]` as written.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Extra static directories by URL prefix, beside `data_path/www` at `/`. In the file a
    /// table (`mounts = { "/repos/" = "/data/provision/repos" }`); as flags
    /// `--http-mount /repos/=/data/provision/repos` (repeatable); in the environment
    /// `GB10_HTTP_MOUNTS=/repos/=/a,/hf/=/b`. Flags or env replace the file's table whole.
    #[arg(
        id = "http_mounts",
        long = "http-mount",
        env = "GB10_HTTP_MOUNTS",
        value_delimiter = ',',
        value_name = "PREFIX=DIR"
    )]
    #[serde(default, with = "mount_table")]
    pub mounts: Option<Vec<Mount>>,
    /// Serve a host's seed only to the host's fixed IP or DHCP lease, and let a heartbeat
    /// without an install token move only the state of the MAC whose address sent it
    /// (default true). Turn off only in labs where clients reach the server through NAT.
    #[arg(long = "seed-owner-check", env = "GB10_HTTP_SEED_OWNER_CHECK")]
    pub seed_owner_check: Option<bool>,
    /// Open HTTP connections served at once on the LAN (default 1024); beyond it new
    /// connections wait in the kernel's accept queue instead of taking descriptors.
    #[arg(long = "http-max-connections", env = "GB10_HTTP_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Open HTTP connections from one client address (default 64); a connection beyond
    /// it gets `503` and is closed at once. Applies to the LAN and admin listeners.
    #[arg(
        long = "http-max-connections-per-address",
        env = "GB10_HTTP_MAX_CONNECTIONS_PER_ADDRESS"
    )]
    pub max_connections_per_address: Option<usize>,
    /// Time for a whole request, head and body, from its first byte (default 30s); a
    /// client that trickles one is cut off. The response is not part of it.
    #[arg(long = "http-request-timeout", env = "GB10_HTTP_REQUEST_TIMEOUT")]
    pub request_timeout: Option<String>,
    /// Time a connection may sit with no request before it is closed (default 30s).
    #[arg(long = "http-idle-timeout", env = "GB10_HTTP_IDLE_TIMEOUT")]
    pub idle_timeout: Option<String>,
    /// Time a response may make no progress (the client reads nothing) before the
    /// connection is closed (default 60s); a slow download that keeps moving never ends
    /// by it.
    #[arg(long = "http-write-timeout", env = "GB10_HTTP_WRITE_TIMEOUT")]
    pub write_timeout: Option<String>,
}

/// One `PREFIX=DIR` static mount as written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub prefix: String,
    pub dir: PathBuf,
}

impl std::str::FromStr for Mount {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (prefix, dir) = s.split_once('=').ok_or_else(|| {
            format!("`{s}`: write PREFIX=DIR, like /repos/=/data/provision/repos")
        })?;
        Ok(Self {
            prefix: prefix.to_owned(),
            dir: dir.into(),
        })
    }
}

/// `[http] mounts` as a TOML table of prefix → directory.
mod mount_table {
    use std::{collections::BTreeMap, path::PathBuf};

    use serde::{Deserialize as _, Deserializer, Serializer};

    use super::Mount;

    pub fn serialize<S: Serializer>(mounts: &Option<Vec<Mount>>, s: S) -> Result<S::Ok, S::Error> {
        match mounts {
            Some(mounts) => s.collect_map(mounts.iter().map(|m| (&m.prefix, &m.dir))),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Mount>>, D::Error> {
        let table = Option::<BTreeMap<String, PathBuf>>::deserialize(d)?;
        Ok(table.map(|t| {
            t.into_iter()
                .map(|(prefix, dir)| Mount { prefix, dir })
                .collect()
        }))
    }
}

/// Validated `[http]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// URL prefix (starting and ending with `/`) → directory, longest prefix first.
    pub mounts: Vec<(String, PathBuf)>,
    pub seed_owner_check: bool,
    pub limits: HttpLimits,
}

/// What every HTTP listener (LAN, admin, loopback health) allows one connection and
/// one client address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Connections served at once; the next waits in the accept queue.
    pub max_connections: usize,
    /// Connections from one address at once; the next is refused with 503.
    pub max_per_address: usize,
    /// A request's head and body, from its first byte.
    pub request_timeout: Duration,
    /// A connection waiting for its next request.
    pub idle_timeout: Duration,
    /// A write that makes no progress.
    pub write_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: DEFAULT_HTTP_MAX_CONNECTIONS,
            max_per_address: DEFAULT_HTTP_MAX_PER_ADDRESS,
            request_timeout: DEFAULT_HTTP_REQUEST_TIMEOUT,
            idle_timeout: DEFAULT_HTTP_IDLE_TIMEOUT,
            write_timeout: DEFAULT_HTTP_WRITE_TIMEOUT,
        }
    }
}

impl RawHttp {
    pub(super) fn validate(self, _: &Base<'_>) -> Result<HttpConfig, ConfigError> {
        let RawHttp {
            mounts,
            seed_owner_check,
            max_connections,
            max_connections_per_address,
            request_timeout,
            idle_timeout,
            write_timeout,
        } = self;
        let second = Duration::from_secs(1);
        let hour = Duration::from_secs(3600);
        Ok(HttpConfig {
            mounts: validate_mounts(mounts.unwrap_or_default())?,
            seed_owner_check: seed_owner_check.unwrap_or(true),
            limits: HttpLimits {
                max_connections: count(
                    "http.max_connections",
                    max_connections,
                    DEFAULT_HTTP_MAX_CONNECTIONS,
                    1..=1_000_000,
                )?,
                max_per_address: count(
                    "http.max_connections_per_address",
                    max_connections_per_address,
                    DEFAULT_HTTP_MAX_PER_ADDRESS,
                    1..=1_000_000,
                )?,
                request_timeout: duration(
                    "http.request_timeout",
                    request_timeout,
                    DEFAULT_HTTP_REQUEST_TIMEOUT,
                    second..=hour,
                )?,
                idle_timeout: duration(
                    "http.idle_timeout",
                    idle_timeout,
                    DEFAULT_HTTP_IDLE_TIMEOUT,
                    second..=hour,
                )?,
                write_timeout: duration(
                    "http.write_timeout",
                    write_timeout,
                    DEFAULT_HTTP_WRITE_TIMEOUT,
                    second..=hour,
                )?,
            },
        })
    }
}

fn validate_mounts(mounts: Vec<Mount>) -> Result<Vec<(String, PathBuf)>, ConfigError> {
    let mut out: Vec<(String, PathBuf)> = Vec::with_capacity(mounts.len());
    for Mount { prefix, dir } in mounts {
        let bad = |reason: &str| {
            invalid(
                "http.mounts",
                &format!("{prefix}={}", dir.display()),
                reason,
            )
        };
        if !prefix.starts_with('/') || !prefix.ends_with('/') || prefix == "/" {
            return Err(bad(
                "the prefix must start and end with `/`, like /repos/ (`/` is data_path/www)",
            ));
        }
        if prefix.split('/').any(|seg| seg == ".." || seg == ".")
            || prefix.contains(['\\', '%', '\0', '?', '#'])
        {
            return Err(bad(
                "the prefix may not hold `.`/`..` segments, `\\`, `%`, `?` or `#`",
            ));
        }
        if !dir.is_absolute() {
            return Err(bad("the directory must be an absolute path"));
        }
        if out.iter().any(|(p, _)| *p == prefix) {
            return Err(bad("the prefix is mounted twice"));
        }
        out.push((prefix, dir));
    }
    // Longest prefix first, so /repos/debian/ wins over /repos/.
    out.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
    Ok(out)
}
