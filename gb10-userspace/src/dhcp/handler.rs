//! The DHCP decisions as pure functions: a decoded request, the lease table and the
//! context in; the reply, where it goes, what must be on disk first and what happened
//! out. No sockets, no clock: the server supplies both.
//!
//! Direct mode is authoritative for its pools: a REQUEST (any state) for an address
//! that is free in the pool of the client's subnet (or is its fixed address) is ACKed,
//! anything else NAKed, so clients that come from another network re-discover at once.
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{
    DhcpOption, Flags, HType, Message, MessageType, Opcode, OptionCode, UnknownOption,
};
use serde::Serialize;

use super::leases::{ClientId, Lease, LeaseState, Leases};
use crate::{
    boot::{self, Action, BootDecision, BootRequest, IPXE_ENCAP, IPXE_NO_PXEDHCP, ServerAddr},
    clients::ClientEvent,
    config::{BootConfig, DhcpConfig},
    inventory::{Inventory, Mac},
};

/// Client and server UDP ports (RFC 2131), and the PXE boot-server port.
pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
pub const PXE_PORT: u16 = 4011;

/// What the handler needs besides the request and the leases.
pub struct Ctx<'a> {
    pub dhcp: &'a DhcpConfig,
    pub boot: &'a BootConfig,
    pub inventory: &'a Inventory,
    /// Our live LAN address (server identifier, siaddr) and HTTP port.
    pub server: ServerAddr,
    /// Unix seconds.
    pub now: u64,
}

/// Where a reply goes (RFC 2131 §4.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// To an address and port: a relay's giaddr:67, a client's ciaddr:68, a PXE
    /// client's source on 4011.
    To(SocketAddrV4),
    /// 255.255.255.255:68 on the LAN interface.
    Broadcast,
    /// To `ip`:68 at `mac`: a client without an address yet; needs a neighbour entry,
    /// since it cannot answer ARP.
    Hardware { ip: Ipv4Addr, mac: Mac },
}

/// Why no reply was sent. `label()` names the metric series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Silent {
    /// A REQUEST naming another server: the client took its offer.
    OtherServer,
    /// An unknown client and `unknown_clients = "ignore"`.
    Ignored,
    /// Relayed from a subnet we have no pool for.
    NoPool,
    /// No free address.
    PoolExhausted,
    /// RELEASE or DECLINE (never answered).
    Done,
    /// A message type a server does not answer (OFFER, ACK, …).
    Unsupported,
    /// Proxy mode: a client that is not PXEClient/HTTPClient.
    NotPxe,
    /// Proxy mode: a REQUEST meant for the site's DHCP server.
    NotForUs,
}

impl Silent {
    pub fn label(self) -> &'static str {
        match self {
            Self::OtherServer => "other_server",
            Self::Ignored => "ignored",
            Self::NoPool => "no_pool",
            Self::PoolExhausted => "pool_exhausted",
            Self::Done => "release_or_decline",
            Self::Unsupported => "unsupported_type",
            Self::NotPxe => "not_pxe",
            Self::NotForUs => "not_for_us",
        }
    }

    pub const LABELS: [&'static str; 8] = [
        "other_server",
        "ignored",
        "no_pool",
        "pool_exhausted",
        "release_or_decline",
        "unsupported_type",
        "not_pxe",
        "not_for_us",
    ];
}

/// What the lease writer must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Persist {
    Nothing,
    /// On disk before the reply leaves (an ACK).
    BeforeReply(Lease),
    /// On disk eventually (a release, a decline).
    Later(Lease),
}

/// The handler's answer.
#[derive(Debug)]
pub struct Outcome {
    pub reply: Option<(Message, Dest)>,
    pub silent: Option<Silent>,
    pub persist: Persist,
    pub decision: Option<BootDecision>,
    pub events: Vec<ClientEvent>,
}

impl Outcome {
    fn silent(why: Silent) -> Self {
        Self {
            reply: None,
            silent: Some(why),
            persist: Persist::Nothing,
            decision: None,
            events: Vec::new(),
        }
    }
}

/// The identity leases are keyed by: option 61, else htype + chaddr.
pub fn client_id(req: &Message) -> ClientId {
    match req.opts().get(OptionCode::ClientIdentifier) {
        Some(DhcpOption::ClientIdentifier(id)) if !id.is_empty() => ClientId(id.clone()),
        _ => {
            let mut id = vec![u8::from(req.htype())];
            id.extend_from_slice(req.chaddr());
            ClientId(id)
        }
    }
}

