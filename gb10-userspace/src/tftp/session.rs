//! One read transfer: OACK, windows of DATA (RFC 7440), ACK tracking, retransmission
//! with backoff on timeout and never on a duplicate ACK (Sorcerer's Apprentice).
use std::{
    collections::VecDeque,
    io,
    net::{Ipv4Addr, SocketAddrV4},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::AsyncReadExt as _,
    net::UdpSocket,
    sync::mpsc,
    time::{Instant, timeout_at},
};

use super::{
    packet::{self, ErrorCode, Mode, Negotiated, Reply},
    shared::Bytes,
};

/// How much of a streamed file one read fetches: about 22 blocks of 1,468 bytes, a few
/// windows. Every streaming session holds this scratch buffer, its pending bytes and the
/// file reader's own buffer of the same size: at 256 KiB that was about 0.75 MiB per
/// session, 518 MiB for a 500-machine storm (above the chart's 512 Mi limit); at 32 KiB
/// it is about 0.1 MiB, and a 1 MiB file still takes only 32 reads. Boot loaders are
/// not streamed but shared ([`super::shared`]): 0.1 MiB per session was still 100 MiB
/// for a 1,000-machine storm.
const READ_CHUNK: usize = 32 * 1024;
/// Backoff doubles the timeout per consecutive retry, up to this many doublings.
const MAX_BACKOFF_SHIFT: u32 = 3;

/// How a transfer talks to its client.
pub enum Link {
    /// Its own socket on an ephemeral port, connected to the client (RFC 1350 TIDs).
    Own(UdpSocket),
    /// Single-port mode: replies leave from the listening socket; the listener forwards
    /// the client's packets here.
    Shared {
        socket: Arc<UdpSocket>,
        peer: SocketAddrV4,
        inbox: mpsc::Receiver<Vec<u8>>,
    },
}

impl Link {
    /// A socket on `ip`, ephemeral port, connected to `peer`.
    pub async fn bind(ip: Ipv4Addr, peer: SocketAddrV4) -> io::Result<Self> {
        let socket = UdpSocket::bind((ip, 0)).await?;
        socket.connect(peer).await?;
        Ok(Link::Own(socket))
    }

    /// The local port replies leave from.
    pub fn port(&self) -> Option<u16> {
        match self {
            Link::Own(s) => s.local_addr().ok().map(|a| a.port()),
            Link::Shared { .. } => None,
        }
    }

    pub async fn send(&self, packet: &[u8]) -> io::Result<()> {
        match self {
            Link::Own(s) => s.send(packet).await.map(drop),
            Link::Shared { socket, peer, .. } => socket.send_to(packet, *peer).await.map(drop),
        }
    }

    /// The next packet from the client; `Ok(None)` when the listener dropped us (the
    /// client started a new transfer from the same port).
    async fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self {
            Link::Own(s) => s.recv(buf).await.map(Some),
            Link::Shared { inbox, .. } => Ok(inbox.recv().await.map(|p| {
                let n = p.len().min(buf.len());
                buf[..n].copy_from_slice(&p[..n]);
                n
            })),
        }
    }
}

/// What a transfer sends, cut into blocks.
pub enum Source {
    /// Bytes in memory: a rendered config, or a file's contents shared with the other
    /// transfers reading it (see [`super::shared`]).
    Memory { bytes: Arc<Bytes>, at: usize },
    /// A file read in chunks as it is sent.
    Stream(Stream),
}

/// A file read in large chunks and cut into blocks.
pub struct Stream {
    reader: std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>,
    mode: Mode,
    /// Bytes read (and converted, in netascii) but not yet cut into blocks.
    pending: Vec<u8>,
    start: usize,
    scratch: Vec<u8>,
    eof: bool,
}

impl Source {
    /// Bytes held in memory, sent as they are (octet).
    pub fn memory(bytes: Arc<Bytes>) -> Self {
        Source::Memory { bytes, at: 0 }
    }

