//! `cargo xtask bench`: measurements reported side by side, never asserted.
use std::time::Duration;

use anyhow::{Context as _, bail};
use gb10_lab::{Lab, flood, format_mac};

use crate::{cargo, exec, root};

/// The flood benchmark: the same bounded random-MAC DISCOVER flood with the guard in
/// enforce mode and off, one run, a release build; what the generator reached, whether
/// the known client got its lease, and the daemon's CPU.
pub fn flood() -> anyhow::Result<()> {
    let bin = release_bin("cargo xtask bench flood")?;
    let bin = bin.as_str();
    let budget = flood::Budget {
        frames: 5_000_000,
        time: Duration::from_secs(10),
    };
    println!(
        "flood: random-MAC DISCOVERs, at most {} frames or {:?} per run",
        budget.frames, budget.time
    );
    println!(
        "{:<8} {:>12} {:>10} {:>14} {:>12} {:>10} {:>16}",
        "guard", "sent", "rate/s", "limited", "to daemon", "CPU %", "known client"
    );
    let mut rows = Vec::new();
    for mode in ["enforce", "off"] {
        let lab = Lab::bare("bflood");
        gb10_lab::write_file(
            &lab.dir.join("data/inventory.toml"),
            &format!(
                "[[hosts]]\nmac = \"{}\"\nip = \"198.18.0.50\"\n",
                format_mac(&lab.client_mac())
            ),
        );
        let daemon = lab.start_daemon(bin, &["--xdp", "required", "--guard", mode]);
        std::thread::sleep(Duration::from_millis(600));
        let r = flood::run(&lab, &daemon, budget);
        println!(
            "{mode:<8} {:>12} {:>10.0} {:>14} {:>12} {:>10.1} {:>16}",
            r.sent,
            r.rate(),
            r.limited,
            r.daemon_messages,
            r.daemon_cpu * 100.0,
            r.leased.as_deref().unwrap_or("none")
        );
        rows.push(r);
    }
    if let [on, off] = &rows[..] {
        println!(
            "guard enforce vs off: daemon CPU {:.1} % vs {:.1} %, messages reaching the daemon {:.0} vs {:.0}",
            on.daemon_cpu * 100.0,
            off.daemon_cpu * 100.0,
            on.daemon_messages,
            off.daemon_messages
        );
    }
    Ok(())
}

