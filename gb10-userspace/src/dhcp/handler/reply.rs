//! Building replies: the header every reply shares, the address options, the boot file.
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption};

use crate::boot::{BootDecision, IPXE_ENCAP, IPXE_NO_PXEDHCP};
use crate::dhcp::leases::Leases;

use super::*;

/// A BOOTREPLY to `req` of type `ty` from `server_id`, echoing xid, flags, giaddr,
/// chaddr and the client identifier (RFC 6842).
pub(super) fn reply_base(req: &Message, ty: MessageType, server_id: Ipv4Addr) -> Message {
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
pub(super) fn address_reply(
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

pub(super) fn add_lease_options(
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
pub(super) fn add_boot(msg: &mut Message, decision: &BootDecision) {
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
