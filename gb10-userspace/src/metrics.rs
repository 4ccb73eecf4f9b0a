//! Every metric on `/metrics`: names, help and types live here, rendered in the
//! Prometheus text format (0.0.4) from the subsystems' counters.
use std::{
    fmt::{Display, Write as _},
    sync::Arc,
};

use gb10_common::{ClientCounters, Global, Kind};

use crate::{
    config::{GuardMode, Mode},
    mac::Mac,
    xdp::{LanXdp, Snapshot, ktime_to_unix},
};

/// One metric family.
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: &'static str,
}

const fn family(name: &'static str, kind: &'static str, help: &'static str) -> Family {
    Family { name, help, kind }
}

pub const XDP_ATTACHED: Family = family(
    "gb10_xdp_attached",
    "gauge",
    "1 when the XDP program is attached to the LAN interface, 0 when serving without it.",
);
pub const XDP_FRAMES: Family = family(
    "gb10_xdp_frames_total",
    "counter",
    "Frames the LAN XDP program saw, by kind (all = every frame).",
);
pub const XDP_BYTES: Family = family(
    "gb10_xdp_bytes_total",
    "counter",
    "Bytes of every frame the LAN XDP program saw.",
);
pub const XDP_MALFORMED: Family = family(
    "gb10_xdp_malformed_total",
    "counter",
    "Frames whose IPv4/UDP/DHCP/TFTP headers lie about lengths or are cut short.",
);
pub const XDP_CLIENTS: Family = family(
    "gb10_xdp_clients",
    "gauge",
    "Client MACs currently tracked (bounded by the LRU map size).",
);
pub const CLIENT_PACKETS: Family = family(
    "gb10_client_packets_total",
    "counter",
    "Frames from a client MAC, by kind (dhcp, proxy_dhcp, tftp, other).",
);
pub const CLIENT_BYTES: Family = family(
    "gb10_client_bytes_total",
    "counter",
    "Frame bytes from a client MAC, by kind.",
);
pub const CLIENT_MALFORMED: Family = family(
    "gb10_client_malformed_total",
    "counter",
    "Malformed frames from a client MAC.",
);
pub const CLIENT_LAST_SEEN: Family = family(
    "gb10_client_last_seen_seconds",
    "gauge",
    "Unix time of the last frame from a client MAC.",
);

pub const DHCP_MESSAGES: Family = family(
    "gb10_dhcp_messages_total",
    "counter",
    "Well-formed DHCP messages received, by client MAC and message type.",
);
pub const DHCP_REPLIES: Family = family(
    "gb10_dhcp_replies_total",
    "counter",
    "DHCP replies sent, by client MAC and message type (offer, ack, nak).",
);
pub const DHCP_OFFERS_UNANSWERED: Family = family(
    "gb10_dhcp_offers_unanswered_total",
    "counter",
    "Offers (direct or proxy) a client never followed with a REQUEST: firmware that ignored us.",
);
pub const DHCP_MALFORMED: Family = family(
    "gb10_dhcp_malformed_total",
    "counter",
    "DHCP datagrams dropped as malformed, by reason.",
);
pub const DHCP_NO_REPLY: Family = family(
    "gb10_dhcp_no_reply_total",
    "counter",
    "Well-formed DHCP messages deliberately left unanswered, by reason.",
);
pub const DHCP_LEASES_RESTORED: Family = family(
    "gb10_dhcp_leases_restored",
    "gauge",
    "Leases read back from the store at start.",
);
pub const DHCP_STORE_SKIPPED: Family = family(
    "gb10_dhcp_store_records_skipped",
    "gauge",
    "Lease records skipped at start as corrupt or inconsistent.",
);
pub const DHCP_STORE_FAILURES: Family = family(
    "gb10_dhcp_store_failures_total",
    "counter",
    "ACKs withheld because their lease could not be written.",
);

pub const DHCP_LEASES: Family = family(
    "gb10_dhcp_leases",
    "gauge",
    "Addresses currently held, by lease state (offered, leased, declined).",
);
pub const CLIENTS_BY_STATE: Family = family(
    "gb10_clients",
    "gauge",
    "Clients known to the onboarding state machine, by state.",
);