/// `net.core.rmem_default` (and `rmem_max`, if below it) raised for a benchmark run,
/// restored when dropped. The kernel keeps one value for every network namespace (a
/// namespace's own copy is read-only), so the servers and the load generator all get
/// it: sockets that do not size their buffer themselves (dnsmasq's, Kea's, perfdhcp's)
/// take it; ours asks for its own either way.
pub(crate) struct ReceiveBuffers {
    saved: Vec<(&'static str, String)>,
}

const RMEM: [&str; 2] = [
    "/proc/sys/net/core/rmem_max",
    "/proc/sys/net/core/rmem_default",
];

impl ReceiveBuffers {
    pub(crate) fn raise(bytes: u64) -> anyhow::Result<Self> {
        let mut saved = Vec::new();
        for path in RMEM {
            let old = std::fs::read_to_string(path)
                .with_context(|| path.to_owned())?
                .trim()
                .to_owned();
            let keep_max =
                path.ends_with("rmem_max") && old.parse::<u64>().is_ok_and(|o| o >= bytes);
            if !keep_max {
                std::fs::write(path, bytes.to_string())
                    .with_context(|| format!("writing {path}"))?;
                saved.push((path, old));
            }
        }
        println!("receive buffers: net.core.rmem_default = {bytes} for this run (restored after)");
        Ok(Self { saved })
    }
}

impl Drop for ReceiveBuffers {
    fn drop(&mut self) {
        // rmem_default first: it may not exceed the old rmem_max.
        for (path, old) in self.saved.iter().rev() {
            if let Err(err) = std::fs::write(path, old) {
                eprintln!("restoring {path} to {old}: {err}");
            }
        }
    }
}

/// A server under test, started in the lab's server namespace pinned to core 0.
pub(crate) struct Server {
    pub(crate) name: &'static str,
    pub(crate) _process: gb10_lab::Guard,
    pub(crate) pid: u32,
}

/// Our release binary, pinned to core 0, serving the lab with `extra` flags.
pub(crate) fn gb10(lab: &Lab, bin: &str, extra: &[&str]) -> (gb10_lab::Daemon, u32) {
    let mut cmd = lab.server.cmd("taskset");
    cmd.args(["-c", "0", bin]);
    let mut daemon = lab.spawn_daemon_with(cmd, extra);
    if let Err(err) = daemon.wait_ready(lab, Duration::from_secs(20)) {
        panic!("gb10-provision did not start: {err}\n{}", daemon.log());
    }
    let pid = daemon.pid();
    (daemon, pid)
}

/// How our daemon runs in a benchmark: its defaults (XDP attached when the kernel allows
/// it, guard enforce), as users run it, plus `lifted` (flags that lift one guard limit a
/// single load generator cannot stay within, each for a reason the caller states).
pub(crate) fn settings(lifted: &[&str]) -> String {
    if lifted.is_empty() {
        "gb10-provision with its defaults (XDP auto, guard enforce)".to_owned()
    } else {
        format!(
            "gb10-provision with its defaults (XDP auto, guard enforce) except {}",
            lifted.join(" ")
        )
    }
}

/// The daemon's own word, from `/metrics`, on its XDP program after a run: attached or
/// not and the frames it saw, so a figure is known to come with the program in the path.
pub(crate) fn xdp_seen(lab: &Lab) -> String {
    let m = lab.metrics();
    let frames = m.value("gb10_xdp_frames_total", &[("kind", "all")]);
    // What the guard refused: a lift too small would show here as a cap on the figures.
    let limited = m.value("gb10_xdp_rate_limited_total", &[]);
    if m.value("gb10_xdp_attached", &[]) == 1.0 {
        format!(
            "XDP attached (gb10_xdp_attached 1), {frames:.0} frames seen by it, \
             {limited:.0} requests rate-limited"
        )
    } else {
        "XDP NOT attached (gb10_xdp_attached 0): not the default path, figures not comparable"
            .to_owned()
    }
}

/// A reference server, pinned to core 0.
pub(crate) fn reference(
    lab: &Lab,
    name: &'static str,
    program: &str,
    args: &[String],
    env: &[(&str, String)],
) -> Server {
    let mut cmd = lab.server.cmd("taskset");
    cmd.args(["-c", "0", program]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let log = std::fs::File::create(lab.dir.join(format!("{name}.log"))).expect("log");
    cmd.stdout(log.try_clone().expect("log")).stderr(log);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(800));
    Server {
        name,
        _process: gb10_lab::Guard(child),
        pid,
    }
}

/// The lab for the DHCP ladder: the LAN is 198.18.0.0/16, and perfdhcp speaks as a relay
/// from 198.19.0.2 on a relayed subnet, 198.19.0.0/16, that the servers reach over the
/// LAN link. A relay, because perfdhcp is one (it sets giaddr to its own address, and a
/// giaddr on the LAN's own subnet is refused: a LAN client could otherwise pick the
/// address its answer goes to); a subnet of its own, so every server hands out the same
/// relayed pool of 65,000 addresses, enough for every step of the ladder (the fastest
/// step that fits, 16,000/s for 3 s, takes 48,000).
fn big_lab(tag: &str) -> Lab {
    let mut lab = Lab::bare(tag);
    lab.server.ip(&["addr", "flush", "dev", &lab.server_if]);
    lab.server
        .ip(&["addr", "add", "198.18.0.1/16", "dev", &lab.server_if]);
    lab.server
        .ip(&["route", "add", "198.19.0.0/16", "dev", &lab.server_if]);
    lab.client
        .ip(&["addr", "add", "198.18.0.2/16", "dev", &lab.client_if]);
    lab.client
        .ip(&["addr", "add", &format!("{RELAY}/16"), "dev", &lab.client_if]);
    lab.prefix = 16;
    lab
}

/// perfdhcp's address, its giaddr.
const RELAY: &str = "198.19.0.2";
/// The relayed pool every server hands out.
const POOL: (&str, &str) = ("198.19.0.10", "198.19.255.250");

/// CPU seconds of every child this process has waited for, and theirs.
fn children_cpu() -> f64 {
    // SAFETY: getrusage writes the rusage we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &raw mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// One perfdhcp run at `rate` for `secs` from `clients` simulated clients: (DORA
/// completed per second, loss share, mean exchange latency in ms, perfdhcp's CPU in
/// cores: past ~8,000 exchanges a second it is the limit on this machine).
fn perfdhcp(lab: &Lab, rate: u32, secs: u32, clients: u32) -> (f64, f64, f64, f64) {
    // Nothing else is waited for meanwhile, so the children's CPU that grows is
    // perfdhcp's (with the `timeout` and `taskset` around it).
    let cpu0 = children_cpu();
    let t0 = std::time::Instant::now();
    let out = lab
        .client
        .cmd("taskset")
        .args([
            "-c", "1", "timeout", "60", "perfdhcp", "-4", "-l", RELAY, "-x", "e",
        ])
        .args([
            "-r",
            &rate.to_string(),
            "-p",
            &secs.to_string(),
            "-R",
            &clients.to_string(),
            "-W",
            "1000000",
        ])
        .arg(lab.server_ip)
        .output()
        .expect("perfdhcp (apt-get install kea-admin)");
    let generator = (children_cpu() - cpu0) / t0.elapsed().as_secs_f64().max(1e-9);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let stat = |key: &str| -> Vec<f64> {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .filter_map(|v| v.split_whitespace().next()?.parse().ok())
            .collect()
    };
    let sent = stat("sent packets:");
    let drops = stat("drops:");
    let delay = stat("avg delay:");
    let (Some(sent_do), Some(sent_ra)) = (sent.first(), sent.get(1)) else {
        return (0.0, 1.0, 0.0, generator);
    };
    let lost: f64 = drops.iter().sum();
    let completed = sent_ra - drops.get(1).copied().unwrap_or(0.0);
    let loss = if *sent_do > 0.0 {
        lost / (sent_do + sent_ra)
    } else {
        1.0
    };
    (
        completed / f64::from(secs),
        loss,
        delay.iter().sum(),
        generator,
    )
}

/// perfdhcp against gb10-provision, dnsmasq and kea-dhcp4 (memfile), each alone on core
/// 0, perfdhcp on core 1: the highest offered rate with < 1 % loss, its latency and the
/// server's CPU, as ratios to ours.
pub fn dhcp() -> anyhow::Result<()> {
    let bin = release_bin("cargo xtask bench dhcp")?;
    // ×2 up to 2,000/s, then finer (×1.25–1.5), where the servers part ways.
    let rates = [
        100u32, 250, 500, 1_000, 2_000, 3_000, 4_000, 5_000, 6_000, 8_000, 10_000, 12_000, 16_000,
        20_000,
    ];
    let secs = 3;
    // New clients (every DORA a new MAC, every ACK a new lease on disk), then a few
    // thousand clients coming back (every ACK a renewal, on disk too).
    for (workload, clients) in [("new clients", 1_000_000), ("returning clients", 4_000)] {
        println!(
            "DHCP, {workload} (perfdhcp -R {clients}): DORA exchanges/s, one server at a time on \
             core 0, perfdhcp on core 1, {secs} s per step; machine load {}",
            crate::storm::loadavg()
        );
        println!(
            "{} (0: no global budget for unknown clients; the per-client buckets stay)",
            settings(&GLOBAL_LIFT)
        );
        let results = dhcp_ladder(&bin, &rates, secs, clients)?;
        println!(
            "{:<10} {:>10} {:>12} {:>10} {:>12} {:>14}",
            "server", "best rate", "completed/s", "delay ms", "server CPU %", "perfdhcp CPU %"
        );
        for (name, best) in &results {
            println!(
                "{name:<10} {:>10} {:>12.0} {:>10.2} {:>12.0} {:>14.0}",
                best.0,
                best.1,
                best.2,
                best.3 * 100.0,
                best.4 * 100.0
            );
        }
        let ours = results[0].1.1.max(1.0);
        for (name, best) in &results[1..] {
            println!(
                "{workload}: gb10-provision / {name}: {:.2}x the completed rate",
                ours / best.1.max(1.0)
            );
        }
    }
    Ok(())
}

/// What the DHCP ladder lifts of our guard: its global budget for unknown clients
/// (2,500 requests/s, burst 5,000), which exists to stop exactly this, one generator
/// speaking for thousands of new machines a second, and would cap the ladder there
/// rather than measure the server. Every request still passes the XDP program and its
/// per-client buckets (perfdhcp's clients are relayed, so each chaddr has its own, and
/// none exceeds 20/s).
const GLOBAL_LIFT: [&str; 2] = ["--guard-global-rate", "0"];

/// The best step of each server: (offered rate, completed/s, delay ms, its CPU share,
/// perfdhcp's CPU share).
type Best = (u32, f64, f64, f64, f64);

/// The rate ladder for each server, stopping at the first step with 1 % loss or more.
/// Each step prints where datagrams were dropped: at the server's socket or at
/// perfdhcp's (whose receive buffer overflows when replies come in bursts).
fn dhcp_ladder(
    bin: &str,
    rates: &[u32],
    secs: u32,
    clients: u32,
) -> anyhow::Result<Vec<(&'static str, Best)>> {
    let mut results = Vec::new();
    for name in ["gb10", "dnsmasq", "kea"] {
        let mut best = (0u32, 0.0, 0.0, 0.0, 0.0);
        for &rate in rates {
            // A fresh server (and lease store) per step: every step starts from an empty pool.
            let lab = big_lab("bdhcp");
            let range = format!("198.19.0.0/16={}-{}", POOL.0, POOL.1);
            let (_daemon, server) = match name {
                "gb10" => {
                    let (d, pid) = gb10(
                        &lab,
                        bin,
                        &[
                            GLOBAL_LIFT[0],
                            GLOBAL_LIFT[1],
                            "--dhcp-range",
                            "198.18.0.100-198.18.0.200",
                            "--dhcp-relay-ranges",
                            &range,
                            "--lease-time",
                            "1h",
                        ],
                    );
                    (
                        Some(d),
                        Server {
                            name,
                            _process: gb10_lab::Guard(std::process::Command::new("true").spawn()?),
                            pid,
                        },
                    )
                }
                "dnsmasq" => (None, dnsmasq(&lab)),
                _ => (None, kea(&lab)?),
            };
            let drops = |lab: &Lab| (lab.server.udp_buffer_drops(), lab.client.udp_buffer_drops());
            let drops0 = drops(&lab);
            let cpu0 = gb10_lab::cpu_seconds_tree(server.pid);
            let t0 = std::time::Instant::now();
            let (done, loss, delay, generator) = perfdhcp(&lab, rate, secs, clients);
            let cpu = (gb10_lab::cpu_seconds_tree(server.pid) - cpu0) / t0.elapsed().as_secs_f64();
            let drops1 = drops(&lab);
            if name == "gb10" {
                eprintln!("  gb10     {}", xdp_seen(&lab));
            }
            eprintln!(
                "  {:<8} offered {rate:>6}/s: completed {done:>8.0}/s, loss {:.2} %, delay {delay:.2} ms, \
                 CPU {:.0} %, perfdhcp CPU {:.0} %, dropped at the server's socket {}, at \
                 perfdhcp's {}",
                server.name,
                loss * 100.0,
                cpu * 100.0,
                generator * 100.0,
                drops1.0 - drops0.0,
                drops1.1 - drops0.1
            );
            if loss < 0.01 {
                // Past a server's pace perfdhcp sends less than offered and completes
                // less with no loss: the best step is the most completed, not the last.
                if done > best.1 {
                    best = (rate, done, delay, cpu, generator);
                }
            } else {
                break;
            }
        }
        results.push((name, best));
    }
    Ok(results)
}

fn dnsmasq(lab: &Lab) -> Server {
    let args: Vec<String> = [
        "--keep-in-foreground",
        "--port=0",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--no-ping",
        "--dhcp-authoritative",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--dhcp-lease-max=200000",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--interface={}", lab.server_if),
        format!("--dhcp-range={},{},255.255.0.0,1h", POOL.0, POOL.1),
        format!(
            "--dhcp-leasefile={}",
            lab.dir.join("dnsmasq.leases").display()
        ),
    ])
    .collect();
    reference(lab, "dnsmasq", "dnsmasq", &args, &[])
}

