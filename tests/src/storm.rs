//! A boot storm: many simulated machines powering on at once, each fetching what EDK2,
//! shim and GRUB fetch on a network boot (DHCP through a relay, TFTP with EDK2's `tsize`
//! probe and RFC 7440 window, GRUB's own TFTP, HTTP for kernel and initrd), the bytes
//! checked. One async load generator in the client namespace plays all of them, bounded
//! in time. Shared by the storm test and `cargo xtask bench storm`; [`pull`], many
//! clients fetching one large image, by `cargo xtask bench image`.
//!
//! Addressing: the machines live in the relayed subnet 198.19.0.0/16. The generator is
//! their relay (DHCP with `giaddr` 198.19.0.1 from port 67, chaddr per machine) and
//! holds every address of the subnet (`ip route add local … dev lo`), so each machine
//! talks TFTP and HTTP from its own leased address; the server reaches the subnet
//! through the client end, as it would through a router. On the wire every frame then
//! carries the client end's MAC, as frames from behind a router do.
use std::{
    collections::{BTreeMap, HashMap},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpSocket, UdpSocket},
    sync::mpsc,
    task::JoinSet,
    time::{sleep_until, timeout},
};

use crate::Lab;

/// The relayed subnet of the simulated machines.
pub const SUBNET: &str = "198.19.0.0/16";
/// The relay's address in it (`giaddr`), also the subnet's router.
pub const RELAY: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
/// The pool the servers hand out in the subnet.
pub const POOL: (Ipv4Addr, Ipv4Addr) = (
    Ipv4Addr::new(198, 19, 1, 0),
    Ipv4Addr::new(198, 19, 255, 250),
);

/// EDK2's PXE retransmit timeout and retries for TFTP (`PXEBC_MTFTP_TIMEOUT`,
/// `PXEBC_MTFTP_RETRIES`), used for GRUB's TFTP as well.
const TFTP_TIMEOUT: Duration = Duration::from_secs(4);
const TFTP_RETRIES: u32 = 6;
/// DHCP retransmits (RFC 2131 §4.1 backoff, as EDK2's Dhcp4 does).
const DHCP_TIMEOUTS: [u64; 4] = [4, 8, 16, 32];
/// HTTP read buffer per machine.
const HTTP_BUF: usize = 64 * 1024;

/// gb10-provision's `--dhcp-relay-ranges` value for the subnet.
pub fn relay_range() -> String {
    format!("{SUBNET}={}-{},{RELAY}", POOL.0, POOL.1)
}

/// Routes `lab` so the client namespace is the whole relayed subnet and the server
/// reaches it through the client end.
#[track_caller]
pub fn route_relayed(lab: &Lab) {
    lab.server
        .ip(&["route", "add", SUBNET, "via", lab.client_ip]);
    lab.client
        .ip(&["route", "add", "local", SUBNET, "dev", "lo"]);
}

/// One file a machine fetches: its TFTP name or URL path, and its bytes.
#[derive(Clone, Debug)]
pub struct Fetched {
    pub name: String,
    pub data: Arc<[u8]>,
}

/// What every machine fetches, in order.
#[derive(Clone, Debug)]
pub struct Files {
    /// First stage over TFTP (EDK2: probe, then `blksize 1468 windowsize 4`).
    pub shim: Fetched,
    /// Second stage over TFTP, loaded by shim through EDK2's TFTP the same way.
    pub grub: Fetched,
    /// GRUB's config over GRUB's own TFTP (`blksize 1024`, one block per ACK).
    pub grub_cfg: Fetched,
    /// Over HTTP, as GRUB's `linux (http,…)/…` and `initrd` fetch them.
    pub kernel: Fetched,
    pub initrd: Fetched,
}