pub const HOSTS_BY_STATE: Family = family(
    "gb10_hosts",
    "gauge",
    "Registered hosts (inventory and API), by life-cycle state.",
);

pub const SEED_ALARMS: Family = family(
    "gb10_seed_alarms_total",
    "counter",
    "Second requests for an install's secrets, refused (possible theft; the host is failed).",
);
pub const HEARTBEATS_UNPROVEN: Family = family(
    "gb10_heartbeats_unproven_total",
    "counter",
    "Heartbeats for a host with an install that lacked its token: recorded, moved nothing.",
);
pub const HEARTBEATS_STRANGER: Family = family(
    "gb10_heartbeats_stranger_total",
    "counter",
    "Heartbeats without a token from an address that is not the MAC's: recorded, moved nothing.",
);

pub const XDP_RATE_LIMITED: Family = family(
    "gb10_xdp_rate_limited_total",
    "counter",
    "DHCP/TFTP requests over their client's or the global rate (dropped when the guard enforces).",
);
pub const XDP_MALFORMED_DROPPED: Family = family(
    "gb10_xdp_malformed_dropped_total",
    "counter",
    "Malformed frames aimed at DHCP/TFTP ports (dropped when the guard enforces).",
);
pub const CLIENT_RATE_LIMITED: Family = family(
    "gb10_client_rate_limited_total",
    "counter",
    "Requests from a client MAC over its rate.",
);
pub const GUARD_MODE: Family = family(
    "gb10_guard_mode",
    "gauge",
    "1 for the guard's mode: enforce (drops), monitor (counts what it would drop) or off.",
);
pub const GUARD_ATTACHED: Family = family(
    "gb10_guard_attached",
    "gauge",
    "1 for each non-LAN interface the guard is attached to now (0: it was, and is gone).",
);
pub const GUARD_PACKETS: Family = family(
    "gb10_guard_packets_total",
    "counter",
    "Provisioning packets met on a non-LAN interface: requests in, replies out (dropped when enforcing).",
);
pub const FOREIGN_SERVERS: Family = family(
    "gb10_dhcp_foreign_servers",
    "gauge",
    "DHCP servers other than us seen on the LAN: role rogue in direct mode (an alarm), site in proxy mode.",
);
pub const FOREIGN_SERVER_PACKETS: Family = family(
    "gb10_dhcp_foreign_server_packets_total",
    "counter",
    "DHCP server messages seen from a foreign server, by its MAC and IP.",
);
pub const TFTP_SESSIONS: Family =
    family("gb10_tftp_sessions", "gauge", "TFTP transfers running now.");
pub const TFTP_TRANSFERS: Family = family(
    "gb10_tftp_transfers_total",
    "counter",
    "TFTP transfers completed, by client IP.",
);
pub const TFTP_BYTES: Family = family(
    "gb10_tftp_bytes_total",
    "counter",
    "TFTP DATA payload bytes sent, retransmissions included, by client IP.",
);
pub const TFTP_RETRANSMITS: Family = family(
    "gb10_tftp_retransmits_total",
    "counter",
    "TFTP DATA/OACK packets sent again (timeout or partial window), by client IP.",
);
pub const TFTP_ERRORS: Family = family(
    "gb10_tftp_errors_total",
    "counter",
    "TFTP requests and transfers that did not complete, by client IP and reason.",
);

/// Builds the text exposition.
#[derive(Default)]
pub struct Writer {
    out: String,
}

