//! The listener on `lan_ip:port`: reads requests, refuses what it must, and runs each
//! read as a session task (on its own port, or on the listening port in single-port mode).
use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use tokio::{net::UdpSocket, sync::mpsc, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, info, info_span, warn};

use super::{
    TftpError,
    packet::{self, ErrorCode, Kind, Limits, Mode, PacketError, Request},
    path::{self, PathError, Root},
    session::{self, Link, Outcome, Source, Tally, Timing},
    shared::{Bytes, Shared},
    stats::{Failure, SessionSlot},
};
use crate::{
    clients::{ClientEvent, Stage},
    confine::OpenError,
    mac::{Mac, or_dash},
    seeds::Server,
};

/// Packets queued for one single-port session before the listener drops them.
const INBOX: usize = 64;

/// What every session of one listener shares.
pub struct Ctx {
    pub tftp: Arc<super::Tftp>,
    pub root: Arc<Root>,
    pub limits: Limits,
    /// Files being read now, held once for all their readers.
    pub shared: Arc<Shared>,
}

impl Ctx {
    /// The MAC asking from `ip`: its lease or fixed address, else the kernel's neighbour
    /// entry (proxy mode leases nothing). For the log and the client's timeline.
    fn mac_of(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.tftp.identity.who_or_neighbour(ip)
    }

    /// Counts a request or transfer of `client` that did not complete and puts it on the
    /// client's timeline (the fleet view's "why it stopped"), except a transfer the client
    /// ended itself: EDK2 ends its size probe so, on every boot.
    fn failed(&self, client: Ipv4Addr, mac: Option<Mac>, file: &str, why: Failure, reason: &str) {
        self.tftp.stats.failed(client, why);
        if let Some(mac) = mac
            && why != Failure::Aborted
        {
            self.tftp
                .events
                .record(mac, ClientEvent::failure(Stage::Tftp, file, reason));
        }
    }
}

/// A client port with a session running, and what started it.
struct Active {
    id: u64,
    request: Vec<u8>,
    inbox: Option<mpsc::Sender<Vec<u8>>>,
    /// Whether the client acknowledged anything yet.
    acked: Arc<AtomicBool>,
    /// Ends the session (to give its slot to a new request).
    stop: CancellationToken,
}

type Peers = Arc<Mutex<HashMap<SocketAddrV4, Active>>>;

/// Removes the session's peer entry (if still its own) when the session ends.
struct PeerGuard {
    peers: Peers,
    peer: SocketAddrV4,
    id: u64,
}

impl Drop for PeerGuard {
    fn drop(&mut self) {
        let mut peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.get(&self.peer).is_some_and(|a| a.id == self.id) {
            peers.remove(&self.peer);
        }
    }
}

/// One bound listener and the sessions it started.
struct Listener {
    ctx: Arc<Ctx>,
    socket: Arc<UdpSocket>,
    ip: Ipv4Addr,
    peers: Peers,
    next_id: u64,
}

/// Serves on `ip` until `stop` fires; running sessions are ended with it.
pub async fn serve(ctx: Arc<Ctx>, ip: Ipv4Addr, stop: CancellationToken) -> Result<(), TftpError> {
    let addr = SocketAddrV4::new(ip, ctx.tftp.config.port);
    let socket = Arc::new(
        UdpSocket::bind(addr)
            .await
            .map_err(|source| TftpError::Bind { addr, source })?,
    );
    info!(%addr, max_blksize = ctx.limits.max_blksize,
        single_port = ctx.tftp.config.single_port, "TFTP listening");
    let mut listener = Listener {
        ctx,
        socket,
        ip,
        peers: Arc::default(),
        next_id: 0,
    };
    let mut sessions = JoinSet::new();
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            received = listener.socket.recv_from(&mut buf) => {
                let (len, peer) = match received {
                    Ok((len, SocketAddr::V4(peer))) => (len, peer),
                    // Bound to an IPv4 address: nothing else arrives.
                    Ok((_, SocketAddr::V6(_))) => continue,
                    Err(err) => {
                        warn!(%err, "TFTP receive failed");
                        continue;
                    }
                };
                if let Some(start) = listener.dispatch(&buf[..len], peer).await {
                    sessions.spawn(listener.start_session(start, peer, &buf[..len]));
                }
            }
        }
    }
    sessions.shutdown().await;
    Ok(())
}

/// A request that gets a session.
struct Start {
    request: Request,
    slot: SessionSlot,
}

