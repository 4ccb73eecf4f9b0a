//! The DHCP decisions as pure functions: a decoded request, the lease table and the
//! context in; the reply, where it goes, what must be on disk first and what happened
//! out. No sockets, no clock: the server supplies both.
//!
//! Direct mode is authoritative for its pools: a REQUEST (any state) for an address
//! that is free in the pool of the client's subnet (or is its fixed address) is ACKed,
//! anything else NAKed, so clients that come from another network re-discover at once.
mod direct;
mod proxy;
mod reply;
#[cfg(test)]
mod tests;

use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, HType, Message, OptionCode};
use serde::Serialize;

pub use self::{direct::handle_direct, proxy::handle_proxy};
use super::leases::{ClientId, Lease};
use crate::{
    boot::{BootDecision, ServerAddr},
    clients::ClientEvent,
    config::{BootConfig, DhcpConfig},
    inventory::Inventory,
    mac::Mac,
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
    /// The kernel's neighbour entry for an address on the LAN (read for a RELEASE only:
    /// the holder's own address must not be answered for by another Ethernet address).
    pub neighbour: &'a dyn Fn(Ipv4Addr) -> Option<Mac>,
    /// Whether `mac` is an installed host whose network boot goes to its disk (asked
    /// only with `[boot] installed = "no_boot_file"` or `"not_found"`).
    pub installed: &'a dyn Fn(Mac) -> bool,
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
    /// RELEASE or DECLINE that does not come from the lease's holder (another client
    /// identifier or chaddr, a RELEASE from another address, a DECLINE long after the
    /// ACK, no server identifier): nothing ended.
    NotHolder,
    /// A message type a server does not answer (OFFER, ACK, …).
    Unsupported,
    /// Proxy mode: a client that is not PXEClient/HTTPClient.
    NotPxe,
    /// Proxy mode: a REQUEST meant for the site's DHCP server.
    NotForUs,
    /// Proxy mode: an installed host with `[boot] installed = "no_boot_file"` (no boot
    /// file to offer, so no proxy offer: its firmware goes on to its disk; `not_found`
    /// offers the missing file instead).
    LocalBoot,
}

impl Silent {
    pub fn label(self) -> &'static str {
        match self {
            Self::OtherServer => "other_server",
            Self::Ignored => "ignored",
            Self::NoPool => "no_pool",
            Self::PoolExhausted => "pool_exhausted",
            Self::Done => "release_or_decline",
            Self::NotHolder => "not_lease_holder",
            Self::Unsupported => "unsupported_type",
            Self::NotPxe => "not_pxe",
            Self::NotForUs => "not_for_us",
            Self::LocalBoot => "local_boot",
        }
    }

    pub const LABELS: [&'static str; 10] = [
        "other_server",
        "ignored",
        "no_pool",
        "pool_exhausted",
        "release_or_decline",
        "not_lease_holder",
        "unsupported_type",
        "not_pxe",
        "not_for_us",
        "local_boot",
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

/// The longest client id the lease store keeps (its length is one byte).
pub const CLIENT_ID_MAX: usize = 255;

/// The identity leases are keyed by: htype + chaddr, followed by option 61 when the
/// client sent one that says more than its chaddr. Option 61 alone would let any client
/// that repeats another's identifier (it is broadcast in every DISCOVER) take that
/// one's lease from its own chaddr; bound to the chaddr it is only ever the same client.
/// (A client that sends no option 61, or `htype + chaddr` as it, has the same key.)
pub fn client_id(req: &Message) -> ClientId {
    let mut id = vec![u8::from(req.htype())];
    id.extend_from_slice(req.chaddr());
    if let Some(DhcpOption::ClientIdentifier(given)) = req.opts().get(OptionCode::ClientIdentifier)
        && !given.is_empty()
        && *given != id
    {
        id.push(0xff);
        // The store keeps 255 bytes of a client id (chaddr can be 16 bytes long).
        let room = CLIENT_ID_MAX.saturating_sub(id.len());
        id.extend_from_slice(&given[..given.len().min(room)]);
    }
    ClientId(id)
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