fn kea(lab: &Lab) -> anyhow::Result<Server> {
    let conf = serde_json_like(lab);
    let path = lab.dir.join("kea-dhcp4.json");
    std::fs::write(&path, conf)?;
    let dir = lab.dir.display().to_string();
    Ok(reference(
        lab,
        "kea",
        "kea-dhcp4",
        &["-c".into(), path.display().to_string()],
        &[("KEA_PIDFILE_DIR", dir.clone()), ("KEA_LOCKFILE_DIR", dir)],
    ))
}

/// kea-dhcp4's configuration: memfile leases (persisted, as Kea runs by default; Kea does
/// not fsync them), the same pool as the others, raw sockets (Kea's default; `udp`, for
/// relayed-only traffic, measured the same here: 5,000/s new clients under 1 % loss).
fn serde_json_like(lab: &Lab) -> String {
    format!(
        r#"{{"Dhcp4": {{
  "interfaces-config": {{"interfaces": ["{iface}"], "dhcp-socket-type": "raw"}},
  "lease-database": {{"type": "memfile", "persist": true, "name": "{dir}/kea-leases4.csv", "lfc-interval": 0}},
  "valid-lifetime": 3600,
  "subnet4": [{{"id": 1, "subnet": "198.19.0.0/16", "pools": [{{"pool": "{start} - {end}"}}]}}],
  "loggers": [{{"name": "kea-dhcp4", "severity": "WARN", "output_options": [{{"output": "{dir}/kea.log"}}]}}]
}}}}"#,
        iface = lab.server_if,
        dir = lab.dir.display(),
        start = POOL.0,
        end = POOL.1
    )
}