/// The oldest session that never saw an ACK, ended to make room: a request nobody
/// follows up (spoofed, or from a client stuck before its first ACK) then holds a slot
/// only until a new request needs it, while a transfer under way (acknowledged within
/// milliseconds of its start) is never ended. Whether one was.
fn preempt_unacknowledged(peers: &Peers) -> bool {
    let peers = peers.lock().unwrap_or_else(|p| p.into_inner());
    let victim = peers
        .iter()
        .filter(|(_, a)| !a.acked.load(Ordering::Relaxed) && !a.stop.is_cancelled())
        .min_by_key(|(_, a)| a.id);
    match victim {
        Some((peer, active)) => {
            info!(%peer, "all TFTP slots taken: a transfer never acknowledged ends for a new request");
            active.stop.cancel();
            true
        }
        None => false,
    }
}

impl Listener {
    /// Routes one packet arriving on the listening port: to a running single-port
    /// session, to the bin (a repeated request), to an error reply, or to a new session.
    async fn dispatch(&self, data: &[u8], peer: SocketAddrV4) -> Option<Start> {
        let (ctx, socket) = (&self.ctx, &self.socket);
        {
            let peers = self.peers.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(active) = peers.get(&peer) {
                // The client repeated its request because our first answer was slow or
                // lost: the session already answers it.
                if active.request == data {
                    debug!(%peer, "repeated request ignored");
                    return None;
                }
                if let Some(inbox) = &active.inbox
                    && packet::parse_request(data).is_err()
                {
                    // Full inbox: drop, as the network would; the client retransmits.
                    let _ = inbox.try_send(data.to_vec());
                    return None;
                }
            }
        }
        let client = *peer.ip();
        let refuse = |code, message: &str, mac, file: &str, why: Failure| {
            ctx.failed(client, mac, file, why, why.label());
            let reply = packet::error(code, message);
            async move {
                if let Err(err) = socket.send_to(&reply, peer).await {
                    debug!(%peer, %err, "error reply not sent");
                }
            }
        };
        let request = match packet::parse_request(data) {
            // Never answer an ERROR or a stray ACK/DATA: two servers could ping-pong.
            Err(PacketError::NotARequest(_)) => return None,
            Err(err) => {
                let mac = ctx.mac_of(client);
                info!(%peer, mac = %or_dash(mac), %err, "bad TFTP request");
                let message = err.to_string();
                refuse(
                    ErrorCode::IllegalOperation,
                    &message,
                    mac,
                    "request",
                    Failure::BadRequest,
                )
                .await;
                return None;
            }
            Ok(r) => r,
        };
        let file = String::from_utf8_lossy(&request.filename).into_owned();
        if request.kind == Kind::Write {
            let mac = ctx.mac_of(client);
            info!(%peer, mac = %or_dash(mac), %file, "write refused");
            refuse(
                ErrorCode::AccessViolation,
                "Read-only server",
                mac,
                &file,
                Failure::WriteRefused,
            )
            .await;
            return None;
        }
        let (per_client, max) = (ctx.tftp.config.max_per_client, ctx.tftp.config.max_sessions);
        let running = self
            .peers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .filter(|p| *p.ip() == client)
            .count();
        let stats = &ctx.tftp.stats;
        let slot = if running >= per_client {
            Err((
                "too many TFTP sessions from one address; request refused",
                per_client,
            ))
        } else {
            match stats.try_start(max) {
                Some(slot) => Ok(slot),
                None if preempt_unacknowledged(&self.peers) => Ok(stats.start()),
                None => Err(("too many TFTP sessions; request refused", max)),
            }
        };
        let slot = match slot {
            Ok(slot) => slot,
            Err((why, max)) => {
                let mac = ctx.mac_of(client);
                warn!(%peer, mac = %or_dash(mac), %file, max, "{why}");
                refuse(
                    ErrorCode::NotDefined,
                    "Server busy, retry later",
                    mac,
                    &file,
                    Failure::Busy,
                )
                .await;
                return None;
            }
        };
        Some(Start { request, slot })
    }

