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
}

/// `[admin]`: the hosts API and dashboard, and the token every state-changing call needs.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Bearer token for state-changing calls (register, delete, rebuild). Without it
    /// those calls are refused. Never logged.
    #[arg(long = "admin-token", env = "GB10_ADMIN_TOKEN")]
    pub token: Option<Secret>,
    /// A separate address (like 127.0.0.1:9190) for the hosts API and dashboard; when
    /// unset they are served on the LAN HTTP listener.
    #[arg(long = "admin-listen", env = "GB10_ADMIN_LISTEN")]
    pub listen: Option<std::net::SocketAddr>,
    /// Directory of BMC credential files (`user:password`), named by hosts' `bmc.credentials`
    /// (default data_path/secrets).
    #[arg(long = "admin-credentials-dir", env = "GB10_ADMIN_CREDENTIALS_DIR")]
    pub credentials_dir: Option<PathBuf>,
}

/// A secret value: printed as `***` by Debug and Display, so it never reaches a log line.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value, for the one place that compares or sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Validated `[admin]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    pub token: Option<Secret>,
    pub listen: Option<std::net::SocketAddr>,
    pub credentials_dir: PathBuf,
}

/// `[guard]`: what the eBPF programs enforce. Rates are packets a second (0 = no limit),
/// bursts are packets.
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGuard {
    /// `enforce` (drop), `monitor` (count what enforce would drop) or `off` (default enforce).
    #[arg(id = "guard_mode", long = "guard", env = "GB10_GUARD_MODE")]
    pub mode: Option<GuardMode>,
    /// Interfaces that must not carry provisioning traffic (comma-separated); default every
    /// interface but the LAN and loopback that is up, followed as interfaces come and go.
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

/// `[http]`: static mounts and seed delivery.
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
    pub mounts: Vec<Mount>,
    /// Serve a host's seed only to the host's fixed IP or DHCP lease (default true). Turn
    /// off only in labs where clients reach the server through NAT or static addresses.
    #[arg(long = "seed-owner-check", env = "GB10_HTTP_SEED_OWNER_CHECK")]
    pub seed_owner_check: Option<bool>,
    /// Open HTTP connections served at once on the LAN (default 1024); beyond it new
    /// connections wait in the kernel's accept queue instead of taking descriptors.
    #[arg(long = "http-max-connections", env = "GB10_HTTP_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
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

    pub fn serialize<S: Serializer>(mounts: &[Mount], s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(mounts.iter().map(|m| (&m.prefix, &m.dir)))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Mount>, D::Error> {
        let table = BTreeMap::<String, PathBuf>::deserialize(d)?;
        Ok(table
            .into_iter()
            .map(|(prefix, dir)| Mount { prefix, dir })
            .collect())
    }
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
    /// Default gateway handed out (option 3); none when unset.
    #[arg(long = "dhcp-router", env = "GB10_DHCP_ROUTER")]
    pub router: Option<Ipv4Addr>,
    /// DNS servers handed out (option 6), comma-separated; none when unset.
    #[arg(long = "dhcp-dns", env = "GB10_DHCP_DNS", value_delimiter = ',')]
    pub dns: Option<Vec<Ipv4Addr>>,
    /// Domain name handed out (option 15); none when unset.
    #[arg(long = "dhcp-domain", env = "GB10_DHCP_DOMAIN")]
    pub domain: Option<String>,
    /// Pools for relayed subnets, each `SUBNET/PREFIX=START-END[,ROUTER]`: a TOML array,
    /// `;`-separated as a flag or env (a relay's giaddr picks the pool whose subnet
    /// holds it).
    #[arg(
        long = "dhcp-relay-ranges",
        env = "GB10_DHCP_RELAY_RANGES",
        value_delimiter = ';'
    )]
    pub relay_ranges: Option<Vec<String>>,
}