impl Files {
    /// The boot files at their usual sizes (shim 1 MiB, GRUB 2.5 MiB, kernel 10 MiB,
    /// initrd 40 MiB), written under `data` (`tftp/` and `www/`, the daemon's layout);
    /// `grub_cfg` is what the server under test serves as `grub/grub.cfg`.
    #[track_caller]
    pub fn write(data: &Path, grub_cfg: Vec<u8>) -> Self {
        let put = |rel: &str, bytes: Vec<u8>| -> Arc<[u8]> {
            let path = data.join(rel);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
            std::fs::write(&path, &bytes)
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            bytes.into()
        };
        // (name asked for, where it lives under `data`, size): TFTP names are relative
        // to the TFTP root, HTTP paths to `www`.
        let [shim, grub, kernel, initrd] = [
            ("shimaa64.efi", "tftp", 1 << 20),
            ("grubaa64.efi", "tftp", 5 << 19),
            ("/boot/vmlinuz", "www", 10 << 20),
            ("/boot/initrd.img", "www", 40 << 20),
        ]
        .into_iter()
        .zip(1..)
        .map(|((name, dir, size), seed)| Fetched {
            name: name.to_owned(),
            data: put(
                &format!("{dir}/{}", name.trim_start_matches('/')),
                crate::pseudo_random(seed, size),
            ),
        })
        .collect::<Vec<_>>()
        .try_into()
        .expect("four files");
        Self {
            shim,
            grub,
            grub_cfg: Fetched {
                name: "grub/grub.cfg".into(),
                data: grub_cfg.into(),
            },
            kernel,
            initrd,
        }
    }

    /// Bytes one boot moves.
    pub fn bytes_per_boot(&self) -> u64 {
        [
            &self.shim,
            &self.grub,
            &self.grub_cfg,
            &self.kernel,
            &self.initrd,
        ]
        .iter()
        .map(|f| f.data.len() as u64)
        .sum()
    }
}

/// How big and where.
#[derive(Clone, Debug)]
pub struct Plan {
    pub machines: usize,
    pub server: Ipv4Addr,
    pub http_port: u16,
    /// The boot file name the DHCP reply must carry.
    pub boot_file: String,
    pub files: Arc<Files>,
    /// Every machine still booting this long after the start has failed.
    pub deadline: Duration,
    /// The CPU the generator's one thread is pinned to.
    pub cpu: Option<usize>,
    /// How much of each HTTP body is compared (TFTP: every byte, always).
    pub check: Check,
}

/// One completed boot: how long it took from the first DISCOVER, and per phase.
#[derive(Clone, Copy, Debug)]
pub struct Boot {
    pub total: Duration,
    pub dhcp: Duration,
    pub tftp: Duration,
    pub http: Duration,
}

/// What a storm saw.
#[derive(Debug, Default)]
pub struct Report {
    pub machines: usize,
    /// Completed boots, sorted by total time.
    pub boots: Vec<Boot>,
    /// Failed boots by step and reason.
    pub failures: BTreeMap<String, usize>,
    /// From the first DISCOVER to the last boot's end.
    pub wall: Duration,
    /// CPU time the generator's thread used.
    pub generator_cpu: Duration,
    /// DHCP and TFTP packets sent again after a timeout.
    pub retransmits: u64,
}

