//! The DHCP decisions as pure functions: a decoded request, the lease table and the
//! context in; the reply, where it goes, what must be on disk first and what happened
//! out. No sockets, no clock: the server supplies both.
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
            let mut msg = reply_base(req, MessageType::Offer, ctx.server.ip);
            msg.set_yiaddr(ip);
            add_lease_options(&mut msg, ctx, pool, leases, &decision);
            add_boot(&mut msg, &decision);
            let dest = destination(req, false, ip);
            Outcome {
                reply: Some((msg, dest)),
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
            let mut msg = reply_base(req, MessageType::Ack, ctx.server.ip);
            msg.set_yiaddr(wanted);
            add_lease_options(&mut msg, ctx, pool, leases, &decision);
            add_boot(&mut msg, &decision);
            let dest = destination(req, false, wanted);
            Outcome {
                reply: Some((msg, dest)),
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
    if let Some(id @ DhcpOption::ClientIdentifier(_)) = req.opts().get(OptionCode::ClientIdentifier)
    {
        opts.insert(id.clone());
    }
    msg
}

/// Subnet mask always; lease times; router, DNS, domain only when configured; the
/// inventory host name.
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
