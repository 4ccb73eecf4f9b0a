//! Bounds-checked parsing of Ethernet (+ one 802.1Q/802.1ad tag), IPv4 with options and
//! UDP, shared by the XDP and TC programs through [`Packet`].
use aya_ebpf::programs::{TcContext, XdpContext};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, udp::UdpHdr};

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const VLAN_HDR_LEN: usize = 4;
const IPPROTO_UDP: u8 = 17;
const IP_MF: u16 = 0x2000;
const IP_OFFSET_MASK: u16 = 0x1fff;

/// A frame's bounds, taken once per packet. Every check and every access goes through
/// the same `start`: the verifier only trusts an access made from the very pointer whose
/// bounds were compared, and a fresh load of `ctx->data` starts with none.
#[derive(Clone, Copy)]
pub struct Bytes {
    start: usize,
    end: usize,
}

impl Bytes {
    #[inline(always)]
    pub fn of_xdp(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    #[inline(always)]
    pub fn of_tc(ctx: &TcContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Reads a `T` at `offset` when the whole `T` is inside the frame.
    #[inline(always)]
    pub fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        if self.start + offset + core::mem::size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: checked above that the whole T is inside the frame.
        Some(unsafe { ((self.start + offset) as *const T).read_unaligned() })
    }
}

/// A UDP datagram that is whole inside its frame.
#[derive(Clone, Copy)]
pub struct Udp {
    pub src_ip: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    /// Offset of the UDP payload in the frame.
    pub payload: usize,
    pub payload_len: usize,
}

/// What a frame is, as far as the guard and the counters care.
pub enum Frame {
    /// Shorter than an Ethernet header: not even a MAC to blame.
    Runt,
    /// From `mac`, with IPv4/UDP headers that lie or are cut short. `ports` when the UDP
    /// header could still be read (to tell whether it was aimed at DHCP/TFTP).
    Malformed {
        mac: [u8; 6],
        ports: Option<(u16, u16)>,
    },
    /// From `mac`, not IPv4/UDP (or a fragment).
    NotUdp { mac: [u8; 6] },
    /// From `mac`, a whole UDP datagram.
    Udp { mac: [u8; 6], udp: Udp },
}

#[inline(always)]
pub fn parse(p: &Bytes) -> Frame {
    let Some(eth) = p.read::<EthHdr>(0) else {
        return Frame::Runt;
    };
    let mac = eth.src_addr;
    let mut ether_type = u16::from_be(eth.ether_type);
    let mut l3 = EthHdr::LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        let Some(tag) = p.read::<[u8; VLAN_HDR_LEN]>(EthHdr::LEN) else {
            return Frame::Malformed { mac, ports: None };
        };
        ether_type = u16::from_be_bytes([tag[2], tag[3]]);
        l3 += VLAN_HDR_LEN;
    }
    if ether_type != ETH_P_IPV4 {
        return Frame::NotUdp { mac };
    }
    let Some(ip) = p.read::<Ipv4Hdr>(l3) else {
        return Frame::Malformed { mac, ports: None };
    };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be_bytes(ip.tot_len) as usize;
    let frame_len = p.len();
    if ip.vihl >> 4 != 4 || ihl < Ipv4Hdr::LEN || tot_len < ihl || l3 + tot_len > frame_len {
        // The UDP ports may still be readable: say where the frame was aimed.
        let ports = if ip.proto == IPPROTO_UDP && ihl >= Ipv4Hdr::LEN {
            p.read::<UdpHdr>(l3 + ihl)
                .map(|u| (u16::from_be_bytes(u.src), u16::from_be_bytes(u.dst)))
        } else {
            None
        };
        return Frame::Malformed { mac, ports };
    }
    let frags = u16::from_be_bytes(ip.frags);
    if ip.proto != IPPROTO_UDP || frags & (IP_MF | IP_OFFSET_MASK) != 0 {
        // Fragments carry no complete UDP datagram; DHCP and TFTP never fragment.
        return Frame::NotUdp { mac };
    }
    let l4 = l3 + ihl;
    let Some(udp) = p.read::<UdpHdr>(l4) else {
        return Frame::Malformed { mac, ports: None };
    };
    let (sport, dport) = (u16::from_be_bytes(udp.src), u16::from_be_bytes(udp.dst));
    let udp_len = u16::from_be_bytes(udp.len) as usize;
    if udp_len < UdpHdr::LEN || udp_len > tot_len - ihl {
        return Frame::Malformed {
            mac,
            ports: Some((sport, dport)),
        };
    }
    Frame::Udp {
        mac,
        udp: Udp {
            src_ip: ip.src_addr,
            sport,
            dport,
            payload: l4 + UdpHdr::LEN,
            payload_len: udp_len - UdpHdr::LEN,
        },
    }
}