impl Writer {
    /// Starts a family: its HELP and TYPE lines.
    pub fn family(&mut self, f: &Family) {
        let _ = writeln!(self.out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(self.out, "# TYPE {} {}", f.name, f.kind);
    }

    /// One sample of `f`.
    pub fn sample(&mut self, f: &Family, labels: &[(&str, &str)], value: impl Display) {
        self.out.push_str(f.name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape(v));
            }
            self.out.push('}');
        }
        let _ = writeln!(self.out, " {value}");
    }

    /// A family with a single unlabelled sample.
    pub fn single(&mut self, f: &Family, value: impl Display) {
        self.family(f);
        self.sample(f, &[], value);
    }

    /// A family with a sample per row, labelled `key` = the row's name (a client's MAC
    /// or address), valued by `value`.
    pub fn per_row<T, V: Display>(
        &mut self,
        f: &Family,
        key: &str,
        rows: &[(String, T)],
        value: impl Fn(&T) -> V,
    ) {
        self.family(f);
        for (name, row) in rows {
            self.sample(f, &[(key, name)], value(row));
        }
    }

    /// A family with a sample per row and per entry of a second label (a frame kind, a
    /// message type): `value(row, index)`; zeros left out when `skip_zero`.
    pub fn per_row_by<T>(
        &mut self,
        f: &Family,
        key: &str,
        rows: &[(String, T)],
        (label, names): (&str, &[(&str, usize)]),
        skip_zero: bool,
        value: impl Fn(&T, usize) -> u64,
    ) {
        self.family(f);
        for (name, row) in rows {
            for (second, index) in names {
                let n = value(row, *index);
                if n > 0 || !skip_zero {
                    self.sample(f, &[(key, name), (label, second)], n);
                }
            }
        }
    }

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Where every metric comes from; rendering reads each subsystem's own counters.
pub struct Sources {
    /// The LAN program, when attached.
    pub xdp: Option<Arc<LanXdp>>,
    /// Labels foreign DHCP servers: rogue in direct mode, site in proxy mode.
    pub mode: Mode,
    pub tftp: Arc<crate::tftp::Stats>,
    pub clients: Arc<crate::clients::Clients>,
    pub hosts: Arc<crate::hosts::Hosts>,
    pub dhcp: Arc<crate::dhcp::Stats>,
    pub leases: crate::dhcp::LeaseTable,
}

impl Sources {
    /// The whole exposition. Walks the XDP maps (a few thousand syscalls at most):
    /// call it off the async workers.
    pub fn render(&self) -> String {
        let mut w = Writer::default();
        let snapshot = self.xdp.as_ref().map(|x| x.snapshot());
        write_xdp(&mut w, snapshot.as_ref());
        write_tftp(&mut w, &self.tftp.snapshot());
        if let Some(snapshot) = &snapshot {
            let role = match self.mode {
                Mode::Direct => "rogue",
                Mode::Proxy => "site",
            };
            write_guard(&mut w, snapshot, role);
        }
        write_states(
            &mut w,
            &CLIENTS_BY_STATE,
            self.clients.counts().iter().map(|(s, n)| (s.label(), *n)),
        );
        write_states(
            &mut w,
            &HOSTS_BY_STATE,
            self.hosts.counts().iter().map(|(s, n)| (s.label(), *n)),
        );
        let installs = self.hosts.install_stats();
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        w.single(&SEED_ALARMS, installs.alarms.load(relaxed));
        w.single(
            &HEARTBEATS_UNPROVEN,
            installs.unproven_heartbeats.load(relaxed),
        );
        w.single(
            &HEARTBEATS_STRANGER,
            installs.stranger_heartbeats.load(relaxed),
        );
        write_dhcp(
            &mut w,
            &self.dhcp,
            &self.leases.counts(crate::clock::now_secs()),
        );
        w.finish()
    }
}

