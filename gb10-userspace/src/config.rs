//! Configuration: the TOML file, `GB10_*` environment and flags, layered into one typed,
//! validated [`Config`] (precedence flag > env > file > default).
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, ValueEnum};
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

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
    pub tftp: RawTftp,
}

/// `[dhcp]`: the direct-mode DHCP server.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDhcp {
    /// Address pool `START-END` inside the LAN subnet (default: .100-.200 of `lan_ip`'s subnet).
    #[arg(id = "dhcp_range", long = "dhcp-range", env = "GB10_DHCP_RANGE")]
    pub range: Option<String>,
    /// Lease duration, like `12h` or `30m` (default 12h).
    #[arg(long = "lease-time", env = "GB10_DHCP_LEASE_TIME")]
    pub lease_time: Option<String>,
}

/// `[xdp]`: the XDP program on the LAN interface.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawXdp {
    /// `auto`, `required` or `off` (default auto).
    #[arg(id = "xdp_mode", long = "xdp", env = "GB10_XDP_MODE")]
    pub mode: Option<XdpMode>,
}

/// `[tftp]`: the read-only TFTP service on the LAN address (root `data_path/tftp`).
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

    /// `over`'s keys where set, ours elsewhere.
    pub fn overlay(self, over: RawConfig) -> RawConfig {
        let RawConfig {
            lan_iface,
            lan_ip,
            mode,
            data_path,
            http_port,
            proxy_subnet,
            dhcp: RawDhcp { range, lease_time },
            xdp: RawXdp { mode: xdp_mode },
            tftp,
        } = over;
        RawConfig {
            lan_iface: lan_iface.or(self.lan_iface),
            lan_ip: lan_ip.or(self.lan_ip),
            mode: mode.or(self.mode),
            data_path: data_path.or(self.data_path),
            http_port: http_port.or(self.http_port),
            proxy_subnet: proxy_subnet.or(self.proxy_subnet),
            dhcp: RawDhcp {
                range: range.or(self.dhcp.range),
                lease_time: lease_time.or(self.dhcp.lease_time),
            },
            xdp: RawXdp {
                mode: xdp_mode.or(self.xdp.mode),
            },
            tftp: self.tftp.overlay(tftp),
        }
    }
}

impl RawTftp {
    fn overlay(self, over: RawTftp) -> RawTftp {
        let RawTftp {
            port,
            max_sessions,
            timeout,
            retries,
            single_port,
        } = over;
        RawTftp {
            port: port.or(self.port),
            max_sessions: max_sessions.or(self.max_sessions),
            timeout: timeout.or(self.timeout),
            retries: retries.or(self.retries),
            single_port: single_port.or(self.single_port),
        }
    }
}

/// Default LAN address, as the seed's Helm values have it.
pub const DEFAULT_LAN_IP: &str = "10.88.0.1/24";
/// Default root of served files and state.
pub const DEFAULT_DATA_PATH: &str = "/data/provision";
/// Default HTTP port.
pub const DEFAULT_HTTP_PORT: u16 = 80;
/// Default TFTP port.
pub const DEFAULT_TFTP_PORT: u16 = 69;
/// Default cap on concurrent TFTP transfers.
pub const DEFAULT_TFTP_MAX_SESSIONS: usize = 64;
/// Default TFTP retransmission timeout (tftp-hpa's too).
pub const DEFAULT_TFTP_TIMEOUT: Duration = Duration::from_secs(1);
/// Default consecutive TFTP timeouts before a client is given up.
pub const DEFAULT_TFTP_RETRIES: u32 = 5;
/// Default lease duration.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(12 * 3600);

/// The validated configuration the daemon runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub lan_iface: String,
    /// The configured LAN address and subnet (asserted in direct mode).
    pub lan_ip: Ipv4Net,
    pub mode: Mode,
    pub data_path: PathBuf,
    pub http_port: u16,
    pub proxy_subnet: Option<Ipv4Net>,
    pub dhcp: DhcpConfig,
    pub xdp: XdpMode,
    pub tftp: TftpConfig,
}

/// Validated `[tftp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TftpConfig {
    pub port: u16,
    pub max_sessions: usize,
    pub timeout: Duration,
    pub retries: u32,
    pub single_port: bool,
}

impl TryFrom<RawTftp> for TftpConfig {
    type Error = ConfigError;

