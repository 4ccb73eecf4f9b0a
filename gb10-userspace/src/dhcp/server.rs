//! The sockets: UDP 0.0.0.0:67 (and :4011 in proxy mode) confined to the LAN interface
//! with SO_BINDTODEVICE, the receive loop, and replies addressed per RFC 2131 §4.1.
use std::{
    io,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    os::fd::AsRawFd as _,
    sync::Arc,
};

use dhcproto::{Encodable as _, Encoder, v4::Message};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, instrument, warn};

use super::{
    LeaseTable, Stats,
    handler::{self, CLIENT_PORT, Ctx, Dest, Outcome, PXE_PORT, Persist, SERVER_PORT},
    leases::Pool,
    store::LeaseWriter,
    wire,
};
use crate::{
    boot::ServerAddr,
    clients::{ClientEvent, Clients, Stage},
    clock,
    config::{Config, Mode},
    identity::Neighbours,
    lan::{self, LanAddr},
    live::Live,
    mac::Mac,
    seeds::LocalDisk,
    store::Store,
};

/// What the DHCP responder uses.
pub struct Dhcp {
    /// `lan_iface`, `mode`, `[dhcp]`, `[boot]` and `http_port`.
    pub config: Arc<Config>,
    /// The inventory: fixed hosts and profiles.
    pub live: Live,
    pub leases: LeaseTable,
    /// Where leases are written before their ACK leaves.
    pub store: Store,
    pub events: Arc<Clients>,
    pub stats: Arc<Stats>,
    pub lan_addr: LanAddr,
    /// The kernel's neighbour table, to tell a RELEASE from its holder.
    pub neighbours: Neighbours,
    /// Whether a host is installed (`[boot] installed = "not_found"` or `"no_boot_file"` changes its
    /// boot file).
    pub local_disk: LocalDisk,
}

/// Why the DHCP service could not serve.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("DHCP socket on port {port} of {iface}")]
    Socket {
        port: u16,
        iface: String,
        #[source]
        source: io::Error,
    },
}

/// The pools of a configuration: the LAN's first, then the relayed subnets'.
pub fn pools(config: &Config) -> Vec<Pool> {
    let mut pools = vec![Pool::new(
        config.lan_ip.trunc(),
        config.dhcp.range,
        config.dhcp.router,
    )];
    pools.extend(
        config
            .dhcp
            .relay_ranges
            .iter()
            .map(|r| Pool::new(r.subnet, r.range, r.router)),
    );
    pools
}

/// Runs the responder until `token` fires, re-binding when the LAN address changes.
pub async fn run(dhcp: Dhcp, token: CancellationToken) -> anyhow::Result<()> {
    let writer = LeaseWriter::spawn(
        dhcp.store.clone(),
        super::store::log_dir(&dhcp.config.data_path),
    );
    let dhcp = Arc::new(dhcp);
    lan::follow("dhcp", dhcp.lan_addr.clone(), token, |ip, stop| {
        serve(dhcp.clone(), writer.clone(), ip, stop)
    })
    .await;
    writer.sync().await;
    Ok(())
}

/// A UDP socket on 0.0.0.0:`port` that only sees and sends on `iface`.
fn bind(iface: &str, port: u16) -> Result<UdpSocket, DhcpError> {
    let fail = |source| DhcpError::Socket {
        port,
        iface: iface.to_owned(),
        source,
    };
    let sock = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    sock.set_reuse_address(true).map_err(fail)?;
    sock.set_broadcast(true).map_err(fail)?;
    // Clients without an address send from 0.0.0.0 to 255.255.255.255: only a wildcard
    // bind receives them, so the device binding is what keeps this socket on the LAN.
    sock.bind_device(Some(iface.as_bytes())).map_err(fail)?;
    // Firmware boots in racks arrive in bursts: room for thousands of requests while
    // the loop catches up (net.core.rmem_max caps it unless we may force it).
    if force_recv_buffer(&sock, RECV_BUFFER).is_err() {
        let _ = sock.set_recv_buffer_size(RECV_BUFFER);
    }
    sock.set_nonblocking(true).map_err(fail)?;
    sock.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())
        .map_err(fail)?;
    UdpSocket::from_std(sock.into()).map_err(fail)
}

/// Receive buffer of the DHCP sockets.
const RECV_BUFFER: usize = 4 << 20;