/// The XDP section: attachment, DHCP identity, global and per-client counters.
pub fn write_xdp(w: &mut Writer, snapshot: Option<&Snapshot>) {
    w.single(
        &XDP_ATTACHED,
        u8::from(snapshot.is_some_and(|s| s.lan_attached)),
    );
    write_identity(w, snapshot);
    let Some(s) = snapshot else { return };
    w.family(&XDP_FRAMES);
    w.sample(
        &XDP_FRAMES,
        &[("kind", "all")],
        s.globals[Global::Frames as usize],
    );
    for kind in Kind::ALL {
        w.sample(
            &XDP_FRAMES,
            &[("kind", kind.label())],
            s.globals[Global::of(kind) as usize],
        );
    }
    w.single(&XDP_BYTES, s.globals[Global::Bytes as usize]);
    w.single(&XDP_MALFORMED, s.globals[Global::Malformed as usize]);
    w.single(&XDP_RATE_LIMITED, s.globals[Global::RateLimited as usize]);
    w.single(
        &XDP_MALFORMED_DROPPED,
        s.globals[Global::MalformedDropped as usize],
    );
    w.single(&XDP_CLIENTS, s.clients.len());

    let rows: Vec<(String, ClientCounters)> = s
        .clients
        .iter()
        .map(|(k, c)| (Mac(k.addr).to_string(), *c))
        .collect();
    let kinds: Vec<(&str, usize)> = Kind::ALL.iter().map(|k| (k.label(), *k as usize)).collect();
    w.per_row_by(
        &CLIENT_PACKETS,
        "mac",
        &rows,
        ("kind", &kinds),
        false,
        |c, i| c.packets[i],
    );
    w.per_row_by(
        &CLIENT_BYTES,
        "mac",
        &rows,
        ("kind", &kinds),
        false,
        |c, i| c.bytes[i],
    );
    w.per_row(&CLIENT_MALFORMED, "mac", &rows, |c| c.malformed);
    w.per_row(&CLIENT_RATE_LIMITED, "mac", &rows, |c| c.limited);
    w.per_row(&CLIENT_LAST_SEEN, "mac", &rows, |c| {
        format!("{:.3}", ktime_to_unix(c.last_seen_ns))
    });
}

/// The DHCP section: per-client messages, replies and unanswered offers; drops by reason;
/// the lease store and the leases held now, by state.
pub fn write_dhcp(
    w: &mut Writer,
    stats: &crate::dhcp::Stats,
    leases: &[(crate::dhcp::leases::LeaseState, u64)],
) {
    use std::sync::atomic::Ordering::Relaxed;

    use crate::dhcp::{TYPE_LABELS, handler::Silent, wire::Malformed};
    let now = std::time::Instant::now();
    let rows: Vec<(String, crate::dhcp::ClientStats)> = stats
        .clients()
        .into_iter()
        .map(|(mac, c)| (mac.map_or_else(|| "other".to_owned(), |m| m.to_string()), c))
        .collect();
    let types: Vec<(&str, usize)> = TYPE_LABELS.iter().copied().zip(0..).collect();
    w.per_row_by(
        &DHCP_MESSAGES,
        "mac",
        &rows,
        ("type", &types),
        true,
        |c, i| c.received[i],
    );
    w.per_row_by(
        &DHCP_REPLIES,
        "mac",
        &rows,
        ("type", &types),
        true,
        |c, i| c.sent[i],
    );
    w.per_row(&DHCP_OFFERS_UNANSWERED, "mac", &rows, |c| c.unanswered(now));
    w.family(&DHCP_MALFORMED);
    for (reason, n) in Malformed::LABELS.iter().zip(&stats.malformed) {
        w.sample(&DHCP_MALFORMED, &[("reason", reason)], n.load(Relaxed));
    }
    w.family(&DHCP_NO_REPLY);
    for (reason, n) in Silent::LABELS.iter().zip(&stats.silent) {
        w.sample(&DHCP_NO_REPLY, &[("reason", reason)], n.load(Relaxed));
    }
    w.family(&DHCP_LEASES);
    for (state, n) in leases {
        w.sample(&DHCP_LEASES, &[("state", state.label())], n);
    }
    w.single(&DHCP_LEASES_RESTORED, stats.restored.load(Relaxed));
    w.single(&DHCP_STORE_SKIPPED, stats.store_skipped.load(Relaxed));
    w.single(&DHCP_STORE_FAILURES, stats.store_failures.load(Relaxed));
}

/// A by-state gauge (clients, hosts): every state listed, zeros included.
pub fn write_states<'a>(
    w: &mut Writer,
    f: &Family,
    counts: impl IntoIterator<Item = (&'a str, usize)>,
) {
    w.family(f);
    for (state, n) in counts {
        w.sample(f, &[("state", state)], n);
    }
}