impl Report {
    pub fn completed(&self) -> usize {
        self.boots.len()
    }

    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// The `p`-th percentile (0–100) of boot times over every machine, a failed boot
    /// counting as one that never ends: `None` when the percentile falls on a failure.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let n = self.machines.max(self.boots.len());
        let rank = ((p / 100.0 * n as f64).ceil() as usize).clamp(1, n.max(1));
        self.boots.get(rank - 1).map(|b| b.total)
    }

    /// Median of one phase over completed boots.
    pub fn phase_median(&self, phase: impl Fn(&Boot) -> Duration) -> Duration {
        let mut v: Vec<Duration> = self.boots.iter().map(phase).collect();
        v.sort();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }

    pub fn boots_per_second(&self) -> f64 {
        self.completed() as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs the storm from `lab`'s client namespace (routed with [`route_relayed`]) and
/// waits for it: at most `plan.deadline`, plus a few seconds to wind down.
pub fn run(lab: &Lab, plan: Plan) -> Report {
    let (mut report, cpu) = generate(lab, plan.cpu, storm(plan));
    report.generator_cpu = cpu;
    report
}

/// Runs `work` on one thread in `lab`'s client namespace (pinned to `cpu` when given):
/// its result and the CPU time the thread used.
fn generate<F>(lab: &Lab, cpu: Option<usize>, work: F) -> (F::Output, Duration)
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    lab.client.enter(move || {
        if let Some(cpu) = cpu {
            pin_to(cpu);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let cpu0 = thread_cpu();
        let out = rt.block_on(work);
        (out, thread_cpu().saturating_sub(cpu0))
    })
}

fn pin_to(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; the calls only read it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    // SAFETY: clock_gettime writes the timespec we own.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Why one boot failed: the step and a reason coarse enough to be counted.
#[derive(Debug)]
struct Failure {
    step: &'static str,
    why: String,
}

fn fail(step: &'static str, why: impl std::fmt::Display) -> Failure {
    Failure {
        step,
        why: why.to_string(),
    }
}

async fn storm(plan: Plan) -> Report {
    let relay = match Relay::bind(plan.server).await {
        Ok(r) => Arc::new(r),
        Err(err) => {
            let mut report = Report {
                machines: plan.machines,
                ..Report::default()
            };
            report
                .failures
                .insert(format!("relay: {err}"), plan.machines);
            return report;
        }
    };
    let reader = tokio::spawn(relay.clone().read_loop());
    let start = Instant::now();
    let deadline = tokio::time::Instant::now() + plan.deadline;
    let plan = Arc::new(plan);
    let mut set = JoinSet::new();
    for i in 0..plan.machines {
        let (plan, relay) = (plan.clone(), relay.clone());
        set.spawn(async move {
            let mut retransmits = 0;
            let result = tokio::select! {
                r = machine(i, &plan, &relay, &mut retransmits) => r,
                () = sleep_until(deadline) => Err(fail("deadline", "still booting")),
            };
            (result, retransmits)
        });
    }
    let mut report = Report {
        machines: plan.machines,
        ..Report::default()
    };
    while let Some(joined) = set.join_next().await {
        let (result, retransmits) = joined.expect("machine task panicked");
        report.retransmits += retransmits;
        match result {
            Ok(boot) => report.boots.push(boot),
            Err(Failure { step, why }) => {
                *report.failures.entry(format!("{step}: {why}")).or_default() += 1;
            }
        }
    }
    report.wall = start.elapsed();
    reader.abort();
    report.boots.sort_by_key(|b| b.total);
    report
}

/// One machine's boot, start to last initrd byte.
async fn machine(
    i: usize,
    plan: &Plan,
    relay: &Relay,
    retransmits: &mut u64,
) -> Result<Boot, Failure> {
    let n = i as u32;
    let mac = [0x02, 0x00, 0x5b, (n >> 16) as u8, (n >> 8) as u8, n as u8];
    let start = Instant::now();
    let lease = relay
        .lease(mac, n.wrapping_mul(2_654_435_761) ^ 0x5eed, retransmits)
        .await?;
    if lease.boot_file != plan.boot_file {
        return Err(fail("dhcp", format!("boot file {:?}", lease.boot_file)));
    }
    let dhcp = start.elapsed();
    let files = &plan.files;
    let tftp_server = lease.next_server.unwrap_or(plan.server);
    let edk2 = |size: bool| -> Vec<(&'static str, &'static str)> {
        let mut o = vec![("blksize", "1468"), ("windowsize", "4")];
        if size {
            o.insert(0, ("tsize", "0"));
        }
        o
    };
    for file in [&files.shim, &files.grub] {
        // EDK2 asks the size first and aborts once the OACK has told it, then reads.
        tftp_get(lease.ip, tftp_server, file, &edk2(true), true, retransmits).await?;
        tftp_get(
            lease.ip,
            tftp_server,
            file,
            &edk2(false),
            false,
            retransmits,
        )
        .await?;
    }
    let grub = [("blksize", "1024"), ("tsize", "0")];
    tftp_get(
        lease.ip,
        tftp_server,
        &files.grub_cfg,
        &grub,
        false,
        retransmits,
    )
    .await?;
    let tftp = start.elapsed() - dhcp;
    for file in [&files.kernel, &files.initrd] {
        http_get(lease.ip, plan.server, plan.http_port, file, plan.check).await?;
    }
    let total = start.elapsed();
    Ok(Boot {
        total,
        dhcp,
        tftp,
        http: total - dhcp - tftp,
    })
}

/// What a machine got from DHCP.
struct Lease {
    ip: Ipv4Addr,
    boot_file: String,
    next_server: Option<Ipv4Addr>,
}

/// The relay agent: one socket on `RELAY:67` for every machine, replies routed to the
/// machine waiting on their xid.
struct Relay {
    sock: UdpSocket,
    server: SocketAddrV4,
    waiting: Mutex<HashMap<u32, mpsc::UnboundedSender<Vec<u8>>>>,
}

const DISCOVER: u8 = 1;
const OFFER: u8 = 2;
const REQUEST: u8 = 3;
const ACK: u8 = 5;
const NAK: u8 = 6;

impl Relay {
    async fn bind(server: Ipv4Addr) -> std::io::Result<Self> {
        Ok(Self {
            sock: UdpSocket::bind((RELAY, 67)).await?,
            server: SocketAddrV4::new(server, 67),
            waiting: Mutex::new(HashMap::new()),
        })
    }

    async fn read_loop(self: Arc<Self>) {
        let mut buf = vec![0u8; 4096];
        loop {
            let Ok((n, _)) = self.sock.recv_from(&mut buf).await else {
                continue;
            };
            let Some(xid) = buf
                .get(4..8)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            else {
                continue;
            };
            let waiting = self.waiting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(tx) = waiting.get(&xid) {
                let _ = tx.send(buf[..n].to_vec());
            }
        }
    }

    /// DISCOVER → OFFER → REQUEST → ACK, with retransmits.
    async fn lease(&self, mac: [u8; 6], xid: u32, retransmits: &mut u64) -> Result<Lease, Failure> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(xid, tx);
        let result = async {
            let discover = dhcp_request(mac, xid, DISCOVER, &[]);
            let offer = self
                .exchange(&discover, &mut rx, &[OFFER], retransmits)
                .await?;
            let server_id = offer
                .server_id
                .ok_or_else(|| fail("dhcp", "offer without server id"))?;
            let request = dhcp_request(
                mac,
                xid,
                REQUEST,
                &[(50, &offer.yiaddr.octets()), (54, &server_id.octets())],
            );
            let ack = self
                .exchange(&request, &mut rx, &[ACK, NAK], retransmits)
                .await?;
            if ack.ty != ACK {
                return Err(fail("dhcp", "NAK"));
            }
            Ok(Lease {
                ip: ack.yiaddr,
                boot_file: ack.file,
                next_server: (!ack.siaddr.is_unspecified()).then_some(ack.siaddr),
            })
        }
        .await;
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&xid);
        result
    }

    async fn exchange(
        &self,
        msg: &[u8],
        rx: &mut mpsc::UnboundedReceiver<Vec<u8>>,
        want: &[u8],
        retransmits: &mut u64,
    ) -> Result<DhcpReply, Failure> {
        for (try_no, secs) in DHCP_TIMEOUTS.iter().enumerate() {
            if try_no > 0 {
                *retransmits += 1;
            }
            self.sock
                .send_to(msg, self.server)
                .await
                .map_err(|e| fail("dhcp", format!("send: {}", e.kind())))?;
            let until = tokio::time::Instant::now() + Duration::from_secs(*secs);
            loop {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Err(_) => break,
                    Ok(None) => return Err(fail("dhcp", "relay gone")),
                    Ok(Some(bytes)) => {
                        if let Some(reply) = parse_dhcp_reply(&bytes)
                            && want.contains(&reply.ty)
                        {
                            return Ok(reply);
                        }
                    }
                }
            }
        }
        Err(fail("dhcp", "no reply"))
    }
}

