//! Helpers for the TFTP lab tests: files, real clients, impairment, hand-made packets.
pub mod impair;

use std::{
    ffi::CString,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use gb10_lab::{Lab, Netns};

pub const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");
pub const SERVER_IP: &str = "198.18.0.1";
pub const SERVER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 1), 69));
/// (tool, Debian package) of the real clients.
pub const CLIENTS: [(&str, &str); 3] = [("tftp", "tftp-hpa"), ("atftp", "atftp"), ("curl", "curl")];
/// Upper bound on one client run.
const CLIENT_SECONDS: &str = "240";

/// Root plus the tools, each with its SKIP line when missing.
pub fn setup(test: &str, tools: &[(&str, &str)]) -> bool {
    gb10_lab::require_root(test)
        && tools
            .iter()
            .all(|(t, p)| gb10_lab::require_tool(test, t, p))
}

/// Writes `data` at `rel` under the lab's TFTP root.
#[track_caller]
pub fn put(lab: &Lab, rel: &str, data: &[u8]) {
    let path = lab.dir.join("data/tftp").join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// `size` pseudo-random bytes (xorshift, `seed`) written at `rel`; returns them.
#[track_caller]
pub fn put_random(lab: &Lab, rel: &str, size: usize, seed: u64) -> Vec<u8> {
    let data = gb10_lab::pseudo_random(seed, size);
    put(lab, rel, &data);
    data
}

/// Equal bytes, or a panic naming the first difference (never megabytes of output).
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], label: &str) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "{label}: got {} bytes, want {}; first difference at {at:?}",
            got.len(),
            want.len()
        );
    }
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A real client fetching one file.
#[derive(Clone, Copy, Debug)]
pub enum Fetch {
    /// tftp-hpa in octet mode (it sends no options).
    TftpHpa,
    /// tftp-hpa in netascii mode.
    TftpHpaAscii,
    /// atftp with `--option` values like "blksize 1468".
    Atftp(&'static [&'static str]),
    /// curl with extra arguments.
    Curl(&'static [&'static str]),
}

impl Fetch {
    #[track_caller]
    pub fn get(self, lab: &Lab, remote: &str) -> Vec<u8> {
        self.run(&lab.client, lab, remote, false).0
    }

    /// As [`Fetch::get`], run in namespace `ns` (an [`impair::Impaired`] client).
    #[track_caller]
    pub fn get_in(self, ns: &Netns, lab: &Lab, remote: &str) -> Vec<u8> {
        self.run(ns, lab, remote, false).0
    }

    /// As [`Fetch::get`], with atftp's packet trace in the output text.
    #[track_caller]
    pub fn get_traced(self, lab: &Lab, remote: &str) -> (Vec<u8>, String) {
        self.run(&lab.client, lab, remote, true)
    }

