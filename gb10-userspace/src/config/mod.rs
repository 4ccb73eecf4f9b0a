//! Configuration: the TOML file, `GB10_*` environment and flags, layered into one typed,
//! validated [`Config`] (precedence flag > env > file > default). Each `[section]` lives
//! in its own module with its raw (as written) and validated types side by side.
mod admin;
mod boot;
mod clients;
mod dhcp;
mod guard;
mod http;
#[cfg(test)]
mod tests;
mod tftp;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, ValueEnum};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use self::{
    admin::{AdminConfig, RawAdmin, Secret},
    boot::{BootConfig, InstalledBoot, RawBoot, UnknownClients},
    clients::{ClientsConfig, RawClients},
    dhcp::{DhcpConfig, RawDhcp, RelayRange},
    guard::{GuardConfig, GuardMode, RawGuard},
    http::{DEFAULT_HTTP_MAX_CONNECTIONS, HttpConfig, HttpLimits, Mount, RawHttp},
    tftp::{RawTftp, TftpConfig},
};

/// Why a configuration could not be used. Every message names the key to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: Box<toml::de::Error>,
    },
    #[error(
        "`{key}` is required and has no default: set it in the config file, with --{flag}, or with {env}"
    )]
    Missing {
        key: &'static str,
        flag: &'static str,
        env: &'static str,
    },
    #[error("`{key}` = {value:?}: {reason}")]
    Invalid {
        key: &'static str,
        value: String,
        reason: String,
    },
}

/// How the DHCP responder takes part on the LAN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Full DHCP on an isolated LAN: leases from the range, fixed hosts; `lan_ip` is
    /// asserted on `lan_iface`.
    #[default]
    Direct,
    /// Proxy-DHCP beside the site's DHCP server: answers PXE clients only, never hands
    /// out addresses; the LAN address is whatever the interface has.
    Proxy,
}

/// Whether the XDP program must, may or must not be attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Attach when possible; without it, serve anyway and say so in the log and on
    /// `/metrics` (`gb10_xdp_attached 0`).
    #[default]
    Auto,
    /// Refuse to start when the program cannot be attached.
    Required,
    /// Never attach.
    Off,
}

/// The configuration as written in the file or given as flags/env: every key optional,
/// unknown keys rejected. Each field is at once a TOML key, a flag and a `GB10_*` variable.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// LAN interface the provisioning network is on (required, no default). Every
    /// listener is confined to it.
    #[arg(long, env = "GB10_LAN_IFACE")]
    pub lan_iface: Option<String>,
    /// LAN address with prefix (default 10.88.0.1/24); asserted on `lan_iface` in direct mode.
    #[arg(long, env = "GB10_LAN_IP")]
    pub lan_ip: Option<String>,
    /// `direct` (full DHCP on an isolated LAN) or `proxy` (proxy-DHCP beside the site's
    /// DHCP server). Default direct.
    #[arg(long, env = "GB10_MODE")]
    pub mode: Option<Mode>,
    /// Root of served files and state: tftp/, www/, templates/, inventory.toml, state/
    /// (default /data/provision).
    #[arg(long, env = "GB10_DATA_PATH")]
    pub data_path: Option<PathBuf>,
    /// TCP port of the HTTP service on the LAN address (default 80).
    #[arg(long, env = "GB10_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// Port of the health listener on 127.0.0.1 (`/healthz`, `/livez`, `/metrics`), for
    /// probes that must answer while the LAN has no address; 0 turns it off (default 9180).
    #[arg(long, env = "GB10_HEALTH_PORT")]
    pub health_port: Option<u16>,
    /// Subnet (CIDR) of the site network proxy-DHCP serves; proxy mode only.
    #[arg(long, env = "GB10_PROXY_SUBNET")]
    pub proxy_subnet: Option<String>,
    #[command(flatten)]
    #[serde(default)]
    pub dhcp: RawDhcp,
    #[command(flatten)]
    #[serde(default)]
    pub xdp: RawXdp,
    #[command(flatten)]
    #[serde(default)]
    pub boot: RawBoot,
    #[command(flatten)]
    #[serde(default)]
    pub http: RawHttp,
    #[command(flatten)]
    #[serde(default)]
    pub guard: RawGuard,
    #[command(flatten)]
    #[serde(default)]
    pub tftp: RawTftp,
    #[command(flatten)]
    #[serde(default)]
    pub admin: RawAdmin,
    #[command(flatten)]
    #[serde(default)]
    pub clients: RawClients,
}

/// `[xdp]`: the XDP program on the LAN interface.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXdp {
    /// `auto`, `required` or `off` (default auto).
    #[arg(id = "xdp_mode", long = "xdp", env = "GB10_XDP_MODE")]
    pub mode: Option<XdpMode>,
}

impl RawConfig {
    /// Reads a config file; unknown keys are an error that names them.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source: Box::new(source),
        })
    }

    /// Parses config-file `text`; unknown keys are an error that names them.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// `over`'s keys where set, ours elsewhere. Generic over the schema: both sides go
    /// through their serde form, a top-level key or a key of a `[section]` that `over`
    /// sets replaces ours whole (so a table-valued key such as `[http] mounts` from flags
    /// replaces the file's table rather than merging into it). A new key needs nothing
    /// here.
    pub fn overlay(self, over: RawConfig) -> RawConfig {
        use serde_json::Value;
        fn merge(base: &mut Value, over: Value, depth: u8) {
            match (base, over) {
                (Value::Object(base), Value::Object(over)) if depth > 0 => {
                    for (key, value) in over {
                        if value.is_null() {
                            continue;
                        }
                        match base.get_mut(&key) {
                            Some(slot) => merge(slot, value, depth - 1),
                            None => {
                                base.insert(key, value);
                            }
                        }
                    }
                }
                (slot, value) => *slot = value,
            }
        }
        // Plain data with string keys: both conversions hold by construction.
        let mut base = serde_json::to_value(self).expect("RawConfig serialises");
        merge(
            &mut base,
            serde_json::to_value(over).expect("RawConfig serialises"),
            2,
        );
        serde_json::from_value(base).expect("a merge of two RawConfigs is a RawConfig")
    }
}

