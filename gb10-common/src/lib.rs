//! Types shared by the eBPF programs and the daemon: map names, limits, keys and values.
#![no_std]

/// Per-client counters, an LRU per-CPU hash keyed by [`MacKey`] with [`ClientCounters`].
pub const CLIENTS_MAP: &str = "GB10_CLIENTS";
/// Bound on tracked clients; the LRU evicts the least recently seen beyond it, so the
/// `/metrics` output stays bounded whatever a flood of random MACs does.
pub const CLIENTS_MAX: u32 = 16_384;
/// Global counters, a per-CPU array indexed by [`Global`].
pub const GLOBAL_MAP: &str = "GB10_GLOBAL";
/// UDP ports (host byte order) of live TFTP transfers, set by the daemon, so that
/// ACKs to a transfer port count as TFTP.
pub const TFTP_PORTS_MAP: &str = "GB10_TFTP_PORTS";
/// Bound on concurrently tracked TFTP transfer ports.
pub const TFTP_PORTS_MAX: u32 = 4_096;
/// Name of the LAN ingress XDP program in the object file.
pub const LAN_PROGRAM: &str = "gb10_lan";
/// XDP program on every other interface: drops provisioning requests arriving there.
pub const GUARD_IN_PROGRAM: &str = "gb10_guard_in";
/// TC egress program on every other interface: drops provisioning replies leaving there.
pub const GUARD_OUT_PROGRAM: &str = "gb10_guard_out";

/// The guard's settings, an array of one [`GuardConfig`], written by the daemon.
pub const GUARD_CONFIG_MAP: &str = "GB10_GUARD";
/// Per-MAC token buckets for DHCP/TFTP requests: LRU hash [`MacKey`] → [`Bucket`].
pub const BUCKETS_MAP: &str = "GB10_BUCKETS";
/// The global bucket for clients without an allowance: an array of one [`Bucket`].
pub const GLOBAL_BUCKET_MAP: &str = "GB10_GLOBAL_BUCKET";
/// Known clients (the inventory) and their own rates: hash [`MacKey`] → [`Rate`].
pub const ALLOWANCE_MAP: &str = "GB10_ALLOWANCE";
/// Bound on clients with an allowance.
pub const ALLOWANCE_MAX: u32 = 4_096;
/// DHCP servers other than us seen on the LAN: LRU hash [`ServerKey`] → [`ServerSeen`].
pub const SERVERS_MAP: &str = "GB10_SERVERS";
/// Bound on foreign DHCP servers tracked.
pub const SERVERS_MAX: u32 = 256;
/// Guard counters per non-LAN interface: per-CPU hash ifindex → [`GuardCounters`].
pub const GUARD_COUNTERS_MAP: &str = "GB10_GUARD_COUNTERS";
/// Bound on guarded interfaces.
pub const GUARD_IFACES_MAX: u32 = 1_024;

/// What the guard does with what it would drop.
pub const GUARD_OFF: u32 = 0;
/// Count what enforce would drop, drop nothing.
pub const GUARD_MONITOR: u32 = 1;
/// Drop.
pub const GUARD_ENFORCE: u32 = 2;

/// A token bucket's rate: each packet costs `cost_ns` of credit; credit accrues one ns per
/// ns and is capped at `cap_ns` (so the burst is `cap_ns / cost_ns` packets).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rate {
    pub cost_ns: u64,
    pub cap_ns: u64,
}

impl Rate {
    /// `per_second` packets a second with bursts of `burst`; 0 per second = unlimited.
    pub const fn new(per_second: u64, burst: u64) -> Self {
        if per_second == 0 {
            return Self {
                cost_ns: 0,
                cap_ns: 0,
            };
        }
        let cost_ns = 1_000_000_000 / per_second;
        Self {
            cost_ns,
            cap_ns: cost_ns * if burst == 0 { 1 } else { burst },
        }
    }
}

