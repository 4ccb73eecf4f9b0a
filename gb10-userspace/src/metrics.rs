//! Every metric on `/metrics`: names, help and types live here, rendered in the
//! Prometheus text format (0.0.4) from the subsystems' counters.
use std::fmt::{Display, Write as _};

use gb10_common::{Global, Kind};

use crate::xdp::{Snapshot, format_mac, ktime_to_unix};

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

    pub fn finish(self) -> String {
        self.out
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The XDP section: attachment, global and per-client counters.
pub fn write_xdp(w: &mut Writer, snapshot: Option<&Snapshot>) {
    w.single(&XDP_ATTACHED, u8::from(snapshot.is_some()));
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
    w.single(&XDP_CLIENTS, s.clients.len());

    let macs: Vec<String> = s.clients.iter().map(|(k, _)| format_mac(&k.addr)).collect();
    for (family, value) in [
        (
            &CLIENT_PACKETS,
            (|c, i| c.packets[i]) as fn(&gb10_common::ClientCounters, usize) -> u64,
        ),
        (&CLIENT_BYTES, |c, i| c.bytes[i]),
    ] {
        w.family(family);
        for ((_, c), mac) in s.clients.iter().zip(&macs) {
            for kind in Kind::ALL {
                w.sample(
                    family,
                    &[("mac", mac), ("kind", kind.label())],
                    value(c, kind as usize),
                );
            }
        }
    }
    w.family(&CLIENT_MALFORMED);
    for ((_, c), mac) in s.clients.iter().zip(&macs) {
        w.sample(&CLIENT_MALFORMED, &[("mac", mac)], c.malformed);
    }
    w.family(&CLIENT_LAST_SEEN);
    for ((_, c), mac) in s.clients.iter().zip(&macs) {
        w.sample(
            &CLIENT_LAST_SEEN,
            &[("mac", mac)],
            format!("{:.3}", ktime_to_unix(c.last_seen_ns)),
        );
    }
}

/// The TFTP section: the session gauge and per-client-IP counters.
pub fn write_tftp(w: &mut Writer, s: &crate::tftp::stats::Snapshot) {
    w.single(&TFTP_SESSIONS, s.sessions);
    let ips: Vec<String> = s.clients.iter().map(|(ip, _)| ip.to_string()).collect();
    for (family, value) in [
        (
            &TFTP_TRANSFERS,
            (|c| c.transfers) as fn(&crate::tftp::stats::ClientStats) -> u64,
        ),
        (&TFTP_BYTES, |c| c.bytes),
        (&TFTP_RETRANSMITS, |c| c.retransmits),
    ] {
        w.family(family);
        for ((_, c), ip) in s.clients.iter().zip(&ips) {
            w.sample(family, &[("client", ip)], value(c));
        }
    }
    w.family(&TFTP_ERRORS);
    for ((_, c), ip) in s.clients.iter().zip(&ips) {
        for (why, n) in &c.errors {
            w.sample(&TFTP_ERRORS, &[("client", ip), ("reason", why.label())], n);
        }
    }
}

#[cfg(test)]
mod tests {
    use gb10_common::{ClientCounters, MacKey};

    use super::*;

    #[test]
    fn renders_clients_and_escapes() {
        let mut snap = Snapshot::default();
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
