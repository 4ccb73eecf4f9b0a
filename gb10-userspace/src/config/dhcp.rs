//! `[dhcp]`: the direct-mode DHCP server's pools, lease time and options.
use std::{net::Ipv4Addr, time::Duration};

use clap::Args;
use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use super::{Base, ConfigError, count, duration, invalid};

/// Default lease duration.
pub const DEFAULT_LEASE_TIME: Duration = Duration::from_secs(12 * 3600);
/// Default addresses one MAC holds (offered or leased) under different client
/// identifiers: its firmware (by chaddr), its installer and its installed system (often
/// by a DUID in option 61) each take one within a lease time.
pub const DEFAULT_ADDRESSES_PER_MAC: usize = 3;

/// `[dhcp]` as written.
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
    /// Addresses one MAC may hold at once (offered or leased) under different client
    /// identifiers (option 61); a further one makes its least recent go (default 3).
    #[arg(long = "dhcp-addresses-per-mac", env = "GB10_DHCP_ADDRESSES_PER_MAC")]
    pub addresses_per_mac: Option<usize>,
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
    pub addresses_per_mac: usize,
}

impl DhcpConfig {
    /// Addresses in the LAN pool and every relay pool: how many clients can hold a lease
    /// at once (in direct mode).
    pub fn pool_addresses(&self) -> usize {
        let size = |(start, end): (Ipv4Addr, Ipv4Addr)| {
            (u32::from(end).saturating_sub(u32::from(start)) as usize).saturating_add(1)
        };
        self.relay_ranges
            .iter()
            .map(|r| size(r.range))
            .fold(size(self.range), usize::saturating_add)
    }
}

/// A pool for a subnet behind a DHCP relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRange {
    pub subnet: Ipv4Net,
    pub range: (Ipv4Addr, Ipv4Addr),
    pub router: Option<Ipv4Addr>,
}

impl RawDhcp {
    pub(super) fn validate(self, base: &Base<'_>) -> Result<DhcpConfig, ConfigError> {
        let RawDhcp {
            range,
            lease_time,
            router,
            dns,
            domain,
            relay_ranges,
            addresses_per_mac,
        } = self;
        let lan = base.lan_ip;
        let range = match range {
            Some(text) => parse_range_in("dhcp.range", &text, lan.trunc(), Some(lan.addr()))?,
            None => default_range(lan),
        };
        Ok(DhcpConfig {
            range,
            lease_time: duration(
                "dhcp.lease_time",
                lease_time,
                DEFAULT_LEASE_TIME,
                Duration::from_secs(60)..=Duration::MAX,
            )?,
            router,
            dns: dns.unwrap_or_default(),
            domain: domain.filter(|d| !d.is_empty()),
            relay_ranges: relay_ranges
                .unwrap_or_default()
                .iter()
                .map(|r| parse_relay_range(r))
                .collect::<Result<_, _>>()?,
            addresses_per_mac: count(
                "dhcp.addresses_per_mac",
                addresses_per_mac,
                DEFAULT_ADDRESSES_PER_MAC,
                1..=1024,
            )?,
        })
    }
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
pub(super) fn default_range(lan: Ipv4Net) -> (Ipv4Addr, Ipv4Addr) {
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