/// `[boot]`: what each firmware boots (TFTP paths or URLs; `{server}`, `{http_port}`,
/// `{mac}` are filled in per client).
#[derive(Args, Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBoot {
    /// Boot file for BIOS PXE, arch 0 (default `undionly.kpxe`).
    #[arg(long = "boot-bios", env = "GB10_BOOT_BIOS")]
    pub bios: Option<String>,
    /// Boot file for x86 UEFI PXE, arch 6/7/9 (default `ipxe.efi`; `shimx64.efi` for
    /// Secure Boot).
    #[arg(long = "boot-uefi-x86", env = "GB10_BOOT_UEFI_X86")]
    pub uefi_x86: Option<String>,
    /// Boot file for arm64 UEFI PXE, arch 11 (default `shimaa64.efi`).
    #[arg(long = "boot-uefi-arm64", env = "GB10_BOOT_UEFI_ARM64")]
    pub uefi_arm64: Option<String>,
    /// x86 UEFI HTTP boot, arch 16: a URL or a path under the HTTP root (default `ipxe.efi`).
    #[arg(long = "boot-http-x86", env = "GB10_BOOT_HTTP_X86")]
    pub http_x86: Option<String>,
    /// arm64 UEFI HTTP boot, arch 19: a URL or a path under the HTTP root (default
    /// `shimaa64.efi`).
    #[arg(long = "boot-http-arm64", env = "GB10_BOOT_HTTP_ARM64")]
    pub http_arm64: Option<String>,
    /// URL iPXE gets instead of a boot file (default
    /// `http://{server}:{http_port}/boot.ipxe`).
    #[arg(long = "boot-ipxe-script", env = "GB10_BOOT_IPXE_SCRIPT")]
    pub ipxe_script: Option<String>,
    /// Clients not in the inventory: `serve` (default profile) or `ignore` (no answer).
    #[arg(long = "boot-unknown-clients", env = "GB10_BOOT_UNKNOWN_CLIENTS")]
    pub unknown_clients: Option<UnknownClients>,
}

/// What happens to clients whose MAC is not in the inventory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UnknownClients {
    /// Serve them with the inventory's default profile.
    #[default]
    Serve,
    /// Do not answer them at all.
    Ignore,
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
            health_port,
            proxy_subnet,
            dhcp:
                RawDhcp {
                    range,
                    lease_time,
                    router,
                    dns,
                    domain,
                    relay_ranges,
                },
            xdp: RawXdp { mode: xdp_mode },
            boot:
                RawBoot {
                    bios,
                    uefi_x86,
                    uefi_arm64,
                    http_x86,
                    http_arm64,
                    ipxe_script,
                    unknown_clients,
                },
            http:
                RawHttp {
                    mounts,
                    seed_owner_check,
                    max_connections,
                },
            guard:
                RawGuard {
                    mode: guard_mode,
                    interfaces,
                    client_rate,
                    client_burst,
                    global_rate,
                    global_burst,
                    known_rate,
                    known_burst,
                },
            admin:
                RawAdmin {
                    token,
                    listen,
                    credentials_dir,
                },
            tftp,
        } = over;
        RawConfig {
            lan_iface: lan_iface.or(self.lan_iface),
            lan_ip: lan_ip.or(self.lan_ip),
            mode: mode.or(self.mode),
            data_path: data_path.or(self.data_path),
            http_port: http_port.or(self.http_port),
            health_port: health_port.or(self.health_port),
            proxy_subnet: proxy_subnet.or(self.proxy_subnet),
            dhcp: RawDhcp {
                range: range.or(self.dhcp.range),
                lease_time: lease_time.or(self.dhcp.lease_time),
                router: router.or(self.dhcp.router),
                dns: dns.or(self.dhcp.dns),
                domain: domain.or(self.dhcp.domain),
                relay_ranges: relay_ranges.or(self.dhcp.relay_ranges),
            },
            xdp: RawXdp {
                mode: xdp_mode.or(self.xdp.mode),
            },
            boot: RawBoot {
                bios: bios.or(self.boot.bios),
                uefi_x86: uefi_x86.or(self.boot.uefi_x86),
                uefi_arm64: uefi_arm64.or(self.boot.uefi_arm64),
                http_x86: http_x86.or(self.boot.http_x86),
                http_arm64: http_arm64.or(self.boot.http_arm64),
                ipxe_script: ipxe_script.or(self.boot.ipxe_script),
                unknown_clients: unknown_clients.or(self.boot.unknown_clients),
            },
            http: RawHttp {
                mounts: if mounts.is_empty() {
                    self.http.mounts
                } else {
                    mounts
                },
                seed_owner_check: seed_owner_check.or(self.http.seed_owner_check),
                max_connections: max_connections.or(self.http.max_connections),
            },
            guard: RawGuard {
                mode: guard_mode.or(self.guard.mode),
                interfaces: interfaces.or(self.guard.interfaces),
                client_rate: client_rate.or(self.guard.client_rate),
                client_burst: client_burst.or(self.guard.client_burst),
                global_rate: global_rate.or(self.guard.global_rate),
                global_burst: global_burst.or(self.guard.global_burst),
                known_rate: known_rate.or(self.guard.known_rate),
                known_burst: known_burst.or(self.guard.known_burst),
            },
            admin: RawAdmin {
                token: token.or(self.admin.token),
                listen: listen.or(self.admin.listen),
                credentials_dir: credentials_dir.or(self.admin.credentials_dir),
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
/// Default port of the loopback health listener.
pub const DEFAULT_HEALTH_PORT: u16 = 9180;
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

/// `[http] max_connections` when unset.
pub const DEFAULT_HTTP_MAX_CONNECTIONS: usize = 1024;

/// Validated `[http]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpConfig {
    /// URL prefix (starting and ending with `/`) → directory, longest prefix first.
    pub mounts: Vec<(String, PathBuf)>,
    pub seed_owner_check: bool,
    pub max_connections: usize,
}

/// Validated `[dhcp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpConfig {
    /// First and last address of the pool, both inside the LAN subnet.
    pub range: (Ipv4Addr, Ipv4Addr),
    pub lease_time: Duration,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    /// Pools of relayed subnets.
    pub relay_ranges: Vec<RelayRange>,
}