    /// A file, read as it is sent.
    pub fn stream(reader: impl tokio::io::AsyncRead + Send + 'static, mode: Mode) -> Self {
        Source::Stream(Stream {
            reader: Box::pin(reader),
            mode,
            pending: Vec::new(),
            start: 0,
            scratch: vec![0; READ_CHUNK],
            eof: false,
        })
    }

    /// Appends the next block (up to `size` bytes) to `out`; its length.
    async fn next_block(&mut self, size: usize, out: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Source::Memory { bytes, at } => {
                let bytes = bytes.get();
                let end = (*at + size).min(bytes.len());
                out.extend_from_slice(&bytes[*at..end]);
                let n = end - *at;
                *at = end;
                Ok(n)
            }
            Source::Stream(stream) => stream.next_block(size, out).await,
        }
    }
}

impl Stream {
    async fn next_block(&mut self, size: usize, out: &mut Vec<u8>) -> io::Result<usize> {
        while self.pending.len() - self.start < size && !self.eof {
            self.pending.drain(..self.start);
            self.start = 0;
            let n = self.reader.read(&mut self.scratch).await?;
            match (n, self.mode) {
                (0, _) => self.eof = true,
                (n, Mode::Octet) => self.pending.extend_from_slice(&self.scratch[..n]),
                (n, Mode::Netascii) => packet::to_netascii(&self.scratch[..n], &mut self.pending),
            }
        }
        let end = (self.start + size).min(self.pending.len());
        out.extend_from_slice(&self.pending[self.start..end]);
        let n = end - self.start;
        self.start = end;
        Ok(n)
    }
}

/// Retransmission policy.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Wait for an ACK before the first retransmission (the client's `timeout` option
    /// when it asks for less).
    pub timeout: Duration,
    /// Consecutive timeouts after which the client is given up.
    pub retries: u32,
    /// As `retries`, before the client acknowledged anything: a request nobody follows
    /// up (a spoofed or abandoned one) holds its slot only seconds.
    pub first_ack_retries: u32,
}

/// What a transfer sent, for the metrics, and whether the client acknowledged anything
/// (read by the listener, which may end a never-acknowledged transfer to make room).
#[derive(Debug, Default)]
pub struct Tally {
    pub acked: Arc<AtomicBool>,
    pub bytes: u64,
    pub retransmits: u64,
    /// Blocks in the file (acknowledged when complete).
    pub blocks: u64,
}

/// How a transfer ended.
#[derive(Debug)]
pub enum Outcome {
    Complete,
    /// The client sent an ERROR (e.g. EDK2 ending its tsize probe).
    Aborted {
        code: u16,
        message: String,
    },
    /// The client stopped answering.
    TimedOut,
    /// The listener handed the client's port to a new request.
    Replaced,
    Io(io::Error),
}

enum Wait {
    /// The client acknowledged up to this block index.
    Acked(u64),
    Timeout,
    End(Outcome),
}