    fn try_from(raw: RawTftp) -> Result<Self, ConfigError> {
        let RawTftp {
            port,
            max_sessions,
            timeout,
            retries,
            single_port,
        } = raw;
        let max_sessions = max_sessions.unwrap_or(DEFAULT_TFTP_MAX_SESSIONS);
        if !(1..=65536).contains(&max_sessions) {
            return Err(invalid(
                "tftp.max_sessions",
                &max_sessions.to_string(),
                "must be 1..=65536",
            ));
        }
        let timeout = match timeout {
            Some(text) => humantime::parse_duration(&text).map_err(|e| {
                invalid(
                    "tftp.timeout",
                    &text,
                    format!("{e}; write a duration like 1s"),
                )
            })?,
            None => DEFAULT_TFTP_TIMEOUT,
        };
        if !(Duration::from_millis(100)..=Duration::from_secs(255)).contains(&timeout) {
            return Err(invalid(
                "tftp.timeout",
                &humantime::format_duration(timeout).to_string(),
                "must be between 100ms and 255s",
            ));
        }
        let retries = retries.unwrap_or(DEFAULT_TFTP_RETRIES);
        if !(1..=100).contains(&retries) {
            return Err(invalid(
                "tftp.retries",
                &retries.to_string(),
                "must be 1..=100",
            ));
        }
        Ok(TftpConfig {
            port: port.unwrap_or(DEFAULT_TFTP_PORT),
            max_sessions,
            timeout,
            retries,
            single_port: single_port.unwrap_or(false),
        })
    }
}

/// Validated `[dhcp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpConfig {
    /// First and last address of the pool, both inside the LAN subnet.
    pub range: (Ipv4Addr, Ipv4Addr),
    pub lease_time: Duration,
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, ConfigError> {
        let RawConfig {
            lan_iface,
            lan_ip,
            mode,
            data_path,
            http_port,
            proxy_subnet,
            dhcp: RawDhcp { range, lease_time },
            xdp: RawXdp { mode: xdp },
            tftp,
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
        let range = match range {
            Some(text) => parse_range(&text, lan_ip)?,
            None => default_range(lan_ip),
        };
        let lease_time = match lease_time {
            Some(text) => humantime::parse_duration(&text).map_err(|e| {
                invalid(
                    "dhcp.lease_time",
                    &text,
                    format!("{e}; write a duration like 12h"),
                )
            })?,
            None => DEFAULT_LEASE_TIME,
        };
        if lease_time < Duration::from_secs(60) {
            return Err(invalid(
                "dhcp.lease_time",
                &humantime::format_duration(lease_time).to_string(),
                "must be at least 1m",
            ));
        }
        Ok(Config {
            lan_iface,
            lan_ip,
            mode: mode.unwrap_or_default(),
            data_path: data_path.unwrap_or_else(|| DEFAULT_DATA_PATH.into()),
            http_port: http_port.unwrap_or(DEFAULT_HTTP_PORT),
            proxy_subnet,
            dhcp: DhcpConfig { range, lease_time },
            xdp: xdp.unwrap_or_default(),
            tftp: TftpConfig::try_from(tftp)?,
        })
    }
}

fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_range(text: &str, lan: Ipv4Net) -> Result<(Ipv4Addr, Ipv4Addr), ConfigError> {
    let bad = |reason: &str| invalid("dhcp.range", text, reason);
    let (start, end) = text
        .split_once('-')
        .ok_or_else(|| bad("write START-END, like 198.18.0.100-198.18.0.200"))?;
    let start: Ipv4Addr = start
        .trim()
        .parse()
        .map_err(|_| bad("START is not an IPv4 address"))?;
    let end: Ipv4Addr = end
        .trim()
        .parse()
        .map_err(|_| bad("END is not an IPv4 address"))?;
    if start > end {
        return Err(bad("START is after END"));
    }
    let subnet = lan.trunc();
    for addr in [start, end] {
        if !subnet.contains(&addr) || addr == subnet.network() || addr == subnet.broadcast() {
            return Err(bad(&format!(
                "{addr} is not a host address of the LAN subnet {subnet}"
            )));
        }
    }
    if (start..=end).contains(&lan.addr()) {
        return Err(bad(&format!(
            "the range holds the server's own address {}",
            lan.addr()
        )));
    }
    Ok((start, end))
}