/// The client's Ethernet address (zeros when chaddr is not one).
pub fn mac_of(req: &Message) -> Mac {
    let mut m = [0; 6];
    if req.htype() == HType::Eth && req.chaddr().len() == 6 {
        m.copy_from_slice(req.chaddr());
    }
    Mac(m)
}

fn requested_ip(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

fn server_id(req: &Message) -> Option<Ipv4Addr> {
    match req.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
        _ => None,
    }
}

/// Direct mode: full DHCP from the pools.
pub fn handle_direct(req: &Message, ctx: &Ctx<'_>, leases: &mut Leases) -> Outcome {
    let Some(ty) = req.opts().msg_type() else {
        return Outcome::silent(Silent::Unsupported);
    };
    let client = client_id(req);
    let mac = mac_of(req);
    let boot_req = BootRequest::from_message(req);
    let decision = boot::decide(&boot_req, ctx.inventory, ctx.boot, ctx.server);
    if decision.action == Action::Ignore {
        return Outcome::silent(Silent::Ignored);
    }
    let Some(pool) = leases.pool_for(req.giaddr()) else {
        return Outcome::silent(Silent::NoPool);
    };
    let host = ctx.inventory.host(mac);
    // A fixed address counts only on the subnet the request came from.
    let fixed = host
        .and_then(|h| h.ip)
        .filter(|ip| leases.pools()[pool].subnet.contains(ip));
    let reserved = |ip| ctx.inventory.host_by_ip(ip).is_some();
    let mut events = Vec::new();
    let mut out = match ty {
        MessageType::Discover => {
            events.push(ClientEvent::Discover {
                arch: boot_req.arch,
            });
            let ip = match fixed {
                Some(ip) if leases.free_for(ip, &client, ctx.now) => Some(ip),
                Some(_) => None,
                None => leases.pick(pool, &client, requested_ip(req), ctx.now, reserved),
            };
            let Some(ip) = ip else {
                return Outcome::silent(Silent::PoolExhausted);
            };
            leases.offer(ip, &client, mac, ctx.now);
            let msg = address_reply(req, MessageType::Offer, ip, ctx, pool, leases, &decision);
            Outcome {
                reply: Some((msg, destination(req, false, ip))),
                silent: None,
                persist: Persist::Nothing,
                decision: None,
                events: Vec::new(),
            }
        }
        MessageType::Request => {
            let ciaddr = req.ciaddr();
            let wanted = match (server_id(req), requested_ip(req)) {
                // SELECTING: the client answers an offer.
                (Some(sid), _) if sid != ctx.server.ip => {
                    leases.withdraw_offer(&client);
                    return Outcome::silent(Silent::OtherServer);
                }
                (Some(_), Some(ip)) => ip,
                // INIT-REBOOT: a remembered address.
                (None, Some(ip)) if ciaddr.is_unspecified() => ip,
                // RENEWING / REBINDING.
                _ if !ciaddr.is_unspecified() => ciaddr,
                _ => return nak(req, ctx, "REQUEST names no address"),
            };
            if let Err(why) = may_have(wanted, &client, fixed, pool, leases, ctx, reserved) {
                return nak(req, ctx, why);
            }
            let hostname = host.and_then(|h| h.hostname.clone());
            let secs = ctx.dhcp.lease_time.as_secs();
            let lease = leases.commit(wanted, &client, mac, hostname, ctx.now, secs);
            events.push(ClientEvent::Leased { ip: wanted });
            let msg = address_reply(req, MessageType::Ack, wanted, ctx, pool, leases, &decision);
            Outcome {
                reply: Some((msg, destination(req, false, wanted))),
                silent: None,
                persist: Persist::BeforeReply(lease),
                decision: None,
                events: Vec::new(),
            }
        }
        MessageType::Decline | MessageType::Release => {
            if server_id(req).is_some_and(|s| s != ctx.server.ip) {
                return Outcome::silent(Silent::OtherServer);
            }
            let (ip, state) = if ty == MessageType::Decline {
                (requested_ip(req), LeaseState::Declined)
            } else {
                (Some(req.ciaddr()), LeaseState::Released)
            };
            let ended = ip.and_then(|ip| leases.end(ip, &client, state, ctx.now));
            let mut out = Outcome::silent(Silent::Done);
            if let Some(lease) = ended {
                out.persist = Persist::Later(lease);
            }
            out
        }
        MessageType::Inform => {
            let mut msg = reply_base(req, MessageType::Ack, ctx.server.ip);
            add_lease_options(&mut msg, ctx, pool, leases, &decision);
            msg.opts_mut().remove(OptionCode::AddressLeaseTime);
            msg.opts_mut().remove(OptionCode::Renewal);
            msg.opts_mut().remove(OptionCode::Rebinding);
            add_boot(&mut msg, &decision);
            let dest = destination(req, false, Ipv4Addr::UNSPECIFIED);
            Outcome {
                reply: Some((msg, dest)),
                silent: None,
                persist: Persist::Nothing,
                decision: None,
                events: Vec::new(),
            }
        }
        _ => Outcome::silent(Silent::Unsupported),
    };
    out.decision = Some(decision);
    out.events = events;
    out
}

