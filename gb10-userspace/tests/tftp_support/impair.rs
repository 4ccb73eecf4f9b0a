//! A userspace netem: this kernel has no sch_netem, so loss, delay and duplication are
//! applied by a bridge in the client namespace that relays every frame between the lab
//! veth and a new namespace where the real client runs, as [`IMPAIRED_IP`].
use std::{
    collections::VecDeque,
    os::fd::{AsRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use gb10_lab::{Lab, Netns, packet_socket};

/// How often a relay thread looks at its stop flag (its socket's receive timeout).
const TICK: Duration = Duration::from_millis(5);

/// What happens to frames going one way.
#[derive(Clone, Copy, Debug, Default)]
pub struct Impairment {
    /// Probability a frame is dropped.
    pub loss: f64,
    /// Added to every frame.
    pub delay: Duration,
    /// Probability a frame is sent twice.
    pub duplicate: f64,
}

/// The impaired client's address (the lab client keeps 198.18.0.2 for `/metrics`).
pub const IMPAIRED_IP: &str = "198.18.0.3";

/// The client's new namespace (`ns`, address [`IMPAIRED_IP`]) behind the impairing
/// bridge.
pub struct Impaired {
    pub ns: Netns,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Impaired {
    /// A new client namespace bridged onto the lab's client veth, impairing frames
    /// `to_server` and `to_client`.
    #[track_caller]
    pub fn new(lab: &Lab, to_server: Impairment, to_client: Impairment) -> Self {
        let ns = Netns::new(format!("gb10-imp-{}", lab.id));
        let (inner, outer) = (format!("gi{}a", lab.id), format!("gi{}b", lab.id));
        gb10_lab::run(std::process::Command::new("ip").args([
            "link", "add", &inner, "type", "veth", "peer", "name", &outer,
        ]));
        gb10_lab::run(
            std::process::Command::new("ip").args(["link", "set", &inner, "netns", &ns.name]),
        );
        gb10_lab::run(std::process::Command::new("ip").args([
            "link",
            "set",
            &outer,
            "netns",
            &lab.client.name,
        ]));
        ns.ip(&["addr", "add", &format!("{IMPAIRED_IP}/24"), "dev", &inner]);
        ns.ip(&["link", "set", &inner, "up"]);
        for dev in [&outer, &lab.client_if] {
            lab.client.ip(&["link", "set", dev, "up", "promisc", "on"]);
        }
        let (server_side, client_side) = {
            let (a, b) = (lab.client_if.clone(), outer.clone());
            lab.client
                .enter(move || (packet_socket(&a, TICK), packet_socket(&b, TICK)))
        };
        let server_side = Arc::new(server_side);
        let client_side = Arc::new(client_side);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = vec![
            relay(
                client_side.clone(),
                server_side.clone(),
                to_server,
                1,
                stop.clone(),
            ),
            relay(server_side, client_side, to_client, 2, stop.clone()),
        ];
        Self { ns, stop, threads }
    }
}

impl Drop for Impaired {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Relays frames arriving on `from` to `to`, impaired, until `stop`.
fn relay(
    from: Arc<OwnedFd>,
    to: Arc<OwnedFd>,
    imp: Impairment,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut chance = move |p: f64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
        };
        // Constant delay: a FIFO is ordered by due time.
        let mut queue: VecDeque<(Instant, Vec<u8>)> = VecDeque::new();
        let mut buf = vec![0u8; 65536];
        while !stop.load(Ordering::Relaxed) {
            // SAFETY: sockaddr_ll is plain data; buffers are ours and sized.
            let (n, pkttype) = unsafe {
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                let mut len = size_of::<libc::sockaddr_ll>() as u32;
                let n = libc::recvfrom(
                    from.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&raw mut addr).cast(),
                    &mut len,
                );
                (n, addr.sll_pkttype)
            };
            // Our own transmissions show up as OUTGOING on the other socket: skip.
            if n > 0 && pkttype != libc::PACKET_OUTGOING && !chance(imp.loss) {
                let mut frame = buf[..n as usize].to_vec();
                clear_udp_checksum(&mut frame);
                let due = Instant::now() + imp.delay;
                if chance(imp.duplicate) {
                    queue.push_back((due, frame.clone()));
                }
                queue.push_back((due, frame));
            }
            let now = Instant::now();
            while queue.front().is_some_and(|(due, _)| *due <= now) {
                let (_, frame) = queue.pop_front().unwrap();
                // SAFETY: sending a buffer we own on a bound packet socket.
                unsafe { libc::send(to.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            }
        }
    })
}

/// Frames captured on a veth may carry a checksum the NIC "will" fill in (offload), which
/// re-sent raw it never does: IPv4 UDP gets checksum 0 ("none", RFC 768) instead.
fn clear_udp_checksum(frame: &mut [u8]) {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] || frame[23] != 17 {
        return;
    }
    let at = 14 + usize::from(frame[14] & 0x0f) * 4 + 6;
    if let Some(sum) = frame.get_mut(at..at + 2) {
        sum.copy_from_slice(&[0, 0]);
    }
}
