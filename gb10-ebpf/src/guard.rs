//! The guard on every interface but the LAN: provisioning requests arriving there are
//! dropped by XDP, provisioning replies leaving there by TC egress, and both counted per
//! interface. Fails open for everything else.
use aya_ebpf::{
    bindings::{TC_ACT_PIPE, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use gb10_common::{
    GUARD_ENFORCE, GUARD_OFF, GuardCounters, PORT_DHCP_SERVER, PORT_PROXY_DHCP, PORT_TFTP,
};

use crate::{
    GB10_GUARD_COUNTERS, guard_config, is_request_port, is_tftp_transfer,
    parse::{Bytes, Frame, parse},
};

/// Headers the egress parse needs in the linear part of the skb: Ethernet, a VLAN tag,
/// IPv4 with full options, UDP.
const HEADERS_LEN: u32 = 14 + 4 + 60 + 8;

#[xdp]
pub fn gb10_guard_in(ctx: XdpContext) -> u32 {
    let mode = guard_config().mode;
    if mode == GUARD_OFF {
        return xdp_action::XDP_PASS;
    }
    let Frame::Udp { udp, .. } = parse(&Bytes::of_xdp(&ctx)) else {
        return xdp_action::XDP_PASS;
    };
    if !is_request_port(udp.dport) {
        return xdp_action::XDP_PASS;
    }
    count(ctx.ingress_ifindex() as u32, |c| c.inbound += 1);
    if mode == GUARD_ENFORCE {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[classifier]
pub fn gb10_guard_out(ctx: TcContext) -> i32 {
    let mode = guard_config().mode;
    if mode == GUARD_OFF {
        return TC_ACT_PIPE as i32;
    }
    // Headers in paged data would be invisible to direct access: pull them in first.
    // A frame shorter than that fails the pull and is too short to be a reply anyway.
    let _ = ctx.pull_data(HEADERS_LEN);
    let Frame::Udp { udp, .. } = parse(&Bytes::of_tc(&ctx)) else {
        return TC_ACT_PIPE as i32;
    };
    let reply = udp.sport == PORT_DHCP_SERVER
        || udp.sport == PORT_PROXY_DHCP
        || udp.sport == PORT_TFTP
        || is_tftp_transfer(udp.sport);
    if !reply {
        return TC_ACT_PIPE as i32;
    }
    // SAFETY: the context's skb pointer is valid for the program's run.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    count(ifindex, |c| c.outbound += 1);
    if mode == GUARD_ENFORCE {
        TC_ACT_SHOT as i32
    } else {
        TC_ACT_PIPE as i32
    }
}

#[inline(always)]
fn count(ifindex: u32, update: impl Fn(&mut GuardCounters)) {
    match GB10_GUARD_COUNTERS.get_ptr_mut(&ifindex) {
        // SAFETY: per-CPU value, so no other writer runs concurrently.
        Some(c) => update(unsafe { &mut *c }),
        None => {
            let mut c = GuardCounters::default();
            update(&mut c);
            let _ = GB10_GUARD_COUNTERS.insert(&ifindex, &c, 0);
        }
    }
}