/// SO_RCVBUFFORCE: beyond rmem_max, with CAP_NET_ADMIN (which a DHCP server has).
fn force_recv_buffer(sock: &Socket, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt with a valid fd and a c_int option value of the stated size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const value).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Serves on `server_ip` until `stop` fires.
async fn serve(
    dhcp: Arc<Dhcp>,
    writer: LeaseWriter,
    server_ip: Ipv4Addr,
    stop: CancellationToken,
) -> Result<(), DhcpError> {
    let iface = dhcp.config.lan_iface.clone();
    let main = Arc::new(bind(&iface, SERVER_PORT)?);
    let pxe = match dhcp.config.mode {
        Mode::Proxy => Some(Arc::new(bind(&iface, PXE_PORT)?)),
        Mode::Direct => None,
    };
    info!(%iface, %server_ip, mode = ?dhcp.config.mode, "DHCP listening on port 67{}",
        if pxe.is_some() { " and 4011" } else { "" });
    let server = Server {
        dhcp,
        writer,
        server_ip,
        iface,
    };
    let mut buf = vec![0u8; 4096];
    let mut pxe_buf = vec![0u8; 4096];
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            got = main.recv_from(&mut buf) => match got {
                Ok((n, src)) => server.packet(&main, &buf[..n], src, false),
                Err(err) => warn!(error = %err, "DHCP receive failed"),
            },
            got = recv_opt(pxe.as_deref(), &mut pxe_buf) => match (got, &pxe) {
                (Ok((n, src)), Some(sock)) => server.packet(sock, &pxe_buf[..n], src, true),
                (Ok(_), None) => {}
                (Err(err), _) => warn!(error = %err, "proxy DHCP receive failed"),
            },
        }
    }
}