/// Whether `client` may have `ip` from pool `pool`; the reason to NAK when not.
fn may_have(
    ip: Ipv4Addr,
    client: &ClientId,
    fixed: Option<Ipv4Addr>,
    pool: usize,
    leases: &Leases,
    ctx: &Ctx<'_>,
    reserved: impl Fn(Ipv4Addr) -> bool,
) -> Result<(), &'static str> {
    let p = &leases.pools()[pool];
    if !p.subnet.contains(&ip) {
        return Err("address is not on the client's subnet");
    }
    match fixed {
        Some(f) if f != ip => return Err("host has another fixed address"),
        Some(_) => {}
        None if !p.contains(ip) || reserved(ip) => return Err("address is outside the pool"),
        None => {}
    }
    if !leases.free_for(ip, client, ctx.now) {
        return Err("address is held by another client");
    }
    Ok(())
}

fn nak(req: &Message, ctx: &Ctx<'_>, why: &'static str) -> Outcome {
    let mut msg = reply_base(req, MessageType::Nak, ctx.server.ip);
    msg.opts_mut().insert(DhcpOption::Message(why.to_owned()));
    if !req.giaddr().is_unspecified() {
        // RFC 2131 §4.3.2: the relay must broadcast a NAK.
        msg.set_flags(Flags::default().set_broadcast());
    }
    Outcome {
        reply: Some((msg, destination(req, true, Ipv4Addr::UNSPECIFIED))),
        silent: None,
        persist: Persist::Nothing,
        decision: None,
        events: Vec::new(),
    }
}

/// RFC 2131 §4.1 addressing.
pub fn destination(req: &Message, is_nak: bool, yiaddr: Ipv4Addr) -> Dest {
    let giaddr = req.giaddr();
    if !giaddr.is_unspecified() {
        return Dest::To(SocketAddrV4::new(giaddr, SERVER_PORT));
    }
    if is_nak {
        return Dest::Broadcast;
    }
    let ciaddr = req.ciaddr();
    if !ciaddr.is_unspecified() {
        return Dest::To(SocketAddrV4::new(ciaddr, CLIENT_PORT));
    }
    let mac = mac_of(req);
    if req.flags().broadcast() || yiaddr.is_unspecified() || mac.0 == [0; 6] {
        Dest::Broadcast
    } else {
        Dest::Hardware { ip: yiaddr, mac }
    }
}

/// A BOOTREPLY to `req` of type `ty` from `server_id`, echoing xid, flags, giaddr,
/// chaddr and the client identifier (RFC 6842).
fn reply_base(req: &Message, ty: MessageType, server_id: Ipv4Addr) -> Message {
    let mut msg = Message::new_with_id(
        req.xid(),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        req.giaddr(),
        req.chaddr(),
    );
    msg.set_opcode(Opcode::BootReply)
        .set_htype(req.htype())
        .set_flags(req.flags());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(ty));
    opts.insert(DhcpOption::ServerIdentifier(server_id));
    for code in [
        OptionCode::ClientIdentifier,
        // RFC 3046 §2.2: a relay's agent information comes back unchanged.
        OptionCode::RelayAgentInformation,
    ] {
        if let Some(opt) = req.opts().get(code) {
            opts.insert(opt.clone());
        }
    }
    msg
}