/// A relayed BOOTREQUEST as EDK2's PXE sends it (arm64 UEFI, arch 11).
fn dhcp_request(mac: [u8; 6], xid: u32, ty: u8, extra: &[(u8, &[u8])]) -> Vec<u8> {
    let mut p = vec![0u8; 236];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[3] = 1; // one relay hop
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[24..28].copy_from_slice(&RELAY.octets());
    p[28..34].copy_from_slice(&mac);
    p.extend_from_slice(&[99, 130, 83, 99]);
    let mut uuid = [0u8; 17];
    uuid[11..].copy_from_slice(&mac);
    let options: [(u8, &[u8]); 6] = [
        (53, &[ty]),
        (57, &1472u16.to_be_bytes()),
        (
            55,
            &[
                1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54, 58,
                59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
            ],
        ),
        (97, &uuid),
        (94, &[1, 3, 0]),
        (93, &[0, 11]),
    ];
    for (code, data) in options.iter().chain(extra) {
        p.push(*code);
        p.push(data.len() as u8);
        p.extend_from_slice(data);
    }
    let class = b"PXEClient:Arch:00011:UNDI:003000";
    p.push(60);
    p.push(class.len() as u8);
    p.extend_from_slice(class);
    p.push(255);
    p
}

struct DhcpReply {
    ty: u8,
    yiaddr: Ipv4Addr,
    siaddr: Ipv4Addr,
    server_id: Option<Ipv4Addr>,
    file: String,
}

