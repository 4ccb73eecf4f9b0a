//! Hand-made Ethernet/IPv4/UDP frames: well-formed DHCP and TFTP requests from a chosen
//! MAC, and the truncated and lying frames the XDP parser must count as malformed.

/// Broadcast MAC.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// One end of a UDP exchange.
#[derive(Clone, Copy, Debug)]
pub struct End {
    pub mac: [u8; 6],
    pub ip: [u8; 4],
    pub port: u16,
}

impl End {
    pub const fn new(mac: [u8; 6], ip: [u8; 4], port: u16) -> Self {
        Self { mac, ip, port }
    }
}

/// A DHCP client before it has an address, from `mac`.
pub const fn dhcp_client(mac: [u8; 6]) -> End {
    End::new(mac, [0; 4], 68)
}

/// Everyone's DHCP server port, by broadcast.
pub const DHCP_BROADCAST: End = End::new(BROADCAST, [255; 4], 67);

/// An IPv4/UDP frame; `ip_options` (a multiple of 4 bytes) exercises IHL > 5.
pub fn udp_frame(from: End, to: End, ip_options: &[u8], payload: &[u8]) -> Vec<u8> {
    let (src_mac, dst_mac, src, dst, sport, dport) =
        (from.mac, to.mac, from.ip, to.ip, from.port, to.port);
    assert_eq!(ip_options.len() % 4, 0, "IP options pad to 4 bytes");
    let ihl = 20 + ip_options.len();
    let udp_len = 8 + payload.len();
    let tot = ihl + udp_len;
    let mut f = Vec::with_capacity(14 + tot);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let ip_start = f.len();
    f.push(0x40 | (ihl / 4) as u8);
    f.push(0);
    f.extend_from_slice(&(tot as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]); // id, flags/frag
    f.push(64);
    f.push(17);
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(ip_options);
    let csum = checksum(&f[ip_start..ip_start + ihl]);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // no UDP checksum (allowed for IPv4)
    f.extend_from_slice(payload);
    f
}

fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A BOOTP/DHCP message with the given options (type 53 first, END appended).
pub fn dhcp_payload(mac: [u8; 6], xid: u32, msg_type: u8, options: &[(u8, &[u8])]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, msg_type]);
    for (code, data) in options {
        p.push(*code);
        p.push(data.len() as u8);
        p.extend_from_slice(data);
    }
    p.push(255);
    p
}

/// A broadcast DHCPDISCOVER from `mac`.
pub fn dhcp_discover(mac: [u8; 6], xid: u32) -> Vec<u8> {
    forged_discover(mac, mac, xid)
}

/// A broadcast DHCPDISCOVER sent from Ethernet address `src` that names `chaddr` as the
/// client: an impersonation when the two differ and the frame is not relayed.
pub fn forged_discover(src: [u8; 6], chaddr: [u8; 6], xid: u32) -> Vec<u8> {
    let payload = dhcp_payload(chaddr, xid, 1, &[(55, &[1, 3, 6, 67])]);
    udp_frame(dhcp_client(src), DHCP_BROADCAST, &[], &payload)
}

/// `payload` (from [`dhcp_payload`]) as a relay agent forwards it: `giaddr` set, one hop.
pub fn relayed(mut payload: Vec<u8>, giaddr: [u8; 4]) -> Vec<u8> {
    payload[3] = 1;
    payload[24..28].copy_from_slice(&giaddr);
    payload
}

/// The UDP source and destination ports and payload of an untagged IPv4/UDP frame.
pub fn udp_of(frame: &[u8]) -> Option<(u16, u16, &[u8])> {
    if frame.get(12..14)? != [0x08, 0x00] || *frame.get(23)? != 17 {
        return None;
    }
    let l4 = 14 + usize::from(frame.get(14)? & 0x0f) * 4;
    let udp = frame.get(l4..l4 + 8)?;
    let len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    Some((
        u16::from_be_bytes([udp[0], udp[1]]),
        u16::from_be_bytes([udp[2], udp[3]]),
        frame.get(l4 + 8..l4 + len.max(8))?,
    ))
}

/// A TFTP read request for `file` from `mac` to `server`.
pub fn tftp_rrq(from: End, server: End, file: &str) -> Vec<u8> {
    let mut p = vec![0, 1];
    p.extend_from_slice(file.as_bytes());
    p.push(0);
    p.extend_from_slice(b"octet\0");
    udp_frame(from, End { port: 69, ..server }, &[], &p)
}

/// Frames from `mac` that lie or are cut short, each of which the XDP program must count
/// as malformed (and nothing may crash on).
pub fn malformed(mac: [u8; 6]) -> Vec<Vec<u8>> {
    let good = dhcp_discover(mac, 7);
    let mut frames = Vec::new();
    // Cut in the DHCP payload: IP total length claims more than the frame holds.
    frames.push(good[..200].to_vec());
    // Cut inside the IPv4 header.
    frames.push(good[..14 + 12].to_vec());
    // IHL below 5.
    let mut f = good.clone();
    f[14] = 0x42;
    frames.push(f);
    // UDP length longer than the IP payload.
    let mut f = good.clone();
    f[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&2000u16.to_be_bytes());
    frames.push(f);
    // DHCP payload shorter than BOOTP + cookie (a well-formed IP/UDP frame).
    frames.push(udp_frame(
        dhcp_client(mac),
        DHCP_BROADCAST,
        &[],
        &[1u8; 100],
    ));
    // Bad magic cookie.
    let mut payload = dhcp_payload(mac, 8, 1, &[]);
    payload[236] = 0;
    frames.push(udp_frame(dhcp_client(mac), DHCP_BROADCAST, &[], &payload));
    // TFTP with a 2-byte payload.
    let tftp_server = End::new(BROADCAST, [255; 4], 69);
    frames.push(udp_frame(
        End::new(mac, [0; 4], 1069),
        tftp_server,
        &[],
        &[0, 1],
    ));
    // Garbage after an IPv4 ethertype.
    let mut f = Vec::from(BROADCAST);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend((0..40u8).map(|i| i.wrapping_mul(37).wrapping_add(0x9d)));
    frames.push(f);
    // A VLAN tag cut short.
    let mut f = Vec::from(BROADCAST);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x81, 0x00, 0x00]);
    frames.push(f);
    frames
}

/// `payload` (from [`dhcp_payload`]) naming `ciaddr`, as a client that holds an address
/// sends a RELEASE or a renewal; the broadcast flag cleared.
pub fn with_ciaddr(mut payload: Vec<u8>, ciaddr: [u8; 4]) -> Vec<u8> {
    payload[10] = 0;
    payload[12..16].copy_from_slice(&ciaddr);
    payload
}