/// wrk against gb10-provision and nginx (one worker, sendfile on) serving the same 1 KiB
/// and 30 MiB files, each server on core 0, wrk on core 1: `rounds` rounds per file, the
/// two servers back to back in each (order: [`round_order`]), so a drift of the machine
/// touches both sides of a round alike; the ratio printed is the median of the rounds'
/// ratios.
pub fn http(rounds: usize) -> anyhow::Result<()> {
    let bin = release_bin("cargo xtask bench http")?;
    let lab = Lab::new("bhttp");
    let www = lab.dir.join("data/www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("1k.bin"), vec![b'x'; 1024])?;
    let big: std::sync::Arc<[u8]> = (0..30 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(www.join("30m.bin"), &big)?;
    // The 30 MiB clients each from an address of their own.
    gb10_lab::storm::route_relayed(&lab);
    // Defaults: wrk's 16 connections from one address are within the per-address cap
    // (64), and the guard limits DHCP/TFTP requests only, so nothing is lifted.
    let (_daemon, ours) = gb10(&lab, &bin, &[]);
    let conf = crate::nginx::config(
        &lab.dir,
        &format!("{}:8081", lab.server_ip),
        &www,
        "tcp_nopush on; access_log off;",
        "",
    )?;
    let nginx = reference(
        &lab,
        "nginx",
        "nginx",
        &["-c".into(), conf.display().to_string()],
        &[],
    );
    println!(
        "HTTP: 1 KiB: wrk -t1 -c16 -d5s; 30 MiB: 16 clients, each GET after GET for 5 s, \
         bodies discarded in the kernel; clients on core 1, each server alone on core 0; \
         {rounds} rounds \
         per file, both servers back to back in each (ours first in odd rounds, nginx in \
         even); machine load {}",
        crate::storm::loadavg()
    );
    println!(
        "{}; nginx 1 worker, sendfile on, tcp_nopush on, access_log off",
        settings(&[])
    );
    println!(
        "{:<6} {:<10} {:<8} {:>12} {:>10} {:>8} {:>12} {:>10}",
        "round", "server", "file", "req/s", "MiB/s", "CPU %", "CPU µs/req", "client CPU %"
    );
    for file in ["1k.bin", "30m.bin"] {
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let servers = [
                ("gb10", gb10_lab::HTTP_PORT, ours),
                ("nginx", 8081, nginx.pid),
            ];
            let mut pair = [None, None];
            for side in round_order(round) {
                let (name, port, pid) = servers[side];
                let m = if file == "30m.bin" {
                    pull(&lab, port, file, big.clone(), pid)?
                } else {
                    wrk(
                        &lab,
                        &format!("http://{}:{port}/{file}", lab.server_ip),
                        pid,
                    )?
                };
                println!(
                    "{round:<6} {name:<10} {file:<8} {:>12.0} {:>10.1} {:>8.0} {:>12.1} {:>10.0}",
                    m.rps,
                    m.mbs,
                    m.cpu * 100.0,
                    m.cpu * 1e6 / m.rps.max(1.0),
                    m.wrk_cpu * 100.0
                );
                pair[side] = Some(m);
            }
            if let [Some(ours), Some(theirs)] = &pair {
                ratios.push((
                    ours.rps / theirs.rps.max(1.0),
                    (ours.cpu / ours.rps.max(1.0)) / (theirs.cpu / theirs.rps.max(1.0)).max(1e-12),
                ));
            }
        }
        let each: Vec<String> = ratios.iter().map(|(r, _)| format!("{r:.2}")).collect();
        println!(
            "{file}: gb10-provision / nginx = {:.2}x req/s (median of {rounds} rounds: {}), \
             {:.2}x CPU per request (median)",
            median(ratios.iter().map(|r| r.0).collect()),
            each.join(", "),
            median(ratios.iter().map(|r| r.1).collect()),
        );
    }
    println!("gb10-provision after the runs: {}", xdp_seen(&lab));
    Ok(())
}

/// Which side runs first in round `round` (from 1) of a side-by-side run, 0 being ours:
/// ours in odd rounds, the reference in even ones, so what drifts within a round (page
/// cache, where the veth's softirq lands, a process waking) favours neither side.
pub(crate) fn round_order(round: usize) -> [usize; 2] {
    if round % 2 == 1 { [0, 1] } else { [1, 0] }
}

/// The median of `v` (the upper one of an even count); 0 when empty.
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// One run: its rate, and the server's and the client's CPU (cores) meanwhile.
struct Wrk {
    rps: f64,
    /// MiB/s.
    mbs: f64,
    cpu: f64,
    wrk_cpu: f64,
}

/// 16 clients, each GET after GET of `file` (bytes `want`) for 5 s on a new connection,
/// the body discarded in the kernel after its first 64 KiB are checked, from core 1
/// against the server on `port` (process tree `pid`). wrk copies every byte to user
/// space: at 30 MiB it used its whole core while either server used a third of theirs,
/// so its figure was wrk's own.
fn pull(
    lab: &Lab,
    port: u16,
    file: &str,
    want: std::sync::Arc<[u8]>,
    pid: u32,
) -> anyhow::Result<Wrk> {
    let cpu0 = gb10_lab::cpu_seconds_tree(pid);
    let url = gb10_lab::storm::Url {
        server: lab.server_ip.parse()?,
        port,
        path: format!("/{file}"),
    };
    let r = gb10_lab::storm::pull(
        lab,
        url,
        want,
        16,
        Some(1),
        Duration::from_secs(30),
        Some(Duration::from_secs(5)),
    );
    let wall = r.wall.as_secs_f64().max(1e-9);
    let cpu = (gb10_lab::cpu_seconds_tree(pid) - cpu0) / wall;
    if !r.failures.is_empty() {
        bail!("{file} from port {port}: {:?}", r.failures);
    }
    Ok(Wrk {
        rps: r.complete as f64 / wall,
        mbs: r.bytes as f64 / wall / f64::from(1u32 << 20),
        cpu,
        wrk_cpu: r.generator_cpu.as_secs_f64() / wall,
    })
}

/// Runs wrk for 5 s against `url` (server process tree `pid`) from the client namespace.
fn wrk(lab: &Lab, url: &str, pid: u32) -> anyhow::Result<Wrk> {
    const SECONDS: f64 = 5.0;
    let cpu0 = gb10_lab::cpu_seconds_tree(pid);
    let child = lab
        .client
        .cmd("taskset")
        .args(["-c", "1", "wrk", "-t1", "-c16", "-d5s", url])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("wrk (apt-get install wrk)")?;
    // wrk's own CPU time (the generator must not be the limit, or both servers measure
    // the client): read from its /proc entry just before it exits.
    let wrk_pid = child.id();
    std::thread::sleep(Duration::from_secs_f64(SECONDS - 0.3));
    let wrk_cpu = gb10_lab::cpu_seconds_tree(wrk_pid) / (SECONDS - 0.3);
    let out = child.wait_with_output()?;
    let cpu = (gb10_lab::cpu_seconds_tree(pid) - cpu0) / SECONDS;
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    Ok(Wrk {
        rps: field("Requests/sec:").parse().unwrap_or(0.0),
        mbs: parse_rate(&field("Transfer/sec:")),
        cpu,
        wrk_cpu,
    })
}

/// wrk's `Transfer/sec:` value in MB/s.
fn parse_rate(text: &str) -> f64 {
    let (num, unit) = text.split_at(
        text.find(|c: char| c.is_ascii_alphabetic())
            .unwrap_or(text.len()),
    );
    let n: f64 = num.trim().parse().unwrap_or(0.0);
    match unit.trim() {
        "GB" => n * 1024.0,
        "KB" => n / 1024.0,
        "B" => n / 1024.0 / 1024.0,
        _ => n,
    }
}

/// Builds the release daemon; its path.
pub(crate) fn release_bin(what: &str) -> anyhow::Result<String> {
    if !gb10_lab::require_root(what) {
        bail!("benchmarks build network namespaces: run them as root");
    }
    exec(cargo().args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "gb10-userspace",
        "--bin",
        "gb10-provision",
    ]))?;
    let bin = root()
        .join("target/release/gb10-provision")
        .canonicalize()?;
    Ok(bin.to_str().context("non-UTF-8 path")?.to_owned())
}