/// A pool for a subnet behind a DHCP relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRange {
    pub subnet: Ipv4Net,
    pub range: (Ipv4Addr, Ipv4Addr),
    pub router: Option<Ipv4Addr>,
}

/// Validated `[boot]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootConfig {
    pub bios: String,
    pub uefi_x86: String,
    pub uefi_arm64: String,
    pub http_x86: String,
    pub http_arm64: String,
    pub ipxe_script: String,
    pub unknown_clients: UnknownClients,
}

impl Default for BootConfig {
    fn default() -> Self {
        Self {
            bios: "undionly.kpxe".into(),
            uefi_x86: "ipxe.efi".into(),
            uefi_arm64: "shimaa64.efi".into(),
            http_x86: "ipxe.efi".into(),
            http_arm64: "shimaa64.efi".into(),
            ipxe_script: "http://{server}:{http_port}/boot.ipxe".into(),
            unknown_clients: UnknownClients::Serve,
        }
    }
}

impl BootConfig {
    /// The configured boot file of a firmware class.
    pub fn file(&self, fw: crate::boot::Firmware) -> &str {
        use crate::boot::Firmware as F;
        match fw {
            F::Bios => &self.bios,
            F::UefiX86 => &self.uefi_x86,
            F::UefiArm64 => &self.uefi_arm64,
            F::HttpX86 => &self.http_x86,
            F::HttpArm64 => &self.http_arm64,
        }
    }

    fn from_raw(raw: RawBoot) -> Result<Self, ConfigError> {
        let RawBoot {
            bios,
            uefi_x86,
            uefi_arm64,
            http_x86,
            http_arm64,
            ipxe_script,
            unknown_clients,
        } = raw;
        let d = Self::default();
        let pick = |key: &'static str, v: Option<String>, default: String| match v {
            // The BOOTP `file` field holds 128 bytes with its NUL.
            Some(v) if v.is_empty() || v.len() > 127 => Err(invalid(
                key,
                &v,
                "must be 1 to 127 bytes (it travels in the BOOTP file field)",
            )),
            Some(v) => Ok(v),
            None => Ok(default),
        };
        Ok(Self {
            bios: pick("boot.bios", bios, d.bios)?,
            uefi_x86: pick("boot.uefi_x86", uefi_x86, d.uefi_x86)?,
            uefi_arm64: pick("boot.uefi_arm64", uefi_arm64, d.uefi_arm64)?,
            http_x86: pick("boot.http_x86", http_x86, d.http_x86)?,
            http_arm64: pick("boot.http_arm64", http_arm64, d.http_arm64)?,
            ipxe_script: pick("boot.ipxe_script", ipxe_script, d.ipxe_script)?,
            unknown_clients: unknown_clients.unwrap_or_default(),
        })
    }
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
            health_port,
            proxy_subnet,
            dhcp:
                RawDhcp {
                    range,
                    lease_time,
                    router,
                    dns,
                    domain,
                    relay_ranges,
                },
            xdp: RawXdp { mode: xdp },
            boot,
            http:
                RawHttp {
                    mounts,
                    seed_owner_check,
                    max_connections,
                },
            guard,
            admin:
                RawAdmin {
                    token,
                    listen,
                    credentials_dir,
                },
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
        let lan_iface_for_guard = lan_iface.clone();
        if let Some(addr) = listen
            && addr.ip().is_unspecified()
        {
            return Err(invalid(
                "admin.listen",
                &addr.to_string(),
                "never a wildcard address: name one, like 127.0.0.1:9190",
            ));
        }
        if token.as_ref().is_some_and(|t| t.expose().len() < 16) {
            return Err(invalid("admin.token", "***", "use at least 16 characters"));
        }
        let data_path: PathBuf = data_path.unwrap_or_else(|| DEFAULT_DATA_PATH.into());
        Ok(Config {
            lan_iface,
            lan_ip,
            mode: mode.unwrap_or_default(),
            admin: AdminConfig {
                token,
                listen,
                credentials_dir: credentials_dir.unwrap_or_else(|| data_path.join("secrets")),
            },
            data_path,
            http_port: http_port.unwrap_or(DEFAULT_HTTP_PORT),
            health_port: health_port.unwrap_or(DEFAULT_HEALTH_PORT),
            proxy_subnet,
            dhcp: DhcpConfig {
                range,
                lease_time,
                router,
                dns: dns.unwrap_or_default(),
                domain: domain.filter(|d| !d.is_empty()),
                relay_ranges: relay_ranges
                    .unwrap_or_default()
                    .iter()
                    .map(|r| parse_relay_range(r))
                    .collect::<Result<_, _>>()?,
            },
            xdp: xdp.unwrap_or_default(),
            boot: BootConfig::from_raw(boot)?,
            http: HttpConfig {
                mounts: validate_mounts(mounts)?,
                seed_owner_check: seed_owner_check.unwrap_or(true),
                max_connections: match max_connections {
                    None => DEFAULT_HTTP_MAX_CONNECTIONS,
                    Some(0) => {
                        return Err(ConfigError::Invalid {
                            key: "http.max_connections",
                            value: "0".into(),
                            reason: "must be at least 1".into(),
                        });
                    }
                    Some(n) => n,
                },
            },
            guard: validate_guard(guard, &lan_iface_for_guard)?,
            tftp: TftpConfig::try_from(tftp)?,
        })
    }
}