    #[track_caller]
    fn run(self, ns: &Netns, lab: &Lab, remote: &str, trace: bool) -> (Vec<u8>, String) {
        let local = lab
            .dir
            .join(format!("got-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        let local_s = local.to_str().unwrap();
        let mut cmd = ns.cmd("timeout");
        cmd.arg(CLIENT_SECONDS);
        match self {
            Fetch::TftpHpa | Fetch::TftpHpaAscii => {
                let mode = if matches!(self, Fetch::TftpHpa) {
                    "binary"
                } else {
                    "netascii"
                };
                cmd.args(["tftp", "-m", mode, SERVER_IP, "-c", "get", remote, local_s]);
            }
            Fetch::Atftp(opts) => {
                cmd.arg("atftp");
                if trace {
                    cmd.arg("--trace");
                }
                for o in opts {
                    cmd.args(["--option", o]);
                }
                cmd.args(["-g", "-r", remote, "-l", local_s, SERVER_IP]);
            }
            Fetch::Curl(extra) => {
                cmd.args(["curl", "-sS", "-o", local_s]).args(extra);
                cmd.arg(format!("tftp://{SERVER_IP}/{remote}"));
            }
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "{self:?} {remote}: {}\n{text}",
            out.status
        );
        let data =
            std::fs::read(&local).unwrap_or_else(|e| panic!("{self:?} {remote}: {e}\n{text}"));
        let _ = std::fs::remove_file(&local);
        (data, text)
    }
}

/// A counter of the server veth (`tx_bytes`, `rx_packets`, ...).
#[track_caller]
pub fn server_stat(lab: &Lab, name: &str) -> u64 {
    let out = gb10_lab::run(lab.server.cmd("cat").arg(format!(
        "/sys/class/net/{}/statistics/{name}",
        lab.server_if
    )));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A UDP socket on the client address (call inside the client namespace).
pub fn client_socket() -> UdpSocket {
    let s = UdpSocket::bind("198.18.0.2:0").expect("bind client socket");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// The next packet, or a panic after the socket's read timeout.
#[track_caller]
pub fn recv(s: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let (n, from) = s.recv_from(&mut buf).expect("no reply from the server");
    buf.truncate(n);
    (buf, from)
}

/// An octet RRQ.
pub fn rrq(name: &[u8], opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = b"\0\x01".to_vec();
    p.extend_from_slice(name);
    p.extend_from_slice(b"\0octet\0");
    for (k, v) in opts {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// An OACK as the server should send it.
pub fn oack(opts: &[(&str, &str)]) -> Vec<u8> {
    let mut p = rrq(b"", opts);
    p.drain(..2 + 1 + 6);
    [b"\0\x06".to_vec(), p].concat()
}

/// Polls `/metrics` until `name{labels}` equals `want`, for at most `seconds`.
#[track_caller]
pub fn wait_for(lab: &Lab, name: &str, labels: &[(&str, &str)], want: f64, seconds: u64) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        let m = lab.metrics();
        if m.value(name, labels) == want {
            return;
        }
        if Instant::now() > deadline {
            panic!(
                "{name}{labels:?} never reached {want} in {seconds} s\n{}",
                m.0
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// inotify IN_OPEN events on the files of one directory.
pub struct OpenWatch {
    fd: OwnedFd,
}

impl OpenWatch {
    #[track_caller]
    pub fn new(dir: &Path) -> Self {
        // SAFETY: plain libc calls; the fd is owned at once.
        let raw = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            raw >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let path = CString::new(dir.to_str().unwrap()).unwrap();
        // SAFETY: valid fd and NUL-terminated path.
        let wd = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), libc::IN_OPEN) };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        Self { fd }
    }

    /// Opens of `name` since the last call (events for other names are dropped).
    pub fn opened(&self, name: &str) -> usize {
        let mut count = 0;
        let mut buf = vec![0u8; 65536];
        for _ in 0..1000 {
            // SAFETY: reading into a buffer we own.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let mut at = 0usize;
            let header = size_of::<libc::inotify_event>();
            while at + header <= n as usize {
                // SAFETY: the kernel wrote a whole event at `at`; read_unaligned copes
                // with the byte buffer's alignment.
                let ev: libc::inotify_event =
                    unsafe { std::ptr::read_unaligned(buf[at..].as_ptr().cast()) };
                let raw_name = &buf[at + header..at + header + ev.len as usize];
                let end = raw_name
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(raw_name.len());
                if &raw_name[..end] == name.as_bytes() {
                    count += 1;
                }
                at += header + ev.len as usize;
            }
        }
        count
    }
}

/// An RFC 7440 client: RRQ with blksize and windowsize, ACK 0 to the OACK, an ACK per
/// window (or at a gap), until the short last block.
#[track_caller]
pub fn windowed_get(s: &UdpSocket, name: &str, blksize: usize, window: u16) -> Vec<u8> {
    let (b, w) = (blksize.to_string(), window.to_string());
    s.send_to(
        &rrq(name.as_bytes(), &[("blksize", &b), ("windowsize", &w)]),
        SERVER,
    )
    .unwrap();
    let (p, server) = recv(s);
    assert_eq!(p, oack(&[("blksize", &b), ("windowsize", &w)]), "OACK");
    s.send_to(b"\0\x04\0\0", server).unwrap();
    let mut data = Vec::new();
    let (mut expected, mut in_window) = (1u16, 0u16);
    for _ in 0..1_000_000 {
        let (p, from) = recv(s);
        assert_eq!(from, server, "DATA from the transfer port");
        assert_eq!(&p[..2], b"\0\x03", "DATA: {p:?}");
        let block = u16::from_be_bytes([p[2], p[3]]);
        if block != expected {
            // A gap or a repeat: acknowledge what we have; the server resumes after it.
            s.send_to(
                &[
                    0,
                    4,
                    (expected - 1).to_be_bytes()[0],
                    (expected - 1).to_be_bytes()[1],
                ],
                server,
            )
            .unwrap();
            in_window = 0;
            continue;
        }
        data.extend_from_slice(&p[4..]);
        let last = p.len() - 4 < blksize;
        in_window += 1;
        if in_window == window || last {
            let ack = [&b"\0\x04"[..], &expected.to_be_bytes()].concat();
            s.send_to(&ack, server).unwrap();
            in_window = 0;
        }
        expected = expected.wrapping_add(1);
        if last {
            return data;
        }
    }
    panic!("windowed transfer did not end");
}