/// TFTP: 1 MiB and 30 MiB, 1 and 8 concurrent atftp clients, blksize 1468 with and
/// without windowsize 8, against gb10-provision, tftpd-hpa, dnsmasq's TFTP and atftpd,
/// each server alone on core 0, the clients on core 1; wall time per case.
pub fn tftp() -> anyhow::Result<()> {
    let bin = release_bin("cargo xtask bench tftp")?;
    let atftpd = atftpd()?;
    let lab = Lab::new("btftp");
    let root = lab.dir.join("data/tftp");
    std::fs::create_dir_all(&root)?;
    for (name, size) in [("one.bin", 1usize << 20), ("thirty.bin", 30 << 20)] {
        let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join(name), data)?;
    }
    let root_s = root.display().to_string();
    let ip = lab.server_ip;
    let servers: Vec<(&'static str, Box<Starter<'_>>)> = vec![
        (
            "gb10",
            Box::new(|| {
                // Defaults: the guard rate-limits new transfers per client MAC (20/s,
                // burst 60) and the cases start at most 27 from the client's MAC, so
                // nothing is lifted; a transfer's ACKs are never limited.
                let (d, pid) = gb10(&lab, &bin, &[]);
                let placeholder = gb10_lab::Guard(std::process::Command::new("true").spawn()?);
                Ok((
                    Server {
                        name: "gb10",
                        _process: placeholder,
                        pid,
                    },
                    Some(d),
                ))
            }),
        ),
        (
            "tftpd-hpa",
            Box::new(|| {
                let args = ["-L", "-s", &root_s, "-a", &format!("{ip}:69"), "-B", "1468"]
                    .map(String::from);
                Ok((reference(&lab, "tftpd-hpa", "in.tftpd", &args, &[]), None))
            }),
        ),
        (
            "dnsmasq",
            Box::new(|| {
                let args = [
                    "--keep-in-foreground",
                    "--port=0",
                    "--enable-tftp",
                    "--bind-interfaces",
                    "--conf-file=/dev/null",
                    "--pid-file=",
                    "--user=root",
                ]
                .iter()
                .map(|s| s.to_string())
                .chain([
                    format!("--tftp-root={root_s}"),
                    format!("--listen-address={ip}"),
                ])
                .collect::<Vec<_>>();
                Ok((reference(&lab, "dnsmasq", "dnsmasq", &args, &[]), None))
            }),
        ),
        (
            "atftpd",
            Box::new(|| {
                let args = [
                    "--daemon",
                    "--no-fork",
                    "--user",
                    "root",
                    "--bind-address",
                    ip,
                    "--port",
                    "69",
                    "--logfile",
                    "/dev/null",
                    &root_s,
                ]
                .map(String::from);
                Ok((reference(&lab, "atftpd", &atftpd, &args, &[]), None))
            }),
        ),
    ];
    println!(
        "TFTP: wall time in ms (atftp clients on core 1, blksize 1468), each server alone on core 0; \
         machine load {}",
        crate::storm::loadavg()
    );
    println!("{}", settings(&[]));
    let cases = [
        ("one.bin", 1, false),
        ("one.bin", 8, false),
        ("thirty.bin", 1, false),
        ("thirty.bin", 8, false),
        ("thirty.bin", 1, true),
        ("thirty.bin", 8, true),
    ];
    print!("{:<11}", "server");
    for (file, n, window) in cases {
        print!(
            " {:>16}",
            format!(
                "{}x{}{}",
                n,
                if file == "one.bin" { "1M" } else { "30M" },
                if window { " w8" } else { "" }
            )
        );
    }
    println!();
    let mut table: Vec<(&str, Vec<Option<f64>>)> = Vec::new();
    for (name, start) in &servers {
        let (_server, daemon) = start()?;
        let mut row = Vec::new();
        for (file, n, window) in cases {
            row.push(fetch_all(&lab, file, n, window));
        }
        if daemon.is_some() {
            eprintln!("gb10-provision after its cases: {}", xdp_seen(&lab));
        }
        print!("{name:<11}");
        for ms in &row {
            print!(
                " {:>16}",
                ms.map_or("failed".to_owned(), |m| format!("{m:.0}"))
            );
        }
        println!();
        table.push((name, row));
    }
    for (name, row) in &table[1..] {
        let ratios: Vec<String> = table[0]
            .1
            .iter()
            .zip(row)
            .map(|(ours, theirs)| match (ours, theirs) {
                (Some(o), Some(t)) => format!("{:.2}x", t / o),
                _ => "-".into(),
            })
            .collect();
        println!(
            "speed of gb10-provision / {name} per case: {}",
            ratios.join(" ")
        );
    }
    Ok(())
}