/// .100-.200 of the LAN subnet where it fits, else the upper half of its hosts.
fn default_range(lan: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
    let net = u32::from(lan.network());
    let bcast = u32::from(lan.broadcast());
    let (start, end) = if bcast - net > 200 {
        (net + 100, net + 200)
    } else {
        (net + (bcast - net) / 2 + 1, bcast - 1)
    };
    let own = u32::from(lan.addr());
    let start = if (start..=end).contains(&own) {
        own + 1
    } else {
        start
    };
    (Ipv4Addr::from(start), Ipv4Addr::from(end.max(start)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> Result<RawConfig, toml::de::Error> {
        toml::from_str(toml_text)
    }

    #[test]
    fn unknown_key_is_named() {
        let err = raw("lan_iface = \"eth1\"\nlan_ipp = \"x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lan_ipp"), "{err}");
        let err = raw("[dhcp]\nrang = \"x\"\n").unwrap_err().to_string();
        assert!(err.contains("rang"), "{err}");
    }

    #[test]
    fn missing_lan_iface_is_named() {
        let err = Config::try_from(RawConfig::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("lan_iface") && err.contains("--lan-iface"),
            "{err}"
        );
    }

    #[test]
    fn defaults_and_overlay() {
        let file =
            raw("lan_iface = \"eth1\"\nhttp_port = 8080\n[dhcp]\nlease_time = \"1h\"\n").unwrap();
        let flags = RawConfig {
            http_port: Some(8081),
            ..Default::default()
        };
        let cfg = Config::try_from(file.overlay(flags)).unwrap();
        assert_eq!(cfg.http_port, 8081);
        assert_eq!(cfg.lan_ip, "10.88.0.1/24".parse().unwrap());
        assert_eq!(cfg.dhcp.lease_time, Duration::from_secs(3600));
        assert_eq!(
            cfg.dhcp.range,
            (
                "10.88.0.100".parse().unwrap(),
                "10.88.0.200".parse().unwrap()
            )
        );
        assert_eq!(cfg.xdp, XdpMode::Auto);
        assert_eq!(cfg.mode, Mode::Direct);
    }

    #[test]
    fn range_must_sit_in_the_subnet() {
        let mut r = raw("lan_iface = \"eth1\"\nlan_ip = \"198.18.0.1/24\"\n").unwrap();
        r.dhcp.range = Some("198.18.1.10-198.18.1.20".into());
        let err = Config::try_from(r.clone()).unwrap_err().to_string();
        assert!(err.contains("dhcp.range"), "{err}");
        r.dhcp.range = Some("198.18.0.20-198.18.0.10".into());
        assert!(Config::try_from(r.clone()).is_err());
        r.dhcp.range = Some("198.18.0.10-198.18.0.20".into());
        assert!(Config::try_from(r).is_ok());
    }

    #[test]
    fn tftp_section() {
        let cfg = Config::try_from(raw("lan_iface = \"eth1\"\n").unwrap()).unwrap();
        assert_eq!(cfg.tftp.port, 69);
        assert_eq!(cfg.tftp.timeout, Duration::from_secs(1));
        assert!(!cfg.tftp.single_port);
        let r = raw(
            "lan_iface = \"eth1\"\n[tftp]\nport = 6969\ntimeout = \"500ms\"\nsingle_port = true\n",
        )
        .unwrap();
        let cfg = Config::try_from(r).unwrap();
        assert_eq!((cfg.tftp.port, cfg.tftp.single_port), (6969, true));
        assert_eq!(cfg.tftp.timeout, Duration::from_millis(500));
        let err =
            Config::try_from(raw("lan_iface = \"eth1\"\n[tftp]\ntimeout = \"0s\"\n").unwrap())
                .unwrap_err()
                .to_string();
        assert!(err.contains("tftp.timeout"), "{err}");
        assert!(raw("[tftp]\nprot = 1\n").is_err());
    }

    #[test]
    fn small_subnet_default_range_avoids_own_address() {
        let lan: Ipv4Net = "198.18.0.129/26".parse().unwrap();
        let (s, e) = default_range(lan);
        assert!(s <= e && lan.contains(&s) && lan.contains(&e));
        assert!(!(s..=e).contains(&lan.addr()));
    }
}