/// Subnet mask always; lease times; router, DNS, domain only when configured; the
/// inventory host name.
/// An OFFER or ACK of `ip`: the base reply, the lease's options and the boot decision.
fn address_reply(
    req: &Message,
    ty: MessageType,
    ip: Ipv4Addr,
    ctx: &Ctx<'_>,
    pool: usize,
    leases: &Leases,
    decision: &BootDecision,
) -> Message {
    let mut msg = reply_base(req, ty, ctx.server.ip);
    msg.set_yiaddr(ip);
    add_lease_options(&mut msg, ctx, pool, leases, decision);
    add_boot(&mut msg, decision);
    msg
}

fn add_lease_options(
    msg: &mut Message,
    ctx: &Ctx<'_>,
    pool: usize,
    leases: &Leases,
    decision: &BootDecision,
) {
    let p = &leases.pools()[pool];
    let secs = u32::try_from(ctx.dhcp.lease_time.as_secs()).unwrap_or(u32::MAX);
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::SubnetMask(p.subnet.netmask()));
    opts.insert(DhcpOption::AddressLeaseTime(secs));
    opts.insert(DhcpOption::Renewal(secs / 2));
    opts.insert(DhcpOption::Rebinding(secs / 8 * 7));
    let router = if pool == 0 { ctx.dhcp.router } else { p.router };
    if let Some(r) = router {
        opts.insert(DhcpOption::Router(vec![r]));
    }
    if !ctx.dhcp.dns.is_empty() {
        opts.insert(DhcpOption::DomainNameServer(ctx.dhcp.dns.clone()));
    }
    if let Some(d) = &ctx.dhcp.domain {
        opts.insert(DhcpOption::DomainName(d.clone()));
    }
    if let Some(h) = &decision.hostname {
        opts.insert(DhcpOption::Hostname(h.clone()));
    }
}

/// The boot file in the BOOTP `file` field and option 67, `siaddr`, option 60 echo,
/// iPXE's no-pxedhcp.
fn add_boot(msg: &mut Message, decision: &BootDecision) {
    if let Some(file) = &decision.boot_file {
        // 128 bytes with the terminating NUL; longer URLs travel in option 67 only.
        if file.len() < 128 {
            msg.set_fname(file.as_bytes());
        }
        msg.opts_mut()
            .insert(DhcpOption::BootfileName(file.as_bytes().to_vec()));
    }
    if let Some(next) = decision.next_server {
        msg.set_siaddr(next);
    }
    if let Some(class) = decision.vendor_class {
        msg.opts_mut().insert(DhcpOption::ClassIdentifier(
            class.as_str().as_bytes().to_vec(),
        ));
    }
    if decision.ipxe_no_proxy_wait {
        msg.opts_mut()
            .insert(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(IPXE_ENCAP),
                vec![IPXE_NO_PXEDHCP, 1, 1],
            )));
    }
}

/// PXE discovery control (option 43 sub-option 6) = 8: "use the boot file in the offer,
/// no multicast/broadcast boot-server discovery" (PXE 2.1 §2.4.2).
const PXE_DISCOVERY_CONTROL: [u8; 4] = [6, 1, 8, 255];

