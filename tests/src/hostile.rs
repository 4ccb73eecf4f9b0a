//! Hostile LAN clients for the abuse labs: a flood of HTTP POSTs (heartbeats) over a few
//! keep-alive connections, as fast as the daemon answers, bounded in count and time.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::Netns;

/// How hard and how long to post.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    /// At most this many requests in total…
    pub requests: u64,
    /// …over this many connections at once…
    pub connections: usize,
    /// …and for at most this long.
    pub time: Duration,
}

/// What a flood saw: requests answered by status class, and how long it ran.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    pub sent: u64,
    /// 2xx answers.
    pub ok: u64,
    /// Other answers (4xx, 5xx).
    pub refused: u64,
    /// Connections that failed or closed under us (each is reopened).
    pub broken: u64,
    pub elapsed: Duration,
}

impl Tally {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-6)
    }
}

/// A running flood; [`Flood::stop`] ends it early, [`Flood::join`] waits for it.
pub struct Flood {
    stop: Arc<AtomicBool>,
    /// Requests started so far (over all connections).
    next: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<Tally>>,
    start: Instant,
}

impl Flood {
    /// Starts posting from namespace `ns` to `http://server{path}`: request `i` (counted
    /// over all connections) carries `body(i)` with `content_type`.
    pub fn start(
        ns: &Netns,
        server: SocketAddr,
        path: &str,
        content_type: &'static str,
        budget: Budget,
        body: impl Fn(u64) -> String + Send + Sync + 'static,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let next = Arc::new(AtomicU64::new(0));
        let body = Arc::new(body);
        let start = Instant::now();
        let threads = (0..budget.connections.max(1))
            .map(|_| {
                let (stop, next, body) = (stop.clone(), next.clone(), body.clone());
                let path = path.to_owned();
                ns.spawn(move || {
                    let mut tally = Tally::default();
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) && start.elapsed() < budget.time {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= budget.requests {
                            break;
                        }
                        let stream = match conn.take() {
                            Some(c) => c,
                            None => {
                                match TcpStream::connect_timeout(&server, Duration::from_secs(5)) {
                                    Ok(s) => {
                                        let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                                        let _ = s.set_nodelay(true);
                                        BufReader::new(s)
                                    }
                                    Err(_) => {
                                        tally.broken += 1;
                                        std::thread::sleep(Duration::from_millis(20));
                                        continue;
                                    }
                                }
                            }
                        };
                        tally.sent += 1;
                        match post(stream, server, &path, content_type, &body(i)) {
                            Ok((status, again)) => {
                                if (200..300).contains(&status) {
                                    tally.ok += 1;
                                } else {
                                    tally.refused += 1;
                                }
                                conn = again;
                            }
                            Err(_) => tally.broken += 1,
                        }
                    }
                    tally.elapsed = start.elapsed();
                    tally
                })
            })
            .collect();
        Self {
            stop,
            next,
            threads,
            start,
        }
    }

    /// Requests started so far.
    pub fn started(&self) -> u64 {
        self.next.load(Ordering::Relaxed)
    }

    /// Waits (at most `limit`) until `n` requests have started; whether they did.
    pub fn wait_started(&self, n: u64, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        while self.started() < n {
            if Instant::now() >= until {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    /// Ends the flood now; what it did.
    pub fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits until the budget is spent; what it did.
    pub fn join(self) -> Tally {
        let mut total = Tally::default();
        for t in self.threads {
            let t = t.join().expect("flood thread panicked");
            total.sent += t.sent;
            total.ok += t.ok;
            total.refused += t.refused;
            total.broken += t.broken;
        }
        total.elapsed = self.start.elapsed();
        total
    }
}

/// One POST on `conn`: the status, and the connection when the server keeps it open.
fn post(
    mut conn: BufReader<TcpStream>,
    server: SocketAddr,
    path: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<(u16, Option<BufReader<TcpStream>>)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {server}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let stream = conn.get_mut();
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())?;
    let mut line = String::new();
    conn.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        if conn.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            } else if k.eq_ignore_ascii_case("connection") {
                close = v.trim().eq_ignore_ascii_case("close");
            }
        }
    }
    let mut sink = vec![0u8; length];
    conn.read_exact(&mut sink)?;
    Ok((status, (!close).then_some(conn)))
}