fn validate_guard(raw: RawGuard, lan_iface: &str) -> Result<GuardConfig, ConfigError> {
    let RawGuard {
        mode,
        interfaces,
        client_rate,
        client_burst,
        global_rate,
        global_burst,
        known_rate,
        known_burst,
    } = raw;
    if let Some(list) = &interfaces
        && let Some(bad) = list
            .iter()
            .find(|i| i.as_str() == lan_iface || i.is_empty())
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

fn invalid(key: &'static str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

fn parse_range(text: &str, lan: Ipv4Net) -> Result<(Ipv4Addr, Ipv4Addr), ConfigError> {
    parse_range_in("dhcp.range", text, lan.trunc(), Some(lan.addr()))
}

/// `START-END` of host addresses of `subnet`, not holding `own`.
fn parse_range_in(
    key: &'static str,
    text: &str,
    subnet: Ipv4Net,
    own: Option<Ipv4Addr>,
) -> Result<(Ipv4Addr, Ipv4Addr), ConfigError> {
    let bad = |reason: &str| invalid(key, text, reason);
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
    for addr in [start, end] {
        if !subnet.contains(&addr) || addr == subnet.network() || addr == subnet.broadcast() {
            return Err(bad(&format!(
                "{addr} is not a host address of the LAN subnet {subnet}"
            )));
        }
    }
    if let Some(own) = own
        && (start..=end).contains(&own)
    {
        return Err(bad(&format!(
            "the range holds the server's own address {own}"
        )));
    }
    Ok((start, end))
}

/// `SUBNET/PREFIX=START-END[,ROUTER]`.
fn parse_relay_range(text: &str) -> Result<RelayRange, ConfigError> {
    let bad = |reason: &str| invalid("dhcp.relay_ranges", text, reason);
    let (subnet, rest) = text
        .split_once('=')
        .ok_or_else(|| bad("write SUBNET/PREFIX=START-END[,ROUTER]"))?;
    let subnet: Ipv4Net = subnet
        .trim()
        .parse()
        .map_err(|_| bad("SUBNET is not a CIDR like 198.19.1.0/24"))?;
    let (range, router) = match rest.split_once(',') {
        Some((r, gw)) => (
            r,
            Some(
                gw.trim()
                    .parse()
                    .map_err(|_| bad("ROUTER is not an IPv4 address"))?,
            ),
        ),
        None => (rest, None),
    };
    let range = parse_range_in("dhcp.relay_ranges", range, subnet.trunc(), None)?;
    Ok(RelayRange {
        subnet: subnet.trunc(),
        range,
        router,
    })
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
    fn dhcp_options_relay_ranges_and_boot_section() {
        let r = raw(r#"
            lan_iface = "eth1"
            lan_ip = "198.18.0.1/24"
            [dhcp]
            router = "198.18.0.254"
            dns = ["198.18.0.53"]
            relay_ranges = ["198.19.1.0/24=198.19.1.100-198.19.1.200,198.19.1.1"]
            [boot]
            uefi_x86 = "shimx64.efi"
            unknown_clients = "ignore"
            "#)
        .unwrap();
        let cfg = Config::try_from(r.clone()).unwrap();
        assert_eq!(cfg.dhcp.router, Some(Ipv4Addr::new(198, 18, 0, 254)));
        assert_eq!(cfg.dhcp.dns, vec![Ipv4Addr::new(198, 18, 0, 53)]);
        let relay = &cfg.dhcp.relay_ranges[0];
        assert_eq!(relay.subnet, "198.19.1.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(relay.router, Some(Ipv4Addr::new(198, 19, 1, 1)));
        assert_eq!(cfg.boot.uefi_x86, "shimx64.efi");
        assert_eq!(cfg.boot.bios, "undionly.kpxe");
        assert_eq!(cfg.boot.unknown_clients, UnknownClients::Ignore);

        let mut bad = r.clone();
        bad.dhcp.relay_ranges = Some(vec!["198.19.1.0/24=198.19.2.5-198.19.2.9".into()]);
        let err = Config::try_from(bad).unwrap_err().to_string();
        assert!(err.contains("dhcp.relay_ranges"), "{err}");
        let mut bad = r;
        bad.boot.bios = Some("x".repeat(200));
        let err = Config::try_from(bad).unwrap_err().to_string();
        assert!(err.contains("boot.bios"), "{err}");
    }

    #[test]
    fn http_mounts_from_file_and_flags() {
        let file = raw(
            "lan_iface = \"eth1\"\n[http]\nseed_owner_check = false\nmounts = { \"/repos/\" = \"/srv/repos\", \"/repos/deb/\" = \"/srv/deb\" }\n",
        )
        .unwrap();
        let cfg = Config::try_from(file.clone().overlay(RawConfig::default())).unwrap();
        assert!(!cfg.http.seed_owner_check);
        assert_eq!(cfg.http.max_connections, DEFAULT_HTTP_MAX_CONNECTIONS);
        assert_eq!(
            cfg.http.mounts[0],
            ("/repos/deb/".into(), "/srv/deb".into())
        );
        let flags = RawConfig {
            http: RawHttp {
                mounts: vec!["/hf/=/srv/hf".parse().unwrap()],
                seed_owner_check: None,
                max_connections: Some(64),
            },
            ..Default::default()
        };
        let cfg = Config::try_from(file.overlay(flags)).unwrap();
        assert_eq!(cfg.http.mounts, vec![("/hf/".into(), "/srv/hf".into())]);
        assert_eq!(cfg.http.max_connections, 64);
        let bad = raw("lan_iface = \"eth1\"\n[http]\nmounts = { \"/../\" = \"/x\" }\n").unwrap();
        let err = Config::try_from(bad).unwrap_err().to_string();
        assert!(err.contains("http.mounts"), "{err}");
        let none = raw("lan_iface = \"eth1\"\n[http]\nmax_connections = 0\n").unwrap();
        let err = Config::try_from(none).unwrap_err().to_string();
        assert!(err.contains("http.max_connections"), "{err}");
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

#[cfg(test)]
mod admin_tests {
    use super::*;

    #[test]
    fn secrets_print_as_stars_and_admin_is_validated() {
        let token: Secret = "a-token-of-enough-length".parse().unwrap();
        assert_eq!(format!("{token} {token:?}"), "*** ***");
        let raw = |admin| RawConfig {
            lan_iface: Some("lo".into()),
            admin,
            ..Default::default()
        };
        let config = Config::try_from(raw(RawAdmin {
            token: Some(token.clone()),
            ..Default::default()
        }))
        .unwrap();
        assert!(!format!("{config:?}").contains("a-token"));
        let short = Config::try_from(raw(RawAdmin {
            token: Some("short".parse().unwrap()),
            ..Default::default()
        }));
        assert!(short.unwrap_err().to_string().contains("admin.token"));
        let wild = Config::try_from(raw(RawAdmin {
            listen: Some("0.0.0.0:9190".parse().unwrap()),
            ..Default::default()
        }));
        assert!(wild.unwrap_err().to_string().contains("wildcard"));
    }
}