    /// Registers the peer and returns the session future.
    fn start_session(
        &mut self,
        start: Start,
        peer: SocketAddrV4,
        data: &[u8],
    ) -> impl Future<Output = ()> + use<> {
        self.next_id += 1;
        let (id, ip, peers) = (self.next_id, self.ip, &self.peers);
        let (tx, rx) = if self.ctx.tftp.config.single_port {
            let (tx, rx) = mpsc::channel(INBOX);
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (acked, stop) = (Arc::new(AtomicBool::new(false)), CancellationToken::new());
        peers.lock().unwrap_or_else(|p| p.into_inner()).insert(
            peer,
            Active {
                id,
                request: data.to_vec(),
                inbox: tx,
                acked: acked.clone(),
                stop: stop.clone(),
            },
        );
        let guard = PeerGuard {
            peers: peers.clone(),
            peer,
            id,
        };
        let (ctx, socket) = (self.ctx.clone(), self.socket.clone());
        let name = String::from_utf8_lossy(&start.request.filename).into_owned();
        // Every line of the transfer names the client's MAC (`-` when nobody knows it).
        let mac = ctx.mac_of(*peer.ip());
        let span = info_span!("tftp", mac = %or_dash(mac), client = %peer, file = %name);
        async move {
            let _guard = guard;
            let Start {
                request,
                slot: _slot,
            } = start;
            let link = match rx {
                Some(inbox) => Link::Shared {
                    socket,
                    peer,
                    inbox,
                },
                None => match Link::bind(ip, peer).await {
                    Ok(link) => link,
                    Err(err) => {
                        warn!(%err, "cannot open a transfer socket");
                        ctx.failed(*peer.ip(), mac, &name, Failure::Io, "error");
                        return;
                    }
                },
            };
            tokio::select! {
                _ = transfer(&ctx, link, request, peer, mac, acked) => {}
                // Preempted before its first ACK: for the client, a transfer that timed out.
                _ = stop.cancelled() => ctx.failed(*peer.ip(), mac, &name, Failure::Timeout, "timeout"),
            }
        }
        .instrument(span)
    }
}

/// Opens the file and sends it. `mac` is the requester's, when known; `acked` turns
/// true at the client's first ACK.
async fn transfer(
    ctx: &Ctx,
    mut link: Link,
    request: Request,
    peer: SocketAddrV4,
    mac: Option<Mac>,
    acked: Arc<AtomicBool>,
) {
    let client = *peer.ip();
    let stats = &ctx.tftp.stats;
    let asked = String::from_utf8_lossy(&request.filename).into_owned();
    let xdp_port = link.port().filter(|_| ctx.tftp.xdp.is_some());
    if let (Some(port), Some(xdp)) = (xdp_port, &ctx.tftp.xdp) {
        xdp.add_tftp_port(port);
    }
    // Also when the transfer is ended from outside (dropped mid-way).
    let _port = PortGuard(ctx, xdp_port);
    let started = Instant::now();
    if crate::boot::is_local_boot_file(&asked) {
        // An installed host on its way to its disk ([boot] installed = "not_found"): the
        // firmware gives up on this boot option at once. Not a failure of the client.
        info!("local boot file: not found, as offered");
        let _ = link
            .send(&packet::error(ErrorCode::FileNotFound, "File not found"))
            .await;
        return;
    }
    let opened = open(ctx, &request).await;
    let (source, size, served, named) = match opened {
        Ok(f) => f,
        Err(err) => {
            let (code, message) = err.tftp();
            let (why, reason) = match err {
                PathError::Open(OpenError::NotFound) => (Failure::NotFound, "not_found"),
                PathError::Open(OpenError::Io(_) | OpenError::Unsupported) => {
                    (Failure::Io, "error")
                }
                PathError::Render(_) => (Failure::Denied, "render_failed"),
                _ => (Failure::Denied, "denied"),
            };
            info!(error = %err, "request refused");
            ctx.failed(client, mac, &asked, why, reason);
            let _ = link.send(&packet::error(code, message)).await;
            return;
        }
    };
    let requested = packet::read_options(&request.options);
    if !requested.ignored.is_empty() {
        debug!(ignored = ?requested.ignored, "options ignored");
    }
    // A netascii size is only known after conversion: tsize is left out then.
    let size = (request.mode == Mode::Octet).then_some(size);
    let negotiated = packet::negotiate(&requested, ctx.limits, size);
    let timing = Timing {
        timeout: ctx.tftp.config.timeout,
        retries: ctx.tftp.config.retries,
        first_ack_retries: ctx.tftp.config.first_ack_retries,
    };
    let mut tally = Tally {
        acked,
        ..Tally::default()
    };
    let outcome = session::run(&mut link, source, &negotiated, timing, &mut tally).await;
    let elapsed = started.elapsed();
    stats.update(client, |c| {
        c.bytes += tally.bytes;
        c.retransmits += tally.retransmits;
        if matches!(outcome, Outcome::Complete) {
            c.transfers += 1;
        }
    });
    match outcome {
        Outcome::Complete => {
            let rate = tally.bytes as f64 / elapsed.as_secs_f64().max(1e-6) / 1e6;
            info!(file = %served, bytes = tally.bytes, blksize = negotiated.blksize,
                windowsize = negotiated.windowsize, retransmits = tally.retransmits,
                ms = elapsed.as_millis() as u64, mb_per_s = format!("{rate:.1}"), "transfer complete");
            // A rendered per-host config is recorded under the MAC it names (as a
            // local boot when it sends an installed host to its disk), anything else
            // under the requester's.
            match named.or(mac) {
                Some(mac) if named.is_some() && ctx.tftp.seeds.installed(mac) => {
                    ctx.tftp
                        .events
                        .record(mac, ClientEvent::LocalBoot { path: served });
                }
                Some(mac) => {
                    ctx.tftp
                        .events
                        .record(mac, ClientEvent::BootFile { path: served });
                }
                None => {
                    debug!(%client, "no MAC known for the client; boot-file event not recorded")
                }
            }
        }
        Outcome::Aborted { code, message } => {
            // EDK2 ends its tsize probe this way: normal, but counted.
            info!(code, %message, "client ended the transfer");
            ctx.failed(client, mac, &asked, Failure::Aborted, "aborted");
        }
        Outcome::TimedOut => {
            info!(
                blocks = tally.blocks,
                "client stopped answering; transfer given up"
            );
            ctx.failed(client, mac, &asked, Failure::Timeout, "timeout");
        }
        Outcome::Replaced => {
            debug!("client started a new request from the same port");
            ctx.failed(client, mac, &asked, Failure::Aborted, "aborted");
        }
        Outcome::Io(err) => {
            info!(%err, "transfer failed");
            ctx.failed(client, mac, &asked, Failure::Io, "error");
        }
    }
}

/// Takes the transfer's port off the XDP program's list when the transfer ends.
struct PortGuard<'a>(&'a Ctx, Option<u16>);

