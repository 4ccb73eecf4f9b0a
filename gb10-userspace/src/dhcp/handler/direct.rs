//! Direct mode: the authoritative server of its pools (DISCOVER → OFFER, REQUEST → ACK or
//! NAK, DECLINE, RELEASE, INFORM).
use std::net::Ipv4Addr;

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, OptionCode};

use tracing::debug;

use crate::dhcp::leases::{ClientId, DECLINE_WINDOW_SECS, LeaseState, Leases};
use crate::{
    boot::{self, Action, BootRequest, ToDisk},
    clients::{ClientEvent, Stage},
    mac::Mac,
};

use super::{
    reply::{add_boot, add_lease_options, address_reply, reply_base},
    *,
};

/// Direct mode: full DHCP from the pools. `src` is where the datagram came from.
pub fn handle_direct(
    req: &Message,
    ctx: &Ctx<'_>,
    src: SocketAddrV4,
    leases: &mut Leases,
) -> Outcome {
    let Some(ty) = req.opts().msg_type() else {
        return Outcome::silent(Silent::Unsupported);
    };
    let client = client_id(req);
    let mac = mac_of(req);
    let boot_req = BootRequest::from_message(req);
    let mut decision = boot::decide(&boot_req, ctx.inventory, ctx.boot, ctx.server);
    if decision.action == Action::Ignore {
        return Outcome::silent(Silent::Ignored);
    }
    let Some(pool) = leases.pool_for(req.giaddr()) else {
        return Outcome::silent(Silent::NoPool);
    };
    let to_disk = boot::send_to_disk(&mut decision, ctx.boot, || (ctx.installed)(mac));
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
            // Firmware that names its architecture and gets no boot file stops here: the
            // decision's reason is what the fleet view shows. An installed host sent to
            // its disk this way is on its way, not stopped.
            if let Some(how) = to_disk {
                let path = match how {
                    ToDisk::Withheld => "dhcp: no boot file".to_owned(),
                    ToDisk::NotFound => format!("dhcp: {} (not found)", boot::LOCAL_BOOT_FILE),
                };
                events.push(ClientEvent::LocalBoot { path });
            } else if boot_req.arch.is_some() && decision.boot_file.is_none() {
                let why = decision.why.last().map_or("no boot file", String::as_str);
                events.push(ClientEvent::failure(Stage::Dhcp, why, "no_boot_file"));
            }
            let ip = match fixed {
                Some(ip) if leases.free_for(ip, &client, ctx.now) => Some(ip),
                Some(_) => None,
                None => {
                    leases.bound_mac(mac, &client, ctx.dhcp.addresses_per_mac, ctx.now);
                    leases.pick(pool, &client, requested_ip(req), ctx.now, reserved)
                }
            };
            match ip {
                Some(ip) => {
                    leases.offer(ip, &client, mac, ctx.now);
                    let msg =
                        address_reply(req, MessageType::Offer, ip, ctx, pool, leases, &decision);
                    Outcome {
                        reply: Some((msg, destination(req, false, ip))),
                        silent: None,
                        persist: Persist::Nothing,
                        decision: None,
                        events: Vec::new(),
                    }
                }
                None => {
                    let what = match fixed {
                        Some(ip) => format!("its fixed address {ip} (held by another client)"),
                        None => "an address from the pool".to_owned(),
                    };
                    events.push(ClientEvent::failure(Stage::Dhcp, &what, "pool_exhausted"));
                    Outcome::silent(Silent::PoolExhausted)
                }
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
            if fixed.is_none() {
                leases.bound_mac(mac, &client, ctx.dhcp.addresses_per_mac, ctx.now);
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
            match server_id(req) {
                Some(s) if s == ctx.server.ip => {}
                Some(_) => return Outcome::silent(Silent::OtherServer),
                // RFC 2131 §4.4.4, §4.4.6: both MUST name the server.
                None => return Outcome::silent(Silent::NotHolder),
            }
            let (ip, state) = if ty == MessageType::Decline {
                (requested_ip(req), LeaseState::Declined)
            } else {
                (Some(req.ciaddr()), LeaseState::Released)
            };
            let Some(ip) = ip else {
                return Outcome::silent(Silent::NotHolder);
            };
            if let Err(why) = held_by_sender(ty, ip, &client, mac, src, ctx, leases) {
                debug!(%ip, ?ty, why, "not the lease holder speaking: lease kept");
                return Outcome::silent(Silent::NotHolder);
            }
            let ended = leases.end(ip, &client, state, ctx.now);
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

/// Whether a RELEASE or DECLINE of `ip` comes from the client holding its live lease, as
/// far as the server can tell: the same client identifier and chaddr; a RELEASE sent from
/// the leased address itself (RFC 2131 §4.4.6: unicast from `ciaddr`) while our neighbour
/// entry for it names the holder (a forged source address does not change who answers
/// ARP for it); a DECLINE within [`DECLINE_WINDOW_SECS`] of the lease's last ACK
/// (the conflict check follows the ACK). What is left (a DECLINE forged in that window,
/// frames forged with the holder's Ethernet address) is for the XDP check that chaddr is
/// the frame's Ethernet source, and for switch port security.
fn held_by_sender(
    ty: MessageType,
    ip: Ipv4Addr,
    client: &ClientId,
    mac: Mac,
    src: SocketAddrV4,
    ctx: &Ctx<'_>,
    leases: &Leases,
) -> Result<(), &'static str> {
    let lease = leases
        .get(ip)
        .filter(|l| l.live(ctx.now))
        .ok_or("no live lease on the address")?;
    if lease.client != *client || lease.mac != mac {
        return Err("another client holds the lease");
    }
    match ty {
        MessageType::Release if *src.ip() != ip => Err("RELEASE not sent from the leased address"),
        // The holder ARPs for us before its unicast RELEASE, and that request makes our
        // entry for it; a frame forged from another Ethernet address leaves none or
        // another's (the kernel learns neighbours from ARP, never from a forged IP source).
        MessageType::Release if (ctx.neighbour)(ip) != Some(mac) => {
            Err("the leased address's neighbour entry is not the holder")
        }
        MessageType::Decline => {
            let acked = lease.expires.saturating_sub(ctx.dhcp.lease_time.as_secs());
            if ctx.now > acked + DECLINE_WINDOW_SECS {
                Err("DECLINE long after the ACK")
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
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
