//! LAN ingress: counts per client MAC, drops DHCP frames whose `chaddr` is not their
//! Ethernet source (unless relayed), rate-limits DHCP/TFTP requests per client and
//! globally, drops malformed DHCP/TFTP frames, records foreign DHCP servers.
use aya_ebpf::{
    bindings::xdp_action, helpers::bpf_ktime_get_ns, macros::xdp, programs::XdpContext,
};
use gb10_common::{
    Bucket, ClientCounters, DHCP_MAGIC_COOKIE, DHCP_MIN_PAYLOAD, GUARD_ENFORCE, GUARD_OFF, Global,
    GuardConfig, Kind, MacKey, PORT_DHCP_SERVER, PORT_PROXY_DHCP, PORT_TFTP, Rate, ServerKey,
    ServerSeen, TFTP_MIN_PAYLOAD,
};

use crate::{
    GB10_ALLOWANCE, GB10_BUCKETS, GB10_CLIENTS, GB10_GLOBAL_BUCKET, GB10_SERVERS, bump,
    guard_config, is_request_port, is_tftp_transfer,
    parse::{Bytes, Frame, Udp, parse},
};

const BOOTP_FIXED_LEN: usize = 236;
const BOOTP_GIADDR: usize = 24;
const BOOTP_CHADDR: usize = 28;
const BOOTREPLY: u8 = 2;
const PORT_DHCP_CLIENT: u16 = 68;

/// What the frame asks of the guard.
enum Verdict {
    Pass,
    /// Over its rate, or naming another client than its source; counted where judged.
    Refused,
    /// Malformed and aimed at DHCP/TFTP.
    Malformed,
}

#[xdp]
pub fn gb10_lan(ctx: XdpContext) -> u32 {
    let bytes = Bytes::of_xdp(&ctx);
    let len = bytes.len() as u64;
    bump(Global::Frames, 1);
    bump(Global::Bytes, len);
    let config = guard_config();
    let verdict = match parse(&bytes) {
        Frame::Runt => {
            bump(Global::Malformed, 1);
            Verdict::Pass
        }
        Frame::Malformed { mac, ports } => {
            malformed(mac, ports.is_some_and(|(_, d)| aimed_at_us(d)))
        }
        Frame::NotUdp { mac } => {
            counted(mac, Kind::Other, len);
            Verdict::Pass
        }
        Frame::Udp { mac, udp } => udp_frame(&bytes, &config, mac, udp, len),
    };
    // Fail open except on purpose: only a frame the guard judged is ever dropped, and only
    // in enforce mode; monitor mode counts the same verdicts and passes everything.
    match verdict {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Refused => drop_if_enforcing(&config),
        Verdict::Malformed if config.mode != GUARD_OFF => {
            bump(Global::MalformedDropped, 1);
            drop_if_enforcing(&config)
        }
        Verdict::Malformed => xdp_action::XDP_PASS,
    }
}