/// Starts one server under test; the daemon handle when it is ours.
type Starter<'a> = dyn Fn() -> anyhow::Result<(Server, Option<gb10_lab::Daemon>)> + 'a;

/// `n` atftp clients fetching `file` at once; the wall time in ms, None if any failed or
/// got the wrong size.
fn fetch_all(lab: &Lab, file: &str, n: usize, window: bool) -> Option<f64> {
    let want = std::fs::metadata(lab.dir.join("data/tftp").join(file))
        .ok()?
        .len();
    let start = std::time::Instant::now();
    let children: Vec<_> = (0..n)
        .map(|i| {
            let out = lab.dir.join(format!("got-{i}"));
            let _ = std::fs::remove_file(&out);
            let mut cmd = lab.client.cmd("taskset");
            cmd.args([
                "-c", "1", "timeout", "120", "atftp", "--get", "-r", file, "-l",
            ])
            .arg(&out)
            .args(["--option", "blksize 1468"]);
            if window {
                cmd.args(["--option", "windowsize 8"]);
            }
            cmd.arg(lab.server_ip)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            (cmd.spawn().ok(), out)
        })
        .collect();
    let mut ok = true;
    for (child, out) in children {
        let done = child
            .and_then(|mut c| c.wait().ok())
            .is_some_and(|s| s.success());
        ok &= done && std::fs::metadata(&out).is_ok_and(|m| m.len() == want);
    }
    ok.then(|| start.elapsed().as_secs_f64() * 1000.0)
}

/// atftpd unpacked from Debian's package: it conflicts with tftpd-hpa as an installed
/// package, and the benchmark wants both.
fn atftpd() -> anyhow::Result<String> {
    let dir = root().join("target/tools/atftpd");
    let bin = dir.join("usr/sbin/atftpd");
    if !bin.is_file() {
        std::fs::create_dir_all(&dir)?;
        // Not through exec(): it runs in the workspace root, and the .deb belongs here.
        let status = std::process::Command::new("apt-get")
            .args(["download", "atftpd"])
            .current_dir(&dir)
            .status()
            .context("apt-get download atftpd")?;
        if !status.success() {
            bail!("apt-get download atftpd failed ({status})");
        }
        let deb = std::fs::read_dir(&dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .context("apt-get download atftpd left no .deb")?;
        exec(
            std::process::Command::new("dpkg-deb")
                .arg("-x")
                .arg(&deb)
                .arg(&dir),
        )?;
    }
    Ok(bin.to_str().context("non-UTF-8 path")?.to_owned())
}