/// Sends `source` to the client. Blocks are numbered by a 64-bit index, block 0 being
/// the OACK when there is one; the wire number is the index's low 16 bits, so
/// transfers past 65535 blocks roll over to 0 as common clients expect.
pub async fn run(
    link: &mut Link,
    mut source: Source,
    n: &Negotiated,
    timing: Timing,
    tally: &mut Tally,
) -> Outcome {
    let blksize = usize::from(n.blksize);
    let window = u64::from(n.windowsize);
    // The client's timeout says how long it waits for us; retransmitting sooner costs
    // it a duplicate it re-ACKs, while waiting its 5-6 s (curl, some firmware) after
    // every loss makes a lossy transfer crawl. So the shorter of the two.
    let timing = Timing {
        timeout: n.timeout.map_or(timing.timeout, |t| t.min(timing.timeout)),
        ..timing
    };
    // Packets of blocks [unacked, sent), kept for retransmission.
    let mut inflight: VecDeque<Vec<u8>> = VecDeque::with_capacity(n.windowsize.into());
    let (mut unacked, mut sent) = (1u64, 1u64);
    if !n.oack.is_empty() {
        let oack = packet::oack(&n.oack);
        if let Err(err) = link.send(&oack).await {
            return Outcome::Io(err);
        }
        inflight.push_back(oack);
        unacked = 0;
    }
    let mut last: Option<u64> = None;
    let mut tries = 0u32;
    let mut acked_any = false;
    let mut buf = vec![0u8; 2048];
    loop {
        // Until the OACK is acknowledged, no data (RFC 2347).
        while unacked > 0 && last.is_none() && sent - unacked < window {
            let mut p = packet::data_header(sent as u16, blksize);
            let len = match source.next_block(blksize, &mut p).await {
                Ok(len) => len,
                Err(err) => {
                    let _ = link
                        .send(&packet::error(ErrorCode::NotDefined, "Read error"))
                        .await;
                    return Outcome::Io(err);
                }
            };
            if len < blksize {
                last = Some(sent);
            }
            if let Err(err) = link.send(&p).await {
                return Outcome::Io(err);
            }
            tally.bytes += len as u64;
            inflight.push_back(p);
            sent += 1;
        }
        if last.is_some_and(|l| unacked > l) {
            tally.blocks = sent - 1;
            return Outcome::Complete;
        }
        let wait = timing.timeout * (1 << tries.min(MAX_BACKOFF_SHIFT));
        match wait_ack(link, &mut buf, Instant::now() + wait, unacked, sent).await {
            Wait::Acked(k) => {
                inflight.drain(..=(k - unacked) as usize);
                unacked = k + 1;
                tries = 0;
                acked_any = true;
                tally.acked.store(true, Ordering::Relaxed);
                // An ACK inside the window means the rest was lost (RFC 7440): the
                // next window starts right after it.
                if unacked < sent
                    && let Err(err) = resend(link, &inflight, tally).await
                {
                    return Outcome::Io(err);
                }
            }
            Wait::Timeout => {
                tries += 1;
                tracing::debug!(
                    unacked,
                    sent,
                    tries,
                    ?wait,
                    "no ACK in time; retransmitting"
                );
                let limit = if acked_any {
                    timing.retries
                } else {
                    timing.first_ack_retries.min(timing.retries)
                };
                if tries > limit {
                    let _ = link
                        .send(&packet::error(ErrorCode::NotDefined, "Timeout"))
                        .await;
                    return Outcome::TimedOut;
                }
                if let Err(err) = resend(link, &inflight, tally).await {
                    return Outcome::Io(err);
                }
            }
            Wait::End(outcome) => return outcome,
        }
    }
}

/// Waits until `deadline` for an ACK of a block in `[unacked, sent)`. Duplicate and
/// stale ACKs are ignored without moving the deadline, so a client repeating itself
/// can neither trigger retransmissions nor keep a dead session alive.
async fn wait_ack(
    link: &mut Link,
    buf: &mut [u8],
    deadline: Instant,
    unacked: u64,
    sent: u64,
) -> Wait {
    loop {
        let len = match timeout_at(deadline, link.recv(buf)).await {
            Err(_) => return Wait::Timeout,
            Ok(Ok(Some(len))) => len,
            Ok(Ok(None)) => return Wait::End(Outcome::Replaced),
            Ok(Err(err)) => return Wait::End(Outcome::Io(err)),
        };
        match packet::parse_reply(&buf[..len]) {
            Reply::Ack(block) => {
                if let Some(k) = (unacked..sent).find(|k| *k as u16 == block) {
                    return Wait::Acked(k);
                }
            }
            Reply::Error { code, message } => {
                return Wait::End(Outcome::Aborted { code, message });
            }
            Reply::Other => {}
        }
    }
}

async fn resend(link: &Link, inflight: &VecDeque<Vec<u8>>, tally: &mut Tally) -> io::Result<()> {
    for p in inflight {
        link.send(p).await?;
        tally.retransmits += 1;
        if p[..2] == packet::OP_DATA.to_be_bytes() {
            tally.bytes += (p.len() - 4) as u64;
        }
    }
    Ok(())
}