fn parse_dhcp_reply(b: &[u8]) -> Option<DhcpReply> {
    if b.len() < 240 || b[0] != 2 || b[236..240] != [99, 130, 83, 99] {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(b[at], b[at + 1], b[at + 2], b[at + 3]);
    let field = &b[108..236];
    let mut file = String::from_utf8_lossy(
        &field[..field.iter().position(|&c| c == 0).unwrap_or(field.len())],
    )
    .into_owned();
    let (mut ty, mut server_id) = (0, None);
    let mut i = 240;
    while i < b.len() {
        let code = b[i];
        if code == 255 {
            break;
        }
        if code == 0 {
            i += 1;
            continue;
        }
        let len = usize::from(*b.get(i + 1)?);
        let value = b.get(i + 2..i + 2 + len)?;
        match (code, value) {
            (53, [t]) => ty = *t,
            (54, [a, b2, c, d]) => server_id = Some(Ipv4Addr::new(*a, *b2, *c, *d)),
            (67, name) if file.is_empty() => {
                file = String::from_utf8_lossy(name)
                    .trim_end_matches('\0')
                    .to_owned();
            }
            _ => {}
        }
        i += 2 + len;
    }
    Some(DhcpReply {
        ty,
        yiaddr: ip(16),
        siaddr: ip(20),
        server_id,
        file,
    })
}

/// One TFTP read of `file` from `ip` with `options`, checking every byte against it.
/// With `abort`, stops at the OACK with an ERROR, as EDK2 ends its size probe.
async fn tftp_get(
    ip: Ipv4Addr,
    server: Ipv4Addr,
    file: &Fetched,
    options: &[(&str, &str)],
    abort: bool,
    retransmits: &mut u64,
) -> Result<(), Failure> {
    let step = if abort { "tftp probe" } else { "tftp" };
    let io = |e: std::io::Error| fail(step, format!("{}", e.kind()));
    let sock = UdpSocket::bind((ip, 0)).await.map_err(io)?;
    let mut rrq = vec![0, 1];
    for part in [file.name.as_str(), "octet"]
        .into_iter()
        .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
    {
        rrq.extend_from_slice(part.as_bytes());
        rrq.push(0);
    }
    let want = &file.data[..];
    let mut dest = SocketAddr::V4(SocketAddrV4::new(server, 69));
    let mut peer: Option<SocketAddr> = None;
    let mut last_sent = rrq;
    sock.send_to(&last_sent, dest).await.map_err(io)?;
    let (mut blksize, mut window) = (512usize, 1u32);
    let (mut got, mut block, mut in_window, mut tries) = (0usize, 0u16, 0u32, 0u32);
    let mut resynced = false;
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match timeout(TFTP_TIMEOUT, sock.recv_from(&mut buf)).await {
            Err(_) => {
                tries += 1;
                if tries > TFTP_RETRIES {
                    return Err(fail(step, "timeout"));
                }
                *retransmits += 1;
                sock.send_to(&last_sent, dest).await.map_err(io)?;
                continue;
            }
            Ok(r) => r.map_err(io)?,
        };
        match peer {
            Some(p) if p != from => continue,
            Some(_) => {}
            None => {
                peer = Some(from);
                dest = from;
            }
        }
        let pkt = &buf[..n];
        let opcode = pkt.get(..2).map_or(0, |o| u16::from_be_bytes([o[0], o[1]]));
        match opcode {
            6 if got == 0 && block == 0 => {
                let mut fields = pkt[2..].split(|&c| c == 0);
                while let (Some(k), Some(v)) = (fields.next(), fields.next()) {
                    let v: Option<usize> = std::str::from_utf8(v).ok().and_then(|v| v.parse().ok());
                    match (k.to_ascii_lowercase().as_slice(), v) {
                        (b"blksize", Some(v)) => blksize = v,
                        (b"windowsize", Some(v)) => window = v as u32,
                        (b"tsize", Some(v)) if v != want.len() => {
                            return Err(fail(step, format!("tsize {v}")));
                        }
                        _ => {}
                    }
                }
                if abort {
                    let mut err = vec![0, 5, 0, 8];
                    err.extend_from_slice(b"User aborted the transfer\0");
                    sock.send_to(&err, dest).await.map_err(io)?;
                    return Ok(());
                }
                last_sent = vec![0, 4, 0, 0];
                sock.send_to(&last_sent, dest).await.map_err(io)?;
                tries = 0;
            }
            3 if abort => {
                // No OACK: the server ignored the options; EDK2 gives up the probe.
                let mut err = vec![0, 5, 0, 8];
                err.extend_from_slice(b"User aborted the transfer\0");
                sock.send_to(&err, dest).await.map_err(io)?;
                return Ok(());
            }
            3 => {
                let num = u16::from_be_bytes([pkt[2], pkt[3]]);
                let data = &pkt[4..];
                if num == block.wrapping_add(1) {
                    if data.len() > blksize || want.get(got..got + data.len()) != Some(data) {
                        return Err(fail(step, "wrong bytes"));
                    }
                    got += data.len();
                    block = num;
                    in_window += 1;
                    tries = 0;
                    resynced = false;
                    let last = data.len() < blksize;
                    if last || in_window >= window {
                        last_sent = ack(block);
                        sock.send_to(&last_sent, dest).await.map_err(io)?;
                        in_window = 0;
                    }
                    if last {
                        return if got == want.len() {
                            Ok(())
                        } else {
                            Err(fail(step, "short file"))
                        };
                    }
                } else if !resynced {
                    // RFC 7440 §4: a gap or a repeat; acknowledge what arrived in order
                    // once, and the server sends on from there.
                    last_sent = ack(block);
                    sock.send_to(&last_sent, dest).await.map_err(io)?;
                    in_window = 0;
                    resynced = true;
                }
            }
            5 => {
                let code = pkt
                    .get(2..4)
                    .map_or(0, |c| u16::from_be_bytes([c[0], c[1]]));
                return Err(fail(step, format!("error {code}")));
            }
            _ => {}
        }
    }
}