/// The guard section: mode, interfaces and what was met there, foreign DHCP servers
/// (`role` is rogue in direct mode, site in proxy mode).
pub fn write_guard(w: &mut Writer, s: &Snapshot, role: &str) {
    w.family(&GUARD_MODE);
    for (mode, label) in [
        (GuardMode::Enforce, "enforce"),
        (GuardMode::Monitor, "monitor"),
        (GuardMode::Off, "off"),
    ] {
        w.sample(
            &GUARD_MODE,
            &[("mode", label)],
            u8::from(s.guard_mode == mode),
        );
    }
    w.family(&GUARD_ATTACHED);
    for (iface, _, attached) in &s.guard {
        w.sample(&GUARD_ATTACHED, &[("iface", iface)], u8::from(*attached));
    }
    w.family(&GUARD_PACKETS);
    for (iface, c, _) in &s.guard {
        w.sample(
            &GUARD_PACKETS,
            &[("iface", iface), ("direction", "in")],
            c.inbound,
        );
        w.sample(
            &GUARD_PACKETS,
            &[("iface", iface), ("direction", "out")],
            c.outbound,
        );
    }
    w.family(&FOREIGN_SERVERS);
    w.sample(&FOREIGN_SERVERS, &[("role", role)], s.servers.len());
    w.family(&FOREIGN_SERVER_PACKETS);
    for (key, seen) in &s.servers {
        let (mac, ip) = (
            Mac(key.mac).to_string(),
            std::net::Ipv4Addr::from(key.ip).to_string(),
        );
        w.sample(
            &FOREIGN_SERVER_PACKETS,
            &[("mac", &mac), ("ip", &ip), ("role", role)],
            seen.packets,
        );
    }
}

/// The TFTP section: the session gauge and per-client-IP counters.
pub fn write_tftp(w: &mut Writer, s: &crate::tftp::stats::Snapshot) {
    w.single(&TFTP_SESSIONS, s.sessions);
    let rows: Vec<(String, &crate::tftp::stats::ClientStats)> = s
        .clients
        .iter()
        .map(|(ip, c)| (ip.to_string(), c))
        .collect();
    w.per_row(&TFTP_TRANSFERS, "client", &rows, |c| c.transfers);
    w.per_row(&TFTP_BYTES, "client", &rows, |c| c.bytes);
    w.per_row(&TFTP_RETRANSMITS, "client", &rows, |c| c.retransmits);
    w.family(&TFTP_ERRORS);
    for (ip, c) in &rows {
        for (why, n) in &c.errors {
            w.sample(&TFTP_ERRORS, &[("client", ip), ("reason", why.label())], n);
        }
    }
}

// ---- DHCP identity (issues 15 and 16) -------------------------------------------------
// The XDP check that a DHCP frame not relayed names its own Ethernet source in chaddr.
// Its families live in this one block.

pub const DHCP_IDENTITY_CHECK: Family = family(
    "gb10_dhcp_identity_check",
    "gauge",
    "1 when XDP checks that DHCP frames not relayed carry their Ethernet source in chaddr (gb10_guard_mode says whether it drops); 0 when XDP is not attached or the guard is off: any LAN client can then ask in another's name.",
);
pub const XDP_IDENTITY_MISMATCH: Family = family(
    "gb10_xdp_identity_mismatch_total",
    "counter",
    "DHCP frames, not relayed, whose chaddr is not their Ethernet source (dropped when the guard enforces).",
);
pub const CLIENT_IDENTITY_MISMATCH: Family = family(
    "gb10_client_identity_mismatch_total",
    "counter",
    "DHCP frames from an Ethernet source, not relayed, that named another client in chaddr (sources that sent any).",
);

