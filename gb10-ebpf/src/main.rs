//! LAN ingress XDP program: parses each frame, classifies DHCP, proxy-DHCP and TFTP,
//! and counts them per client MAC and globally.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{HashMap, LruPerCpuHashMap, PerCpuArray},
    programs::XdpContext,
};
use gb10_common::{
    CLIENTS_MAX, ClientCounters, DHCP_MAGIC_COOKIE, DHCP_MIN_PAYLOAD, GLOBALS, Global, Kind,
    MacKey, PORT_DHCP_SERVER, PORT_PROXY_DHCP, PORT_TFTP, TFTP_MIN_PAYLOAD, TFTP_PORTS_MAX,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

// Map statics carry the names in gb10_common so both sides agree.
#[map]
static GB10_CLIENTS: LruPerCpuHashMap<MacKey, ClientCounters> =
    LruPerCpuHashMap::with_max_entries(CLIENTS_MAX, 0);
#[map]
static GB10_GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBALS, 0);
#[map]
static GB10_TFTP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(TFTP_PORTS_MAX, 0);

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HDR_LEN: usize = 4;
const IPPROTO_UDP: u8 = 17;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;
const BOOTP_FIXED_LEN: usize = 236;

/// What parsing a frame found out.
enum Parsed {
    /// A well-formed frame from `mac`, of `kind`.
    Frame { mac: [u8; 6], kind: Kind },
    /// A frame from `mac` whose IPv4/UDP/DHCP/TFTP headers lie or are cut short.
    Malformed { mac: [u8; 6] },
    /// Shorter than an Ethernet header: not even a MAC to blame.
    Runt,
}

#[xdp]
pub fn gb10_lan(ctx: XdpContext) -> u32 {
    // Fail open: this program observes; nothing it cannot parse may cost a client
    // its boot. Dropping is the guard's decision, made on purpose, not here.
    let len = (ctx.data_end() - ctx.data()) as u64;
    bump(Global::Frames, 1);
    bump(Global::Bytes, len);
    match parse(&ctx) {
        Parsed::Frame { mac, kind } => {
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
        Parsed::Malformed { mac } => {
            bump(Global::Malformed, 1);
            count(mac, |c| c.malformed += 1);
        }
        Parsed::Runt => bump(Global::Malformed, 1),
    }
    xdp_action::XDP_PASS
}

/// A pointer to a `T` at `offset` into the frame, when the whole `T` is inside it.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

#[inline(always)]
fn parse(ctx: &XdpContext) -> Parsed {
    let Some(eth) = ptr_at::<EthHdr>(ctx, 0) else {
        return Parsed::Runt;
    };
    // SAFETY: ptr_at checked that the header is inside the frame.
    let (mac, mut ether_type) = unsafe { ((*eth).src_addr, u16::from_be((*eth).ether_type)) };
    match classify(ctx, ether_type_offset(ctx, &mut ether_type), ether_type) {
        Some(kind) => Parsed::Frame { mac, kind },
        None => Parsed::Malformed { mac },
    }
}

/// Skips one 802.1Q/802.1ad tag; returns the offset of the L3 header, or `usize::MAX`
/// when the tag is cut short.
#[inline(always)]
fn ether_type_offset(ctx: &XdpContext, ether_type: &mut u16) -> usize {
    if *ether_type != ETH_P_8021Q && *ether_type != ETH_P_8021AD {
        return EthHdr::LEN;
    }
    let Some(tag) = ptr_at::<[u8; VLAN_HDR_LEN]>(ctx, EthHdr::LEN) else {
        return usize::MAX;
    };
    // SAFETY: inside the frame, checked by ptr_at.
    let tag = unsafe { *tag };
    *ether_type = u16::from_be_bytes([tag[2], tag[3]]);
    EthHdr::LEN + VLAN_HDR_LEN
}

/// The kind of a frame whose L3 header starts at `l3`; `None` when malformed.
#[inline(always)]
fn classify(ctx: &XdpContext, l3: usize, ether_type: u16) -> Option<Kind> {
    if l3 == usize::MAX {
        return None;
    }
    if ether_type != ETH_P_IPV4 {
        return Some(Kind::Other);
    }
    let ip = ptr_at::<Ipv4Hdr>(ctx, l3)?;
    // SAFETY: inside the frame, checked by ptr_at.
    let ip = unsafe { *ip };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    let frame_len = ctx.data_end() - ctx.data();
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || l3 + tot_len > frame_len {
        return None;
    }
    let frags = u16::from_be_bytes(ip.frags);
    if ip.proto != IPPROTO_UDP || frags & (IP_MF | IP_OFFSET_MASK) != 0 {
        // Fragments carry no complete UDP datagram; DHCP and TFTP never fragment.
        return Some(Kind::Other);
    }
    let l4 = l3 + ihl;
    let udp = ptr_at::<UdpHdr>(ctx, l4)?;
    // SAFETY: inside the frame, checked by ptr_at.
    let udp = unsafe { *udp };
    let udp_len = u16::from_be_bytes(udp.len) as usize;
    if udp_len < UdpHdr::LEN || udp_len > tot_len - ihl {
        return None;
    }
    let payload = l4 + UdpHdr::LEN;
    let payload_len = udp_len - UdpHdr::LEN;
    let kind = match u16::from_be_bytes(udp.dst) {
        PORT_DHCP_SERVER => Kind::Dhcp,
        PORT_PROXY_DHCP => Kind::ProxyDhcp,
        PORT_TFTP => Kind::Tftp,
        port => {
            // SAFETY: a plain lookup; the value is not dereferenced.
            if unsafe { GB10_TFTP_PORTS.get(&port) }.is_some() {
                Kind::Tftp
            } else {
                Kind::Other
            }
        }
    };
    match kind {
        Kind::Dhcp | Kind::ProxyDhcp => {
            if payload_len < DHCP_MIN_PAYLOAD {
                return None;
            }
            let cookie = ptr_at::<[u8; 4]>(ctx, payload + BOOTP_FIXED_LEN)?;
            // SAFETY: inside the frame, checked by ptr_at.
            if unsafe { *cookie } != DHCP_MAGIC_COOKIE {
                return None;
            }
        }
        Kind::Tftp => {
            if payload_len < TFTP_MIN_PAYLOAD {
                return None;
            }
            let opcode = ptr_at::<[u8; 2]>(ctx, payload)?;
            // SAFETY: inside the frame, checked by ptr_at.
            let opcode = u16::from_be_bytes(unsafe { *opcode });
            // RFC 1350 opcodes 1-5 and RFC 2347's OACK (6).
            if !(1..=6).contains(&opcode) {
                return None;
            }
        }
        Kind::Other => {}
    }
    Some(kind)
}

#[inline(always)]
fn bump(counter: Global, n: u64) {
    if let Some(v) = GB10_GLOBAL.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so no other writer runs concurrently.
        unsafe { *v += n };
    }
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