fn ack(block: u16) -> Vec<u8> {
    let b = block.to_be_bytes();
    vec![0, 4, b[0], b[1]]
}

/// One HTTP/1.1 GET of `file` from `ip`, a connection of its own as GRUB opens.
async fn http_get(
    ip: Ipv4Addr,
    server: Ipv4Addr,
    port: u16,
    file: &Fetched,
    check: Check,
) -> Result<(), Failure> {
    let url = Url {
        server,
        port,
        path: file.name.clone(),
    };
    get(ip, &url, "GRUB 2.12", &file.data, check)
        .await
        .map(drop)
}

/// How much of an HTTP body is compared with what the server holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// Every byte.
    Every,
    /// The length, and the first 64 KiB byte for byte; the rest is counted and
    /// discarded in the kernel (MSG_TRUNC), so that a benchmark's clients cost little.
    Sample,
}

/// A GET of `url` from `from`, its body checked against `want`; the body length.
async fn get(
    from: Ipv4Addr,
    url: &Url,
    agent: &str,
    want: &[u8],
    check: Check,
) -> Result<u64, Failure> {
    let io = |e: std::io::Error| fail("http", format!("{}", e.kind()));
    let sock = TcpSocket::new_v4().map_err(io)?;
    sock.bind(SocketAddr::from((from, 0))).map_err(io)?;
    let mut stream = sock
        .connect(SocketAddr::from((url.server, url.port)))
        .await
        .map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: {agent}\r\n\r\n",
        url.path, url.server, url.port
    );
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = vec![0u8; HTTP_BUF];
    let (len, head_end, have) = read_head(&mut stream, &mut buf).await?;
    if len != want.len() {
        return Err(fail("http", format!("Content-Length {len}")));
    }
    let mut got = have - head_end;
    if want.get(..got) != Some(&buf[head_end..have]) {
        return Err(fail("http", "wrong bytes"));
    }
    let compared = match check {
        Check::Every => len,
        Check::Sample => HTTP_BUF.min(len),
    };
    while got < compared {
        let room = (compared - got).min(buf.len());
        let n = stream.read(&mut buf[..room]).await.map_err(io)?;
        if n == 0 {
            return Err(fail("http", "closed mid-body"));
        }
        if want[got..got + n] != buf[..n] {
            return Err(fail("http", "wrong bytes"));
        }
        got += n;
    }
    while got < len {
        match discard(&stream, len - got).await.map_err(io)? {
            0 => return Err(fail("http", "closed mid-body")),
            n => got += n,
        }
    }
    Ok(len as u64)
}