/// The guard's settings.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardConfig {
    /// [`GUARD_OFF`], [`GUARD_MONITOR`] or [`GUARD_ENFORCE`].
    pub mode: u32,
    /// Reserved, zero.
    pub pad: u32,
    /// Per-client rate of DHCP/proxy-DHCP/TFTP requests, for clients without an allowance.
    pub client: Rate,
    /// Rate of all requests from clients without an allowance together.
    pub global: Rate,
}

/// A token bucket's state.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub credit_ns: u64,
    pub last_ns: u64,
}

/// A DHCP server seen on the LAN: its MAC and IPv4 source address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ServerKey {
    pub mac: [u8; 6],
    pub pad: [u8; 2],
    pub ip: [u8; 4],
}

/// What was seen of a foreign DHCP server.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerSeen {
    pub packets: u64,
    pub last_ns: u64,
}

/// What the guard did on one non-LAN interface (one CPU's share).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuardCounters {
    /// Inbound DHCP/proxy-DHCP/TFTP requests dropped (or, in monitor mode, seen).
    pub inbound: u64,
    /// Outbound DHCP/proxy-DHCP/TFTP replies dropped (or, in monitor mode, seen).
    pub outbound: u64,
}

/// UDP port of a DHCP server.
pub const PORT_DHCP_SERVER: u16 = 67;
/// UDP port of PXE proxy-DHCP (the boot server's port 4011).
pub const PORT_PROXY_DHCP: u16 = 4011;
/// UDP port of TFTP read/write requests.
pub const PORT_TFTP: u16 = 69;
/// Smallest DHCP payload: the BOOTP fixed part (236 bytes) and the magic cookie.
pub const DHCP_MIN_PAYLOAD: usize = 240;
/// The DHCP magic cookie as it appears on the wire.
pub const DHCP_MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// Smallest TFTP payload: a 2-byte opcode and at least 2 more bytes.
pub const TFTP_MIN_PAYLOAD: usize = 4;

/// What a frame from a client is, as the LAN program classifies it.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// UDP to port 67: DHCP to the server.
    Dhcp = 0,
    /// UDP to port 4011: PXE proxy-DHCP request.
    ProxyDhcp = 1,
    /// UDP to port 69 or to a live TFTP transfer port.
    Tftp = 2,
    /// Any other frame (ARP, other IP traffic, other UDP).
    Other = 3,
}

/// Number of [`Kind`]s, the length of the per-kind arrays.
pub const KINDS: usize = 4;

impl Kind {
    /// Every kind, in index order.
    pub const ALL: [Kind; KINDS] = [Kind::Dhcp, Kind::ProxyDhcp, Kind::Tftp, Kind::Other];

    /// The label used for this kind on `/metrics`.
    pub const fn label(self) -> &'static str {
        match self {
            Kind::Dhcp => "dhcp",
            Kind::ProxyDhcp => "proxy_dhcp",
            Kind::Tftp => "tftp",
            Kind::Other => "other",
        }
    }
}

/// Index of a global counter in [`GLOBAL_MAP`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Global {
    /// Every frame the program saw.
    Frames = 0,
    /// Frames classified [`Kind::Dhcp`].
    Dhcp = 1,
    /// Frames classified [`Kind::ProxyDhcp`].
    ProxyDhcp = 2,
    /// Frames classified [`Kind::Tftp`].
    Tftp = 3,
    /// Frames classified [`Kind::Other`].
    Other = 4,
    /// Frames whose headers lie about their lengths or are cut short.
    Malformed = 5,
    /// Bytes of every frame the program saw.
    Bytes = 6,
    /// DHCP/TFTP requests over their rate (dropped in enforce mode, counted in monitor).
    RateLimited = 7,
    /// Malformed frames to DHCP/TFTP ports dropped (enforce) or that would be (monitor).
    MalformedDropped = 8,
    /// DHCP server messages from servers other than us.
    ForeignServer = 9,
    /// DHCP frames, not relayed, whose `chaddr` is not their Ethernet source (dropped in
    /// enforce mode, counted in monitor).
    IdentityMismatch = 10,
}

/// Number of [`Global`] counters.
pub const GLOBALS: u32 = 11;

