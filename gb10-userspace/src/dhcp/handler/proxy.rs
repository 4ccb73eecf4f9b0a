//! Proxy mode: boot files for PXE and HTTP-boot clients beside the site's DHCP server
//! (a proxy offer on port 67, the ACK on 4011), never an address.
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};

use crate::{
    boot::{self, Action, BootRequest, ToDisk},
    clients::ClientEvent,
};

use super::{
    reply::{add_boot, reply_base},
    *,
};

/// PXE discovery control (option 43 sub-option 6) = 8: "use the boot file in the offer,
/// no multicast/broadcast boot-server discovery" (PXE 2.1 §2.4.2).
pub(super) const PXE_DISCOVERY_CONTROL: [u8; 4] = [6, 1, 8, 255];

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
    let mut decision = boot::decide(&boot_req, ctx.inventory, ctx.boot, ctx.server);
    if decision.action == Action::Ignore {
        return Outcome::silent(Silent::Ignored);
    }
    let mac = mac_of(req);
    let to_disk = boot::send_to_disk(&mut decision, ctx.boot, || (ctx.installed)(mac));
    if to_disk == Some(ToDisk::Withheld) {
        // A proxy offer without a boot file is no offer: say nothing, and the firmware
        // (which has its address from the site's server) goes on to its disk.
        let mut out = Outcome::silent(Silent::LocalBoot);
        if ty == MessageType::Discover && !on_pxe_port {
            out.events = vec![
                ClientEvent::Discover {
                    arch: boot_req.arch,
                },
                ClientEvent::LocalBoot {
                    path: "dhcp: no proxy offer".into(),
                },
            ];
        }
        return out;
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
        events: [
            Some(ClientEvent::Discover {
                arch: boot_req.arch,
            }),
            (to_disk == Some(ToDisk::NotFound) && ty == MessageType::Discover && !on_pxe_port)
                .then(|| ClientEvent::LocalBoot {
                    path: format!("dhcp: proxy offer of {} (not found)", boot::LOCAL_BOOT_FILE),
                }),
        ]
        .into_iter()
        .flatten()
        .collect(),
        decision: Some(decision),
    }
}