/// Proxy mode: a proxyDHCP offer (port 67) or ACK (port 4011) to PXE-class clients
/// only; never an address.
pub fn handle_proxy(req: &Message, ctx: &Ctx<'_>, src: SocketAddrV4, on_pxe_port: bool) -> Outcome {
    let Some(ty) = req.opts().msg_type() else {
        return Outcome::silent(Silent::Unsupported);
    };
    let boot_req = BootRequest::from_message(req);
    if boot_req.pxe_class().is_none() {
        return Outcome::silent(Silent::NotPxe);
    }
    let decision = boot::decide(&boot_req, ctx.inventory, ctx.boot, ctx.server);
    if decision.action == Action::Ignore {
        return Outcome::silent(Silent::Ignored);
    }
    let (reply_ty, dest) = match (ty, on_pxe_port) {
        (MessageType::Discover, false) => (
            MessageType::Offer,
            destination(req, false, Ipv4Addr::UNSPECIFIED),
        ),
        (MessageType::Request | MessageType::Inform, true) => {
            let to = if src.ip().is_unspecified() {
                Dest::Broadcast
            } else {
                Dest::To(src)
            };
            (MessageType::Ack, to)
        }
        (MessageType::Request, false) => return Outcome::silent(Silent::NotForUs),
        _ => return Outcome::silent(Silent::Unsupported),
    };
    let mut msg = reply_base(req, reply_ty, ctx.server.ip);
    add_boot(&mut msg, &decision);
    // A proxy offer always names the class and the boot server, whatever the client.
    let class = decision.vendor_class.unwrap_or(boot::PxeClass::PxeClient);
    msg.opts_mut().insert(DhcpOption::ClassIdentifier(
        class.as_str().as_bytes().to_vec(),
    ));
    msg.set_siaddr(ctx.server.ip);
    if class == boot::PxeClass::PxeClient {
        msg.opts_mut()
            .insert(DhcpOption::VendorExtensions(PXE_DISCOVERY_CONTROL.to_vec()));
    }
    if let Some(DhcpOption::ClientMachineIdentifier(uuid)) =
        req.opts().get(OptionCode::ClientMachineIdentifier)
    {
        // PXE 2.1: the proxy offer echoes the client's UUID.
        msg.opts_mut()
            .insert(DhcpOption::ClientMachineIdentifier(uuid.clone()));
    }
    Outcome {
        reply: Some((msg, dest)),
        silent: None,
        persist: Persist::Nothing,
        events: vec![ClientEvent::Discover {
            arch: boot_req.arch,
        }],
        decision: Some(decision),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::dhcp::{leases::Pool, wire};

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
    const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn dhcp() -> DhcpConfig {
        DhcpConfig {
            range: (
                Ipv4Addr::new(198, 18, 0, 100),
                Ipv4Addr::new(198, 18, 0, 101),
            ),
            lease_time: Duration::from_secs(3600),
            router: None,
            dns: Vec::new(),
            domain: None,
            relay_ranges: Vec::new(),
        }
    }

    fn table() -> Leases {
        Leases::new(vec![
            Pool::new("198.18.0.0/24".parse().unwrap(), dhcp().range, None),
            Pool::new(
                "198.19.1.0/24".parse().unwrap(),
                (
                    "198.19.1.100".parse().unwrap(),
                    "198.19.1.100".parse().unwrap(),
                ),
                Some("198.19.1.1".parse().unwrap()),
            ),
        ])
    }

    fn msg(options: &[(u8, &[u8])], ciaddr: [u8; 4], giaddr: [u8; 4]) -> Message {
        let mut buf = wire::tests::request(MAC, options);
        buf[12..16].copy_from_slice(&ciaddr);
        buf[24..28].copy_from_slice(&giaddr);
        wire::parse(&buf).unwrap()
    }

    fn run(m: &Message, leases: &mut Leases, inv: &Inventory) -> Outcome {
        let (d, b) = (dhcp(), BootConfig::default());
        let ctx = Ctx {
            dhcp: &d,
            boot: &b,
            inventory: inv,
            server: ServerAddr {
                ip: SERVER,
                http_port: 80,
            },
            now: 1000,
        };
        handle_direct(m, &ctx, leases)
    }

    fn ty(o: &Outcome) -> Option<MessageType> {
        o.reply.as_ref().and_then(|(m, _)| m.opts().msg_type())
    }

    #[test]
    fn dora_with_pxe_boot_file_and_durable_ack() {
        let (mut l, inv) = (table(), Inventory::default());
        let d = msg(
            &[
                (53, &[1]),
                (93, &[0, 7]),
                (60, b"PXEClient:Arch:00007:UNDI:003000"),
            ],
            [0; 4],
            [0; 4],
        );
        let o = run(&d, &mut l, &inv);
        let (offer, dest) = o.reply.unwrap();
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        let ip = offer.yiaddr();
        assert_eq!(ip, Ipv4Addr::new(198, 18, 0, 100));
        assert_eq!(offer.fname(), Some(&b"ipxe.efi"[..]));
        assert_eq!(offer.siaddr(), SERVER);
        assert!(offer.opts().get(OptionCode::BootfileName).is_some());
        assert!(offer.opts().get(OptionCode::SubnetMask).is_some());
        assert!(
            offer.opts().get(OptionCode::Router).is_none(),
            "router only when configured"
        );
        assert_eq!(
            dest,
            Dest::Hardware { ip, mac: Mac(MAC) },
            "no broadcast bit: unicast to yiaddr at chaddr"
        );
        assert_eq!(o.persist, Persist::Nothing);

        let r = msg(
            &[(53, &[3]), (54, &SERVER.octets()), (50, &ip.octets())],
            [0; 4],
            [0; 4],
        );
        let o = run(&r, &mut l, &inv);
        assert_eq!(ty(&o), Some(MessageType::Ack));
        assert!(matches!(o.persist, Persist::BeforeReply(ref lease) if lease.ip == ip));
        assert_eq!(o.events, vec![ClientEvent::Leased { ip }]);
    }

    #[test]
    fn naks_and_silences_where_rfc_2131_says() {
        let (mut l, inv) = (table(), Inventory::default());
        // Another server was chosen: silent.
        let r = msg(
            &[(53, &[3]), (54, &[198, 18, 0, 9]), (50, &[198, 18, 0, 100])],
            [0; 4],
            [0; 4],
        );
        assert_eq!(run(&r, &mut l, &inv).silent, Some(Silent::OtherServer));
        // INIT-REBOOT on the wrong subnet: NAK, broadcast.
        let r = msg(&[(53, &[3]), (50, &[10, 0, 0, 5])], [0; 4], [0; 4]);
        let o = run(&r, &mut l, &inv);
        assert_eq!(ty(&o), Some(MessageType::Nak));
        assert_eq!(o.reply.unwrap().1, Dest::Broadcast);
        // Address held by another client: NAK.
        l.commit(
            Ipv4Addr::new(198, 18, 0, 101),
            &ClientId(vec![9]),
            Mac([0; 6]),
            None,
            1000,
            3600,
        );
        let r = msg(&[(53, &[3])], [198, 18, 0, 101], [0; 4]);
        assert_eq!(ty(&run(&r, &mut l, &inv)), Some(MessageType::Nak));
        // RENEWING our own: ACK unicast to ciaddr.
        let r = msg(&[(53, &[3])], [198, 18, 0, 100], [0; 4]);
        let o = run(&r, &mut l, &inv);
        assert_eq!(ty(&o), Some(MessageType::Ack));
        assert_eq!(
            o.reply.unwrap().1,
            Dest::To(SocketAddrV4::new(
                Ipv4Addr::new(198, 18, 0, 100),
                CLIENT_PORT
            ))
        );
        // RELEASE: no reply, written later.
        let r = msg(&[(53, &[7])], [198, 18, 0, 100], [0; 4]);
        let o = run(&r, &mut l, &inv);
        assert!(o.reply.is_none());
        assert!(matches!(o.persist, Persist::Later(ref x) if x.state == LeaseState::Released));
    }

    #[test]
    fn inform_and_decline() {
        let (mut l, inv) = (table(), Inventory::default());
        let i = msg(&[(53, &[8])], [198, 18, 0, 9], [0; 4]);
        let (ack, dest) = run(&i, &mut l, &inv).reply.unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert!(ack.yiaddr().is_unspecified());
        assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert!(ack.opts().get(OptionCode::SubnetMask).is_some());
        assert_eq!(
            dest,
            Dest::To(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 9), CLIENT_PORT))
        );
        // Lease .100, then decline it: no reply, probation, next DISCOVER gets .101.
        let r = msg(&[(53, &[3]), (50, &[198, 18, 0, 100])], [0; 4], [0; 4]);
        assert_eq!(ty(&run(&r, &mut l, &inv)), Some(MessageType::Ack));
        let d = msg(
            &[(53, &[4]), (54, &SERVER.octets()), (50, &[198, 18, 0, 100])],
            [0; 4],
            [0; 4],
        );
        let o = run(&d, &mut l, &inv);
        assert!(o.reply.is_none());
        assert!(matches!(o.persist, Persist::Later(ref x) if x.state == LeaseState::Declined));
        let d = msg(&[(53, &[1])], [0; 4], [0; 4]);
        let (offer, _) = run(&d, &mut l, &inv).reply.unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(198, 18, 0, 101));
    }

    #[test]
    fn relayed_requests_use_the_relay_subnet_pool() {
        let (mut l, inv) = (table(), Inventory::default());
        let agent: &[u8] = &[1, 4, b'e', b't', b'h', b'0', 2, 2, 0xaa, 0xbb];
        let d = msg(&[(53, &[1]), (82, agent)], [0; 4], [198, 19, 1, 1]);
        let (offer, dest) = run(&d, &mut l, &inv).reply.unwrap();
        assert_eq!(
            offer.opts().get(OptionCode::RelayAgentInformation),
            d.opts().get(OptionCode::RelayAgentInformation),
            "option 82 echoed"
        );
        assert!(
            offer
                .opts()
                .get(OptionCode::RelayAgentInformation)
                .is_some()
        );
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(198, 19, 1, 100));
        assert_eq!(offer.giaddr(), Ipv4Addr::new(198, 19, 1, 1));
        assert!(matches!(
            offer.opts().get(OptionCode::Router),
            Some(DhcpOption::Router(r)) if r == &vec![Ipv4Addr::new(198, 19, 1, 1)]
        ));
        assert_eq!(
            dest,
            Dest::To(SocketAddrV4::new(Ipv4Addr::new(198, 19, 1, 1), SERVER_PORT))
        );
        let d = msg(&[(53, &[1])], [0; 4], [203, 0, 113, 1]);
        assert_eq!(run(&d, &mut l, &inv).silent, Some(Silent::NoPool));
    }

    #[test]
    fn fixed_host_and_ipxe_loop_breaker() {
        let mut l = table();
        let inv: Inventory = toml::from_str(
            "[[hosts]]\nmac = \"52:54:00:12:34:56\"\nhostname = \"spark-1\"\nip = \"198.18.0.50\"\n",
        )
        .unwrap();
        let d = msg(&[(53, &[1]), (77, b"iPXE"), (93, &[0, 0])], [0; 4], [0; 4]);
        let (offer, _) = run(&d, &mut l, &inv).reply.unwrap();
        assert_eq!(offer.yiaddr(), Ipv4Addr::new(198, 18, 0, 50));
        assert_eq!(offer.fname(), Some(&b"http://198.18.0.1:80/boot.ipxe"[..]));
        assert!(matches!(
            offer.opts().get(OptionCode::Unknown(IPXE_ENCAP)),
            Some(DhcpOption::Unknown(u)) if u.data() == [IPXE_NO_PXEDHCP, 1, 1]
        ));
        assert!(matches!(
            offer.opts().get(OptionCode::Hostname),
            Some(DhcpOption::Hostname(h)) if h == "spark-1"
        ));
        // The fixed host asking for a pool address is refused.
        let r = msg(&[(53, &[3]), (50, &[198, 18, 0, 100])], [0; 4], [0; 4]);
        assert_eq!(ty(&run(&r, &mut l, &inv)), Some(MessageType::Nak));
    }

    #[test]
    fn proxy_answers_pxe_clients_only_and_never_an_address() {
        let (d, b, inv) = (dhcp(), BootConfig::default(), Inventory::default());
        let ctx = Ctx {
            dhcp: &d,
            boot: &b,
            inventory: &inv,
            server: ServerAddr {
                ip: SERVER,
                http_port: 80,
            },
            now: 0,
        };
        let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
        let plain = msg(&[(53, &[1])], [0; 4], [0; 4]);
        assert_eq!(
            handle_proxy(&plain, &ctx, src, false).silent,
            Some(Silent::NotPxe)
        );
        let uuid = [[0u8].as_slice(), &[7; 16]].concat();
        let pxe = msg(
            &[
                (53, &[1]),
                (93, &[0, 7]),
                (60, b"PXEClient:Arch:00007:UNDI:003000"),
                (97, &uuid),
            ],
            [0; 4],
            [0; 4],
        );
        let (offer, _) = handle_proxy(&pxe, &ctx, src, false).reply.unwrap();
        assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(offer.fname(), Some(&b"ipxe.efi"[..]));
        assert!(matches!(
            offer.opts().get(OptionCode::VendorExtensions),
            Some(DhcpOption::VendorExtensions(v)) if v == &PXE_DISCOVERY_CONTROL
        ));
        assert!(
            offer
                .opts()
                .get(OptionCode::ClientMachineIdentifier)
                .is_some()
        );
        let req = msg(
            &[
                (53, &[3]),
                (93, &[0, 7]),
                (60, b"PXEClient:Arch:00007:UNDI:003000"),
            ],
            [198, 18, 0, 77],
            [0; 4],
        );
        let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 77), CLIENT_PORT);
        let (ack, dest) = handle_proxy(&req, &ctx, from, true).reply.unwrap();
        assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
        assert_eq!(dest, Dest::To(from));
        assert_eq!(
            handle_proxy(&req, &ctx, from, false).silent,
            Some(Silent::NotForUs)
        );
    }
}