impl Global {
    /// Every counter, in index order.
    pub const ALL: [Global; GLOBALS as usize] = [
        Global::Frames,
        Global::Dhcp,
        Global::ProxyDhcp,
        Global::Tftp,
        Global::Other,
        Global::Malformed,
        Global::Bytes,
        Global::RateLimited,
        Global::MalformedDropped,
        Global::ForeignServer,
        Global::IdentityMismatch,
    ];

    /// The global counter that counts frames of `kind`.
    pub const fn of(kind: Kind) -> Global {
        match kind {
            Kind::Dhcp => Global::Dhcp,
            Kind::ProxyDhcp => Global::ProxyDhcp,
            Kind::Tftp => Global::Tftp,
            Kind::Other => Global::Other,
        }
    }

    /// The metric name suffix for this counter.
    pub const fn label(self) -> &'static str {
        match self {
            Global::Frames => "frames",
            Global::Dhcp => "dhcp",
            Global::ProxyDhcp => "proxy_dhcp",
            Global::Tftp => "tftp",
            Global::Other => "other",
            Global::Malformed => "malformed",
            Global::Bytes => "bytes",
            Global::RateLimited => "rate_limited",
            Global::MalformedDropped => "malformed_dropped",
            Global::ForeignServer => "foreign_server",
            Global::IdentityMismatch => "identity_mismatch",
        }
    }
}

/// A client's Ethernet address, padded to 8 bytes so the key has no implicit padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct MacKey {
    /// The source MAC of the frame (or, in a relayed bucket's key, its `chaddr`).
    pub addr: [u8; 6],
    /// Zero, except `[1, 0]` in [`MacKey::relayed`] keys.
    pub pad: [u8; 2],
}

impl MacKey {
    /// The key for `addr`.
    pub const fn new(addr: [u8; 6]) -> Self {
        Self { addr, pad: [0; 2] }
    }

    /// The bucket key of a client behind a relay, named by its `chaddr`: apart from
    /// [`MacKey::new`] keys, so a frame that claims to be relayed for some MAC cannot
    /// spend the bucket of the machine that has that MAC on the LAN.
    pub const fn relayed(chaddr: [u8; 6]) -> Self {
        Self {
            addr: chaddr,
            pad: [1, 0],
        }
    }
}

/// Counters for one client MAC on one CPU; userspace sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientCounters {
    /// Frames per [`Kind`].
    pub packets: [u64; KINDS],
    /// Frame bytes per [`Kind`].
    pub bytes: [u64; KINDS],
    /// Frames from this MAC whose IPv4/UDP/DHCP/TFTP headers were malformed.
    pub malformed: u64,
    /// Requests from this MAC over its rate (dropped in enforce mode).
    pub limited: u64,
    /// DHCP frames from this MAC, not relayed, naming another client in `chaddr`
    /// (dropped in enforce mode).
    pub forged: u64,
    /// `bpf_ktime_get_ns` (CLOCK_MONOTONIC) of the last frame seen on this CPU.
    pub last_seen_ns: u64,
}

impl ClientCounters {
    /// Adds another CPU's counters to these.
    pub fn merge(&mut self, other: &ClientCounters) {
        for i in 0..KINDS {
            self.packets[i] += other.packets[i];
            self.bytes[i] += other.bytes[i];
        }
        self.malformed += other.malformed;
        self.limited += other.limited;
        self.forged += other.forged;
        if other.last_seen_ns > self.last_seen_ns {
            self.last_seen_ns = other.last_seen_ns;
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), Copy, and no padding (checked by the size asserts below), so any
    // byte pattern the kernel hands back is a valid value.
    unsafe impl aya::Pod for super::MacKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ClientCounters {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Rate {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GuardConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Bucket {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServerKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ServerSeen {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::GuardCounters {}
}

const _: () = assert!(size_of::<MacKey>() == 8);
const _: () = assert!(size_of::<ClientCounters>() == (2 * KINDS + 4) * 8);
const _: () = assert!(size_of::<GuardConfig>() == 40);
const _: () = assert!(size_of::<ServerKey>() == 12);