/// Whether the identity check runs, what it found in all and per Ethernet source.
pub fn write_identity(w: &mut Writer, snapshot: Option<&Snapshot>) {
    let on = snapshot.is_some_and(|s| s.lan_attached && crate::xdp::checks_identity(s.guard_mode));
    w.single(&DHCP_IDENTITY_CHECK, u8::from(on));
    let Some(s) = snapshot else { return };
    w.single(
        &XDP_IDENTITY_MISMATCH,
        s.globals[Global::IdentityMismatch as usize],
    );
    w.family(&CLIENT_IDENTITY_MISMATCH);
    // Only sources that forged: the list an operator wants, not every client's zero.
    for (key, c) in s.clients.iter().filter(|(_, c)| c.forged > 0) {
        w.sample(
            &CLIENT_IDENTITY_MISMATCH,
            &[("mac", &Mac(key.addr).to_string())],
            c.forged,
        );
    }
}

#[cfg(test)]
mod identity_tests {
    use gb10_common::{ClientCounters, MacKey};

    use super::*;

    #[test]
    fn identity_check_and_mismatches() {
        let mut snap = Snapshot {
            guard_mode: GuardMode::Monitor,
            lan_attached: true,
            ..Snapshot::default()
        };
        let forger = ClientCounters {
            forged: 4,
            ..ClientCounters::default()
        };
        snap.clients
            .push((MacKey::new([2, 0, 0, 0, 0, 0xf0]), forger));
        snap.clients.push((
            MacKey::new([2, 0, 0, 0, 0, 0x0c]),
            ClientCounters::default(),
        ));
        snap.globals[Global::IdentityMismatch as usize] = 4;
        let mut w = Writer::default();
        write_identity(&mut w, Some(&snap));
        let text = w.finish();
        assert!(text.contains("gb10_dhcp_identity_check 1\n"), "{text}");
        assert!(
            text.contains("gb10_xdp_identity_mismatch_total 4\n"),
            "{text}"
        );
        assert!(
            text.contains("gb10_client_identity_mismatch_total{mac=\"02:00:00:00:00:f0\"} 4\n")
        );
        assert!(!text.contains("02:00:00:00:00:0c"), "{text}");
    }

    #[test]
    fn identity_check_off_without_xdp_or_guard() {
        for snap in [
            None,
            Some(Snapshot {
                guard_mode: GuardMode::Off,
                lan_attached: true,
                ..Snapshot::default()
            }),
            // The LAN interface gone, and the program with it.
            Some(Snapshot {
                guard_mode: GuardMode::Enforce,
                lan_attached: false,
                ..Snapshot::default()
            }),
        ] {
            let mut w = Writer::default();
            write_identity(&mut w, snap.as_ref());
            assert!(w.finish().contains("gb10_dhcp_identity_check 0\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use gb10_common::MacKey;

    use super::*;

    #[test]
    fn renders_clients_and_escapes() {
        let mut snap = Snapshot {
            lan_attached: true,
            ..Snapshot::default()
        };
        let mut c = ClientCounters::default();
        c.packets[Kind::Dhcp as usize] = 3;
        c.malformed = 2;
        snap.clients.push((MacKey::new([2, 0, 0, 0, 0, 0x1a]), c));
        snap.globals[Global::Frames as usize] = 5;
        let mut w = Writer::default();
        write_xdp(&mut w, Some(&snap));
        w.sample(&XDP_ATTACHED, &[("x", "a\"b\\")], 1);
        let text = w.finish();
        assert!(text.contains("gb10_xdp_attached 1\n"), "{text}");
        assert!(
            text.contains("gb10_client_packets_total{mac=\"02:00:00:00:00:1a\",kind=\"dhcp\"} 3\n")
        );
        assert!(text.contains("gb10_client_malformed_total{mac=\"02:00:00:00:00:1a\"} 2\n"));
        assert!(text.contains("gb10_xdp_frames_total{kind=\"all\"} 5\n"));
        assert!(text.contains(r#"x="a\"b\\""#), "{text}");
    }

    #[test]
    fn without_xdp_only_the_gauge() {
        let mut w = Writer::default();
        write_xdp(&mut w, None);
        let text = w.finish();
        assert!(text.contains("gb10_xdp_attached 0\n"));
        assert!(!text.contains("gb10_client_"));
    }
}