impl Drop for PortGuard<'_> {
    fn drop(&mut self) {
        if let (Some(port), Some(xdp)) = (self.1, &self.0.tftp.xdp) {
            xdp.remove_tftp_port(port);
        }
    }
}

/// The content for a request: (what to send, size, name served, the MAC a rendered
/// per-host config names). GRUB's configs (`grub/grub.cfg`, `grub/hosts/<mac>.cfg`) are
/// rendered per request, as over HTTP: Debian's signed network GRUB has no http module
/// and reads them over TFTP. Everything else is a file beneath the root, shared with its
/// other readers when it fits ([`Shared`]), else streamed.
async fn open(
    ctx: &Ctx,
    request: &Request,
) -> Result<(Source, u64, String, Option<Mac>), PathError> {
    let name = path::clean(&request.filename)?;
    let server = Server {
        host: (*ctx.tftp.lan_addr.borrow())
            .unwrap_or(Ipv4Addr::UNSPECIFIED)
            .to_string(),
        port: ctx.tftp.http_port,
    };
    if let Some((mac, rendered)) = ctx.tftp.seeds.tftp(&name, &server) {
        let text = rendered.map_err(|e| {
            warn!(file = %name, error = %crate::error_chain(&e), "boot loader config failed to render");
            PathError::Render(Box::new(e))
        })?;
        let size = text.len() as u64;
        let bytes = match request.mode {
            Mode::Octet => text.into_bytes(),
            Mode::Netascii => {
                let mut converted = Vec::with_capacity(text.len());
                packet::to_netascii(text.as_bytes(), &mut converted);
                converted
            }
        };
        return Ok((Source::memory(Bytes::own(bytes)), size, name, mac));
    }
    let root = ctx.root.clone();
    let (file, meta, name) = tokio::task::spawn_blocking(move || {
        let file = path::open_file(&root, &name)?;
        let meta = file.metadata().map_err(OpenError::Io)?;
        Ok::<_, PathError>((file, meta, name))
    })
    .await
    .map_err(|e| PathError::Open(OpenError::Io(e.into())))??;
    let size = meta.len();
    // Netascii is converted as it is read: streamed.
    if request.mode == Mode::Octet
        && let Some(bytes) = ctx
            .shared
            .contents(&file, &meta)
            .await
            .map_err(|e| PathError::Open(OpenError::Io(e)))?
    {
        return Ok((Source::memory(bytes), size, name, None));
    }
    let source = Source::stream(tokio::fs::File::from_std(file), request.mode);
    Ok((source, size, name, None))
}
