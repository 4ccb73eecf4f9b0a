//! rtnetlink: asserts the LAN address (direct mode) or finds it (proxy mode), and feeds
//! every address and link change of the LAN interface into [`crate::lan::LanAddr`].
use std::{net::Ipv4Addr, time::Duration};

use futures::{StreamExt as _, TryStreamExt as _};
use ipnet::Ipv4Net;
use rtnetlink::{
    Handle, LinkUnspec, MulticastGroup,
    packet_route::{
        address::{AddressAttribute, AddressMessage},
        link::{LinkFlags, LinkMessage},
    },
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, Mode};

/// Why the LAN watcher could not run.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening an rtnetlink socket")]
    Socket(#[source] std::io::Error),
    #[error("rtnetlink request on {iface}")]
    Request {
        iface: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },
    #[error(
        "lan_iface `{0}` does not exist; gb10-provision serves only that interface and never falls back to another"
    )]
    NoInterface(String),
}

/// Notifications of one or more rtnetlink multicast groups.
pub type Events = futures::channel::mpsc::UnboundedReceiver<(
    rtnetlink::packet_core::NetlinkMessage<rtnetlink::packet_route::RouteNetlinkMessage>,
    rtnetlink::sys::SocketAddr,
)>;

/// A handle for requests and a stream of notifications of `groups`, on two sockets:
/// notifications arriving on a socket with a dump in flight can be taken for part of the
/// dump and lost, so the subscribed socket never sends requests.
pub fn subscribe(groups: &[MulticastGroup]) -> Result<(Handle, Events), NetlinkError> {
    let (events, _, messages) =
        rtnetlink::new_multicast_connection(groups).map_err(NetlinkError::Socket)?;
    tokio::spawn(events);
    let (conn, handle, _) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(conn);
    Ok((handle, messages))
}

/// One network interface as the kernel lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub name: String,
    pub index: u32,
    pub up: bool,
    /// The bridge or bond this interface is a port of.
    pub master: Option<u32>,
}

/// Every link.
pub async fn links(handle: &Handle) -> Result<Vec<Link>, rtnetlink::Error> {
    use rtnetlink::packet_route::link::LinkAttribute;
    let msgs: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let name = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::IfName(n) => Some(n.clone()),
                _ => None,
            })?;
            let master = m.attributes.iter().find_map(|a| match a {
                LinkAttribute::Controller(i) => Some(*i),
                _ => None,
            });
            Some(Link {
                name,
                index: m.header.index,
                up: m.header.flags.contains(LinkFlags::Up),
                master,
            })
        })
        .collect())
}

/// The LAN's state as the watcher sees it, for readiness.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LanState {
    pub addr: Option<Ipv4Addr>,
    /// Why there is no address (empty when there is one).
    pub reason: String,
}

/// Publishes the live LAN address and state.
pub struct LanWatcher {
    handle: Handle,
    iface: String,
    /// The address to assert (direct mode).
    assert: Option<Ipv4Net>,
    /// In proxy mode, prefer an address inside this subnet.
    prefer: Option<Ipv4Net>,
    /// The interface index the address was last asserted on: a recreated interface
    /// (new index) gets it again; an operator's later change is followed, not undone.
    asserted_on: Option<u32>,
    /// Link and address notifications; None once the kernel side ended.
    messages: Option<Events>,
    addr_tx: watch::Sender<Option<Ipv4Addr>>,
    state_tx: watch::Sender<LanState>,
}

impl LanWatcher {
    /// Connects, subscribes to link and IPv4 address changes, and does the first pass
    /// (asserting the address in direct mode). Fails when the interface does not exist.
    pub async fn start(
        config: &Config,
    ) -> Result<
        (
            Self,
            watch::Receiver<Option<Ipv4Addr>>,
            watch::Receiver<LanState>,
        ),
        NetlinkError,
    > {
        let (handle, messages) = subscribe(&[MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr])?;
        let (addr_tx, addr_rx) = watch::channel(None);
        let (state_tx, state_rx) = watch::channel(LanState {
            addr: None,
            reason: "starting".into(),
        });
        let mut watcher = Self {
            handle,
            iface: config.lan_iface.clone(),
            assert: (config.mode == Mode::Direct).then_some(config.lan_ip),
            prefer: config.proxy_subnet,
            asserted_on: None,
            messages: Some(messages),
            addr_tx,
            state_tx,
        };
        if watcher.link().await?.is_none() {
            return Err(NetlinkError::NoInterface(config.lan_iface.clone()));
        }
        watcher.evaluate().await?;
        Ok((watcher, addr_rx, state_rx))
    }