/// Takes up to `max` bytes off `stream` without copying them (0: the peer closed).
async fn discard(stream: &tokio::net::TcpStream, max: usize) -> std::io::Result<usize> {
    use std::os::fd::AsRawFd as _;
    loop {
        stream.readable().await?;
        let read = stream.try_io(tokio::io::Interest::READABLE, || {
            // SAFETY: with MSG_TRUNC a TCP socket drops up to `max` bytes and writes
            // nothing to the (null) buffer.
            let n = unsafe {
                libc::recv(
                    stream.as_raw_fd(),
                    std::ptr::null_mut(),
                    max.min(1 << 30),
                    libc::MSG_TRUNC | libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match read {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => return other,
        }
    }
}

/// Reads a response head into `buf`: (Content-Length, head length, bytes in `buf`),
/// failing unless the status is 200.
async fn read_head(
    stream: &mut tokio::net::TcpStream,
    buf: &mut [u8],
) -> Result<(usize, usize, usize), Failure> {
    let io = |e: std::io::Error| fail("http", format!("{}", e.kind()));
    let mut have = 0;
    let head_end = loop {
        let n = stream.read(&mut buf[have..]).await.map_err(io)?;
        if n == 0 {
            return Err(fail("http", "closed before the headers"));
        }
        have += n;
        if let Some(p) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") {
            break p + 4;
        }
        if have == buf.len() {
            return Err(fail("http", "headers too long"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap_or("?");
    if status != "200" {
        return Err(fail("http", format!("status {status}")));
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| fail("http", "no Content-Length"))?;
    Ok((len, head_end, have))
}

/// What [`pull`] saw.
#[derive(Debug, Default)]
pub struct PullReport {
    /// Body bytes received by all clients.
    pub bytes: u64,
    /// Whole files received.
    pub complete: usize,
    pub failures: BTreeMap<String, usize>,
    /// From the first request to the last byte.
    pub wall: Duration,
    pub generator_cpu: Duration,
}

impl PullReport {
    /// Aggregate throughput in MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / self.wall.as_secs_f64().max(1e-9) / 1e6
    }
}

/// Where [`pull`] fetches from.
#[derive(Clone, Debug)]
pub struct Url {
    pub server: Ipv4Addr,
    pub port: u16,
    pub path: String,
}

/// `clients` HTTP clients fetching `url` (whose bytes are `want`) at once from `lab`'s
/// client namespace, as image installers pull one disk image, each from an address of
/// its own in [`SUBNET`] as machines do (the lab routed by [`route_relayed`]); bodies
/// checked as [`Check::Sample`] says, so the clients cost as little as they can. With
/// `again_for`, each client fetches again, on a new connection, until that long has
/// passed since the start (a steady load of whole files); without, once.
pub fn pull(
    lab: &Lab,
    url: Url,
    want: Arc<[u8]>,
    clients: usize,
    cpu: Option<usize>,
    deadline: Duration,
    again_for: Option<Duration>,
) -> PullReport {
    let (mut report, cpu) = generate(lab, cpu, async move {
        let start = Instant::now();
        let mut set = JoinSet::new();
        for i in 0..clients {
            let (url, want) = (url.clone(), want.clone());
            let from = Ipv4Addr::from(u32::from(POOL.0) + i as u32);
            set.spawn(async move {
                let mut got = Vec::new();
                // Bounded by `again_for` (a fetch takes time) and, should fetches fail
                // at once, by a count.
                for _ in 0..1_000_000 {
                    let one = timeout(deadline, get(from, &url, "curl/8", &want, Check::Sample))
                        .await
                        .unwrap_or_else(|_| Err(fail("http", "deadline")));
                    let failed = one.is_err();
                    got.push(one);
                    if failed || again_for.is_none_or(|d| start.elapsed() >= d) {
                        break;
                    }
                }
                got
            });
        }
        let mut report = PullReport::default();
        while let Some(joined) = set.join_next().await {
            for one in joined.expect("client task panicked") {
                match one {
                    Ok(n) => {
                        report.bytes += n;
                        report.complete += 1;
                    }
                    Err(Failure { step, why }) => {
                        *report.failures.entry(format!("{step}: {why}")).or_default() += 1;
                    }
                }
            }
        }
        report.wall = start.elapsed();
        report
    });
    report.generator_cpu = cpu;
    report
}

/// One TFTP download of `name` from `lab`'s client namespace with curl: its bytes, or
/// what curl said.
pub fn tftp_fetch(lab: &Lab, name: &str) -> Result<Vec<u8>, String> {
    let out = lab
        .client
        .cmd("curl")
        .args([
            "-sS",
            "-m",
            "10",
            &format!("tftp://{}/{name}", lab.server_ip),
        ])
        .output()
        .map_err(|e| format!("curl: {e}"))?;
    if out.status.success() && !out.stdout.is_empty() {
        Ok(out.stdout)
    } else {
        Err(format!(
            "TFTP {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Peak resident memory (VmHWM) of `pid` and its children, in bytes.
pub fn peak_rss_tree(pid: u32) -> u64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    own + children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(peak_rss_tree)
        .sum::<u64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dhcp_request_parses_as_a_reply_shape() {
        let mut m = dhcp_request([2, 0, 0, 0, 0, 1], 7, DISCOVER, &[]);
        m[0] = 2;
        m[16..20].copy_from_slice(&[198, 19, 1, 5]);
        let r = parse_dhcp_reply(&m).expect("parses");
        assert_eq!(r.ty, DISCOVER);
        assert_eq!(r.yiaddr, Ipv4Addr::new(198, 19, 1, 5));
        assert!(r.file.is_empty());
    }

    #[test]
    fn percentiles() {
        let mut r = Report {
            machines: 100,
            ..Report::default()
        };
        for ms in 1..=100 {
            let d = Duration::from_millis(ms);
            r.boots.push(Boot {
                total: d,
                dhcp: d,
                tftp: d,
                http: d,
            });
        }
        assert_eq!(r.percentile(50.0), Some(Duration::from_millis(50)));
        assert_eq!(r.percentile(99.0), Some(Duration::from_millis(99)));
        assert_eq!(Report::default().percentile(50.0), None);
        // Two of a hundred failed: the 99th percentile is a boot that never ended.
        r.boots.truncate(98);
        assert_eq!(r.percentile(98.0), Some(Duration::from_millis(98)));
        assert_eq!(r.percentile(99.0), None);
    }
}