#[inline(always)]
fn drop_if_enforcing(config: &GuardConfig) -> u32 {
    if config.mode == GUARD_ENFORCE {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn aimed_at_us(dport: u16) -> bool {
    is_request_port(dport) || is_tftp_transfer(dport)
}

#[inline(always)]
fn malformed(mac: [u8; 6], ours: bool) -> Verdict {
    bump(Global::Malformed, 1);
    count(mac, |c| c.malformed += 1);
    if ours {
        Verdict::Malformed
    } else {
        Verdict::Pass
    }
}

#[inline(always)]
fn counted(mac: [u8; 6], kind: Kind, len: u64) {
    bump(Global::of(kind), 1);
    count(mac, |c| {
        if let Some(p) = c.packets.get_mut(kind as usize) {
            *p += 1;
        }
        if let Some(b) = c.bytes.get_mut(kind as usize) {
            *b += len;
        }
    });
}

#[inline(always)]
fn udp_frame(ctx: &Bytes, config: &GuardConfig, mac: [u8; 6], udp: Udp, len: u64) -> Verdict {
    let kind = match udp.dport {
        PORT_DHCP_SERVER => Kind::Dhcp,
        PORT_PROXY_DHCP => Kind::ProxyDhcp,
        PORT_TFTP => Kind::Tftp,
        port if is_tftp_transfer(port) => Kind::Tftp,
        _ => Kind::Other,
    };
    // A request to judge: its bucket's key, whether an inventory allowance may apply,
    // whether it names another client than its sender.
    let (key, may_be_known, forged) = match kind {
        Kind::Dhcp | Kind::ProxyDhcp => {
            let Some(head) = dhcp_head(ctx, &udp) else {
                return malformed(mac, true);
            };
            counted(mac, kind, len);
            if u32::from_ne_bytes(head.giaddr) != 0 {
                // Relayed: the frame comes from the relay's MAC and names its client, so
                // the bucket follows chaddr (a relay's clients are not lumped together).
                // Nothing on the LAN vouches for that chaddr: no inventory allowance.
                (MacKey::relayed(head.chaddr), false, false)
            } else {
                // Not relayed: the frame must name its own Ethernet source, or any
                // machine on the LAN could ask for (and be sent) another's lease. The
                // bucket follows the source whatever chaddr says, so renaming buys no
                // budget, and an inventory host's allowance goes only to a frame that is
                // what it claims to be.
                let forged = !same_mac(&head.chaddr, &mac);
                (MacKey::new(mac), !forged, forged)
            }
        }
        Kind::Tftp => {
            let opcode = if udp.payload_len < TFTP_MIN_PAYLOAD {
                None
            } else {
                ctx.read::<[u8; 2]>(udp.payload).map(u16::from_be_bytes)
            };
            // RFC 1350 opcodes 1-5 and RFC 2347's OACK (6).
            let Some(opcode) = opcode.filter(|op| (1..=6).contains(op)) else {
                return malformed(mac, true);
            };
            counted(mac, kind, len);
            // Only new transfers are rate-limited: a transfer's ACKs must all get through.
            if udp.dport != PORT_TFTP || opcode > 2 {
                return Verdict::Pass;
            }
            // TFTP names no client: its bucket follows the Ethernet source.
            (MacKey::new(mac), true, false)
        }
        Kind::Other => {
            if udp.sport == PORT_DHCP_SERVER
                && (udp.dport == PORT_DHCP_CLIENT || udp.dport == PORT_DHCP_SERVER)
                && dhcp_head(ctx, &udp).is_some_and(|head| head.op == BOOTREPLY)
            {
                // Our own replies leave by egress and never show up here: this is
                // another server answering on the LAN.
                foreign_server(mac, udp.src_ip);
            }
            counted(mac, kind, len);
            return Verdict::Pass;
        }
    };
    if config.mode == GUARD_OFF {
        return Verdict::Pass;
    }
    judged(mac, !admit(config, key, may_be_known), forged)
}

/// What the guard reads of a DHCP message's fixed part.
struct DhcpHead {
    op: u8,
    /// The relay agent's address; zero when the client sent the frame itself.
    giaddr: [u8; 4],
    /// The client the message speaks for (its first 6 bytes: an Ethernet address).
    chaddr: [u8; 6],
}

/// The head of a well-formed DHCP payload.
///
/// The head (op..chaddr) is read in one access *before* the cookie is checked: were it
/// read after, LLVM would drop its bounds check as implied by the cookie's, and the
/// verifier, which cannot follow that proof, would refuse the program.
#[inline(always)]
fn dhcp_head(ctx: &Bytes, udp: &Udp) -> Option<DhcpHead> {
    if udp.payload_len < DHCP_MIN_PAYLOAD {
        return None;
    }
    let head = ctx.read::<[u8; BOOTP_CHADDR + 6]>(udp.payload)?;
    if ctx.read::<[u8; 4]>(udp.payload + BOOTP_FIXED_LEN)? != DHCP_MAGIC_COOKIE {
        return None;
    }
    let mut giaddr = [0u8; 4];
    giaddr.copy_from_slice(&head[BOOTP_GIADDR..BOOTP_CHADDR]);
    let mut chaddr = [0u8; 6];
    chaddr.copy_from_slice(&head[BOOTP_CHADDR..]);
    Some(DhcpHead {
        op: head[0],
        giaddr,
        chaddr,
    })
}

/// Whether two MACs are equal, byte by byte so that it stays inline on the hot path (an
/// array `==` of 6 bytes may become a call to the `bcmp` builtin).
#[inline(always)]
fn same_mac(a: &[u8; 6], b: &[u8; 6]) -> bool {
    a.iter().zip(b).fold(0, |diff, (x, y)| diff | (x ^ y)) == 0
}

#[inline(always)]
fn foreign_server(mac: [u8; 6], ip: [u8; 4]) {
    bump(Global::ForeignServer, 1);
    let key = ServerKey {
        mac,
        pad: [0; 2],
        ip,
    };
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    match GB10_SERVERS.get_ptr_mut(&key) {
        Some(s) => {
            // SAFETY: a map value; a lost update under a race only loses a count.
            let s = unsafe { &mut *s };
            s.packets += 1;
            s.last_ns = now;
        }
        None => {
            let _ = GB10_SERVERS.insert(
                &key,
                &ServerSeen {
                    packets: 1,
                    last_ns: now,
                },
                0,
            );
        }
    }
}

/// Takes one packet's credit from `bucket` at `rate`; whether there was enough.
#[inline(always)]
fn take(bucket: &mut Bucket, rate: &Rate, now: u64) -> bool {
    let credit = bucket.credit_ns + now.saturating_sub(bucket.last_ns);
    let credit = if credit > rate.cap_ns {
        rate.cap_ns
    } else {
        credit
    };
    bucket.last_ns = now;
    if credit >= rate.cost_ns {
        bucket.credit_ns = credit - rate.cost_ns;
        true
    } else {
        bucket.credit_ns = credit;
        false
    }
}

/// Whether a request is within its rates: the bucket of `key` at the inventory's
/// allowance for it (when `may_be_known` and there is one), else at the client rate and
/// then the global bucket. Bucket updates are not atomic: under a race between CPUs a
/// few extra packets may pass, never fewer.
#[inline(always)]
fn admit(config: &GuardConfig, key: MacKey, may_be_known: bool) -> bool {
    let allowance = if may_be_known {
        // SAFETY: a copy out of the map.
        unsafe { GB10_ALLOWANCE.get(&key) }.copied()
    } else {
        None
    };
    let rate = allowance.unwrap_or(config.client);
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    let ok = if rate.cost_ns == 0 {
        true
    } else {
        match GB10_BUCKETS.get_ptr_mut(&key) {
            // SAFETY: a map value, see above on races.
            Some(b) => take(unsafe { &mut *b }, &rate, now),
            None => {
                let fresh = Bucket {
                    credit_ns: rate.cap_ns - rate.cost_ns,
                    last_ns: now,
                };
                let _ = GB10_BUCKETS.insert(&key, &fresh, 0);
                true
            }
        }
    };
    ok && (allowance.is_some()
        || config.global.cost_ns == 0
        || match GB10_GLOBAL_BUCKET.get_ptr_mut(0) {
            // SAFETY: the one global bucket, see above on races.
            Some(b) => take(unsafe { &mut *b }, &config.global, now),
            None => true,
        })
}

/// Counts what the guard found against a request from `mac`: over its rate, a forged
/// chaddr, or both (each counter states one fact about the frame, so one frame may be
/// in both). Either refuses it.
#[inline(always)]
fn judged(mac: [u8; 6], limited: bool, forged: bool) -> Verdict {
    if !limited && !forged {
        return Verdict::Pass;
    }
    if limited {
        bump(Global::RateLimited, 1);
    }
    if forged {
        bump(Global::IdentityMismatch, 1);
    }
    count(mac, |c| {
        c.limited += u64::from(limited);
        c.forged += u64::from(forged);
    });
    Verdict::Refused
}

#[inline(always)]
fn count(mac: [u8; 6], update: impl Fn(&mut ClientCounters)) {
    let key = MacKey::new(mac);
    // SAFETY: a plain helper call.
    let now = unsafe { bpf_ktime_get_ns() };
    match GB10_CLIENTS.get_ptr_mut(&key) {
        Some(c) => {
            // SAFETY: per-CPU value, so no other writer runs concurrently.
            let c = unsafe { &mut *c };
            update(c);
            c.last_seen_ns = now;
        }
        None => {
            let mut c = ClientCounters::default();
            update(&mut c);
            c.last_seen_ns = now;
            // A full LRU evicts the stalest client; an error here only loses a count.
            let _ = GB10_CLIENTS.insert(&key, &c, 0);
        }
    }
}