/// Receives on `sock`, or never when there is none (direct mode has no port 4011).
async fn recv_opt(sock: Option<&UdpSocket>, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
    match sock {
        Some(sock) => sock.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

struct Server {
    dhcp: Arc<Dhcp>,
    writer: LeaseWriter,
    server_ip: Ipv4Addr,
    iface: String,
}

impl Server {
    /// One datagram: parse, count, decide, persist, reply. Never fails: bad input is
    /// counted and dropped, the loop goes on.
    fn packet(&self, sock: &Arc<UdpSocket>, buf: &[u8], src: SocketAddr, on_pxe_port: bool) {
        let stats = &self.dhcp.stats;
        let req = match wire::parse(buf) {
            Ok(req) => req,
            Err(why) => {
                stats.malformed(why);
                debug!(%src, %why, "malformed DHCP datagram dropped");
                return;
            }
        };
        let mac = handler::mac_of(&req);
        self.client(sock, &req, mac, src, on_pxe_port);
    }

    // The span is debug level, so a DHCP storm does not pay for one per packet: lines
    // at info and above name `mac` themselves (every line about a client carries it).
    #[instrument(level = "debug", skip_all, fields(mac = %mac))]
    fn client(
        &self,
        sock: &Arc<UdpSocket>,
        req: &Message,
        mac: Mac,
        src: SocketAddr,
        on_pxe_port: bool,
    ) {
        let stats = &self.dhcp.stats;
        let ty = req.opts().msg_type();
        stats.received(mac, ty);
        let config = &self.dhcp.config;
        let snapshot = self.dhcp.live.now();
        let ctx = Ctx {
            dhcp: &config.dhcp,
            boot: &config.boot,
            inventory: &snapshot.inventory,
            server: ServerAddr {
                ip: self.server_ip,
                http_port: config.http_port,
            },
            now: clock::now_secs(),
            neighbour: &|ip| self.dhcp.neighbours.lookup(ip),
            installed: &|mac| self.dhcp.local_disk.installed(mac),
        };
        let src = match src {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => return,
        };
        let outcome = match config.mode {
            Mode::Direct => handler::handle_direct(req, &ctx, src, &mut self.dhcp.leases.lock()),
            Mode::Proxy => handler::handle_proxy(req, &ctx, src, on_pxe_port),
        };
        let Outcome {
            reply,
            silent,
            persist,
            decision,
            events,
        } = outcome;
        for event in events {
            self.dhcp.events.record(mac, event);
        }
        if let Some(why) = silent {
            stats.silent(why);
            debug!(?ty, why = why.label(), "no reply");
        }
        if let Some(d) = &decision {
            debug!(boot_file = ?d.boot_file, why = ?d.why, "boot decision");
        }
        let Some((msg, dest)) = reply else {
            if let Persist::Later(lease) = persist {
                self.writer.write_later(lease);
            }
            return;
        };
        let mut bytes = Vec::with_capacity(548);
        if let Err(err) = msg.encode(&mut Encoder::new(&mut bytes)) {
            warn!(%mac, error = %err, "encoding the reply failed");
            return;
        }
        let reply_ty = msg.opts().msg_type();
        let sent = Sent {
            mac,
            ty: reply_ty,
            yiaddr: msg.yiaddr(),
        };
        match persist {
            Persist::BeforeReply(lease) => {
                let done = self.writer.write(lease);
                let sock = sock.clone();
                let dhcp = self.dhcp.clone();
                let iface = self.iface.clone();
                tokio::spawn(async move {
                    match done.await {
                        Ok(Ok(())) => {
                            send(&sock, &iface, &bytes, dest, mac).await;
                            sent.note(&dhcp);
                        }
                        Ok(Err(err)) => {
                            dhcp.stats
                                .store_failures
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            warn!(%mac, error = %err, "lease not on disk: ACK withheld");
                        }
                        Err(_) => warn!(%mac, "lease writer gone: ACK withheld"),
                    }
                });
            }
            Persist::Later(lease) => {
                self.writer.write_later(lease);
                self.send_now(sock, bytes, dest, sent);
            }
            Persist::Nothing => self.send_now(sock, bytes, dest, sent),
        }
    }

    fn send_now(&self, sock: &Arc<UdpSocket>, bytes: Vec<u8>, dest: Dest, sent: Sent) {
        // UDP sends on a non-blocking socket rarely wait; try inline first.
        if let Some(to) = quick_target(sock, &self.iface, dest)
            && sock.try_send_to(&bytes, to.into()).is_ok()
        {
            sent.note(&self.dhcp);
            return;
        }
        let sock = sock.clone();
        let iface = self.iface.clone();
        let dhcp = self.dhcp.clone();
        tokio::spawn(async move {
            send(&sock, &iface, &bytes, dest, sent.mac).await;
            sent.note(&dhcp);
        });
    }
}

/// A reply that left, for the counters and the client's timeline.
#[derive(Clone, Copy)]
struct Sent {
    mac: Mac,
    ty: Option<dhcproto::v4::MessageType>,
    yiaddr: Ipv4Addr,
}

impl Sent {
    /// Counts the reply; an offer that replaces one the client never answered puts that
    /// on its timeline (a firmware that keeps asking and never takes what it is offered).
    fn note(self, dhcp: &Dhcp) {
        if dhcp.stats.sent(self.mac, self.ty) {
            let what = if self.yiaddr.is_unspecified() {
                "proxy offer".to_owned()
            } else {
                format!("offer of {}", self.yiaddr)
            };
            info!(mac = %self.mac, %what, "the last offer was not answered");
            dhcp.events.record(
                self.mac,
                ClientEvent::failure(Stage::Dhcp, &what, "unanswered"),
            );
        }
    }
}

/// The socket address for `dest`, setting the neighbour entry a hardware-addressed
/// reply needs; broadcast when that fails.
fn quick_target(sock: &UdpSocket, iface: &str, dest: Dest) -> Option<SocketAddrV4> {
    Some(match dest {
        Dest::To(addr) => addr,
        Dest::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
        Dest::Hardware { ip, mac } => match set_neighbour(sock, iface, ip, mac) {
            Ok(()) => SocketAddrV4::new(ip, CLIENT_PORT),
            Err(err) => {
                debug!(%ip, error = %err, "no neighbour entry; broadcasting");
                SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
            }
        },
    })
}

async fn send(sock: &UdpSocket, iface: &str, bytes: &[u8], dest: Dest, mac: Mac) {
    let Some(to) = quick_target(sock, iface, dest) else {
        return;
    };
    if let Err(err) = sock.send_to(bytes, SocketAddr::V4(to)).await {
        warn!(%mac, %to, error = %err, "sending DHCP reply failed");
    }
}

/// Sets `ip` → `mac` in the neighbour table of `iface` (SIOCSARP: one synchronous call
/// on the socket we already hold, the same table rtnetlink writes), so the reply can be
/// unicast to a client that cannot answer ARP yet.
fn set_neighbour(sock: &UdpSocket, iface: &str, ip: Ipv4Addr, mac: Mac) -> io::Result<()> {
    // SAFETY: arpreq is plain data; all-zero is a valid value.
    let mut req: libc::arpreq = unsafe { std::mem::zeroed() };
    let pa = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in fits in sockaddr (16 bytes each); a byte copy of plain data.
    unsafe {
        std::ptr::copy_nonoverlapping(
            (&raw const pa).cast::<u8>(),
            (&raw mut req.arp_pa).cast::<u8>(),
            size_of::<libc::sockaddr_in>(),
        );
    }
    req.arp_ha.sa_family = libc::ARPHRD_ETHER;
    for (d, s) in req.arp_ha.sa_data.iter_mut().zip(mac.0) {
        *d = s as libc::c_char;
    }
    req.arp_flags = libc::ATF_COM;
    for (d, s) in req
        .arp_dev
        .iter_mut()
        .zip(iface.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // SAFETY: SIOCSARP reads a valid arpreq we own for the duration of the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSARP, &raw const req) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