    /// Follows changes until `token` is cancelled. Request errors are logged and retried:
    /// the interface may be mid-change.
    pub async fn run(mut self, token: CancellationToken) {
        // A periodic pass as well, in case a notification is lost (the socket's buffer
        // can overflow under a burst of changes).
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            let notified = async {
                match self.messages.as_mut() {
                    Some(messages) => messages.next().await.is_some(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = token.cancelled() => return,
                alive = notified => {
                    if !alive {
                        warn!("rtnetlink notifications ended; polling every 5 s");
                        self.messages = None;
                    }
                    // Changes come in bursts (link up, then addresses): settle, then look.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Some(messages) = self.messages.as_mut() {
                        while messages.try_recv().is_ok() {}
                    }
                }
                _ = tick.tick() => {}
            }
            tracing::debug!(iface = %self.iface, "LAN interface check");
            if let Err(err) = self.evaluate().await {
                warn!(error = %crate::error_chain(&err), "LAN interface check failed; retrying");
            }
        }
    }

    async fn link(&self) -> Result<Option<LinkMessage>, NetlinkError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(self.iface.clone())
            .execute();
        match links.try_next().await {
            Ok(link) => Ok(link),
            // ENODEV: the interface is not there (now).
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(self.request_error(e)),
        }
    }

    fn request_error(&self, e: rtnetlink::Error) -> NetlinkError {
        NetlinkError::Request {
            iface: self.iface.clone(),
            source: Box::new(e),
        }
    }

    async fn ipv4_addrs(&self, index: u32) -> Result<Vec<Ipv4Net>, NetlinkError> {
        let msgs: Vec<AddressMessage> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| self.request_error(e))?;
        Ok(msgs
            .iter()
            .filter_map(|m| {
                m.attributes.iter().find_map(|a| match a {
                    AddressAttribute::Local(std::net::IpAddr::V4(ip)) => {
                        Ipv4Net::new(*ip, m.header.prefix_len).ok()
                    }
                    _ => None,
                })
            })
            .collect())
    }

    /// Looks at the interface now: asserts the address if due, publishes the result.
    async fn evaluate(&mut self) -> Result<(), NetlinkError> {
        let Some(link) = self.link().await? else {
            self.publish(
                None,
                format!("interface {} does not exist (waiting for it)", self.iface),
            );
            return Ok(());
        };
        let index = link.header.index;
        if let Some(want) = self.assert
            && self.asserted_on != Some(index)
        {
            self.assert_on(&link, want).await?;
            self.asserted_on = Some(index);
        }
        let addrs = self.ipv4_addrs(index).await?;
        let pick = self
            .assert
            .filter(|want| addrs.iter().any(|a| a.addr() == want.addr()))
            .or_else(|| {
                self.prefer
                    .and_then(|subnet| addrs.iter().find(|a| subnet.contains(&a.addr())).copied())
            })
            .or_else(|| addrs.first().copied())
            .map(|net| net.addr());
        let reason = if pick.is_some() {
            String::new()
        } else {
            format!("no IPv4 address on {}", self.iface)
        };
        self.publish(pick, reason);
        Ok(())
    }

    /// Brings the link up and adds `want` when it is missing; other addresses stay.
    async fn assert_on(&self, link: &LinkMessage, want: Ipv4Net) -> Result<(), NetlinkError> {
        let index = link.header.index;
        if !link.header.flags.contains(LinkFlags::Up) {
            info!(iface = %self.iface, "bringing the LAN link up");
            self.handle
                .link()
                .set(LinkUnspec::new_with_index(index).up().build())
                .execute()
                .await
                .map_err(|e| self.request_error(e))?;
        }
        if self
            .ipv4_addrs(index)
            .await?
            .iter()
            .any(|a| a.addr() == want.addr())
        {
            return Ok(());
        }
        info!(iface = %self.iface, addr = %want, "asserting the LAN address");
        match self
            .handle
            .address()
            .add(index, want.addr().into(), want.prefix_len())
            .execute()
            .await
        {
            Ok(()) => Ok(()),
            // Added by someone else between our look and our add: what we wanted.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            Err(e) => Err(self.request_error(e)),
        }
    }

    fn publish(&self, addr: Option<Ipv4Addr>, reason: String) {
        let changed = self.addr_tx.send_if_modified(|current| {
            let changed = *current != addr;
            *current = addr;
            changed
        });
        if changed {
            match addr {
                Some(ip) => info!(iface = %self.iface, %ip, "LAN address"),
                None => warn!(iface = %self.iface, %reason, "no LAN address: not ready"),
            }
        }
        self.state_tx.send_if_modified(|s| {
            let new = LanState { addr, reason };
            let changed = *s != new;
            *s = new;
            changed
        });
    }
}