/// Default LAN address, as the seed's Helm values have it.
pub const DEFAULT_LAN_IP: &str = "10.88.0.1/24";
/// Default root of served files and state.
pub const DEFAULT_DATA_PATH: &str = "/data/provision";
/// Default HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 80;
/// Default port of the loopback health listener.
pub const DEFAULT_HEALTH_PORT: u16 = 9180;

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub lan_iface: String,
    /// The configured LAN address and subnet (asserted in direct mode).
    pub lan_ip: Ipv4Net,
    pub mode: Mode,
    pub data_path: PathBuf,
    pub http_port: u16,
    /// 0 = no health listener.
    pub health_port: u16,
    pub proxy_subnet: Option<Ipv4Net>,
    pub dhcp: DhcpConfig,
    pub xdp: XdpMode,
    pub boot: BootConfig,
    pub http: HttpConfig,
    pub guard: GuardConfig,
    pub admin: AdminConfig,
    pub tftp: TftpConfig,
    pub clients: ClientsConfig,
}

/// The validated top-level keys every section may depend on (the LAN for DHCP ranges,
/// the interface for the guard, `data_path` for defaults beneath it).
pub struct Base<'a> {
    pub lan_iface: &'a str,
    pub lan_ip: Ipv4Net,
    pub data_path: &'a Path,
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        // Destructured without `..`: a new key must be taken up here.
        let RawConfig {
            lan_iface,
            lan_ip,
            mode,
            data_path,
            http_port,
            health_port,
            proxy_subnet,
            dhcp,
            xdp: RawXdp { mode: xdp },
            boot,
            http,
            guard,
            admin,
            tftp,
            clients,
        } = raw;
        let lan_iface = lan_iface
            .filter(|s| !s.is_empty())
            .ok_or(ConfigError::Missing {
                key: "lan_iface",
                flag: "lan-iface",
                env: "GB10_LAN_IFACE",
            })?;
        if lan_iface.len() >= libc::IFNAMSIZ || lan_iface.contains(['/', ' ', '\0']) {
            return Err(invalid(
                "lan_iface",
                &lan_iface,
                "not a valid interface name",
            ));
        }
        let lan_ip_text = lan_ip.unwrap_or_else(|| DEFAULT_LAN_IP.to_owned());
        let lan_ip: Ipv4Net = lan_ip_text.parse().map_err(|e| {
            invalid(
                "lan_ip",
                &lan_ip_text,
                format!("{e}; write ADDRESS/PREFIX like 198.18.0.1/24"),
            )
        })?;
        let proxy_subnet = proxy_subnet
            .map(|s| {
                s.parse::<Ipv4Net>().map(|n| n.trunc()).map_err(|e| {
                    invalid(
                        "proxy_subnet",
                        &s,
                        format!("{e}; write a CIDR like 198.18.8.0/24"),
                    )
                })
            })
            .transpose()?;
        let data_path: PathBuf = data_path.unwrap_or_else(|| DEFAULT_DATA_PATH.into());
        let base = Base {
            lan_iface: &lan_iface,
            lan_ip,
            data_path: &data_path,
        };
        let dhcp = dhcp.validate(&base)?;
        let boot = boot.validate(&base)?;
        let http = http.validate(&base)?;
        let guard = guard.validate(&base)?;
        let admin = admin.validate(&base)?;
        let tftp = tftp.validate(&base)?;
        let clients = clients.validate(&base)?;
        Ok(Config {
            lan_iface,
            lan_ip,
            mode: mode.unwrap_or_default(),
            data_path,
            http_port: http_port.unwrap_or(DEFAULT_HTTP_PORT),
            health_port: health_port.unwrap_or(DEFAULT_HEALTH_PORT),
            proxy_subnet,
            dhcp,
            xdp: xdp.unwrap_or_default(),
            boot,
            http,
            guard,
            admin,
            tftp,
            clients,
        })
    }
}

/// An [`ConfigError::Invalid`] for `key`.
pub(crate) fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A duration key (`12h`, `500ms`): `default` when unset, and within `range`.
pub(crate) fn duration(
    key: &'static str,
    text: Option<String>,
    default: Duration,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<Duration, ConfigError> {
    let value = match text {
        Some(text) => humantime::parse_duration(&text).map_err(|e| {
            invalid(
                key,
                &text,
                format!("{e}; write a duration like 1s, 30m or 12h"),
            )
        })?,
        None => default,
    };
    if !range.contains(&value) {
        let (lo, hi) = (range.start(), range.end());
        let bound = if *hi == Duration::MAX {
            format!("must be at least {}", humantime::format_duration(*lo))
        } else {
            format!(
                "must be between {} and {}",
                humantime::format_duration(*lo),
                humantime::format_duration(*hi)
            )
        };
        return Err(invalid(
            key,
            &humantime::format_duration(value).to_string(),
            bound,
        ));
    }
    Ok(value)
}

/// A count key: `default` when unset, and within `range`.
pub(crate) fn count<T>(
    key: &'static str,
    value: Option<T>,
    default: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<T, ConfigError>
where
    T: PartialOrd + std::fmt::Display + Copy,
{
    let value = value.unwrap_or(default);
    if !range.contains(&value) {
        return Err(invalid(
            key,
            &value.to_string(),
            format!("must be {}..={}", range.start(), range.end()),
        ));
    }
    Ok(value)
}
