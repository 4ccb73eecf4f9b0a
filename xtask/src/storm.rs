//! `cargo xtask bench storm`: a rack powering on at once, against gb10-provision and
//! against dnsmasq (DHCP + TFTP) with nginx (HTTP, sendfile), reported side by side.
use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use gb10_lab::{
    Lab,
    storm::{self, Files, Plan, Report},
};

use crate::bench::{Server, gb10, reference, release_bin};

/// The HTTP port both stacks serve on (one at a time).
const HTTP_PORT: u16 = gb10_lab::HTTP_PORT;
/// Longest a storm may run; every machine still booting then counts as failed.
const DEADLINE: Duration = Duration::from_secs(300);

/// One storm against one stack: what the generator saw and what the servers spent.
struct Row {
    machines: usize,
    stack: &'static str,
    report: Report,
    server_cpu: f64,
    peak_rss: u64,
    /// What the reference's own logs say (status codes, ACKs), or the daemon's metrics.
    check: String,
}

/// Runs storms of each size in `sizes` against both stacks, gb10-provision first.
pub fn run(sizes: &[usize]) -> anyhow::Result<()> {
    let bin = release_bin("cargo xtask bench storm")?;
    println!(
        "storm: N machines power on at once, each as EDK2 + shim + GRUB boot: DHCP DISCOVER/REQUEST \
         (relayed, giaddr {}), TFTP shimaa64.efi 1 MiB and grubaa64.efi 2.5 MiB (tsize probe \
         aborted, then blksize 1468 windowsize 4), grub/grub.cfg (GRUB: blksize 1024), HTTP GET \
         10 MiB kernel + 40 MiB initrd (TFTP checked byte for byte, HTTP: length and first 64 KiB); server(s) on core 0, the generator \
         (one async thread) on core 1; machine load before: {}",
        storm::RELAY,
        loadavg()
    );
    println!(
        "{}",
        crate::bench::settings(&[
            RELAY_LIFT[0],
            RELAY_LIFT[1],
            RELAY_LIFT[2],
            RELAY_LIFT[3],
            "--tftp-max-sessions 2N (min 64)"
        ])
    );
    let mut rows = Vec::new();
    let mut grub_cfg: Option<Vec<u8>> = None;
    for &n in sizes {
        for stack in ["gb10-provision", "dnsmasq+nginx"] {
            let row = one(&bin, stack, n, &mut grub_cfg)?;
            print_row(&row);
            rows.push(row);
        }
    }
    println!("machine load after: {}", loadavg());
    println!();
    print_header();
    for row in &rows {
        print_row(row);
    }
    for pair in rows.chunks(2) {
        if let [ours, theirs] = pair {
            let per_boot = |r: &Row| r.server_cpu / r.report.completed().max(1) as f64;
            let p99 = match (ours.report.percentile(99.0), theirs.report.percentile(99.0)) {
                (Some(o), Some(t)) => format!(
                    "{:.2}x as long",
                    o.as_secs_f64() / t.as_secs_f64().max(1e-9)
                ),
                (Some(_), None) => "ours ends, theirs does not (over 1 % failed)".into(),
                (None, _) => "ours does not end (over 1 % failed)".into(),
            };
            println!(
                "{} machines: gb10-provision / dnsmasq+nginx = {:.2}x boots/s, p99 {p99}, \
                 {:.2}x the server CPU per boot, {:.2}x the peak RSS",
                ours.machines,
                ours.report.boots_per_second() / theirs.report.boots_per_second().max(1e-9),
                per_boot(ours) / per_boot(theirs).max(1e-9),
                ours.peak_rss as f64 / theirs.peak_rss.max(1) as f64,
            );
        }
    }
    for row in &rows {
        println!("{} x{}: {}", row.stack, row.machines, row.check);
        for (why, count) in &row.report.failures {
            println!("  failed {count}: {why}");
        }
    }
    Ok(())
}

fn print_header() {
    println!(
        "{:>5} {:<15} {:>6} {:>6} {:>7} {:>8} {:>7} {:>7} {:>17} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "N",
        "stack",
        "boots",
        "failed",
        "wall s",
        "boots/s",
        "p50 s",
        "p99 s",
        "p50 dhcp/tftp/http",
        "srv CPU",
        "ms/boot",
        "RSS MiB",
        "gen %",
        "retx"
    );
}

fn print_row(row: &Row) {
    let r = &row.report;
    let secs =
        |d: Option<Duration>| d.map_or("-".to_owned(), |d| format!("{:.2}", d.as_secs_f64()));
    println!(
        "{:>5} {:<15} {:>6} {:>6} {:>7.1} {:>8.1} {:>7} {:>7} {:>17} {:>8.2} {:>8.1} {:>8.1} {:>7.0} {:>7}",
        row.machines,
        row.stack,
        r.completed(),
        r.failed(),
        r.wall.as_secs_f64(),
        r.boots_per_second(),
        secs(r.percentile(50.0)),
        secs(r.percentile(99.0)),
        format!(
            "{:.2}/{:.2}/{:.2}",
            r.phase_median(|b| b.dhcp).as_secs_f64(),
            r.phase_median(|b| b.tftp).as_secs_f64(),
            r.phase_median(|b| b.http).as_secs_f64()
        ),
        row.server_cpu,
        row.server_cpu * 1000.0 / r.completed().max(1) as f64,
        row.peak_rss as f64 / (1 << 20) as f64,
        r.generator_cpu.as_secs_f64() * 100.0 / r.wall.as_secs_f64().max(1e-9),
        r.retransmits
    );
}

/// Behind a relay, every TFTP request arrives from the relay's MAC, on which the guard
/// keys its per-client bucket (20/s, burst 60): the relay, one load generator speaking
/// for N machines, gets the global budget for unknown clients instead (which stays on,
/// as does the rest of the guard).
const RELAY_LIFT: [&str; 4] = [
    "--guard-client-rate",
    "2500",
    "--guard-client-burst",
    "5000",
];

/// One storm of `n` machines against `stack`, in a lab of its own. gb10-provision's
/// `grub/grub.cfg` (rendered per request) is captured on its first run and served as a
/// file by the reference, so both answer the same bytes.
fn one(
    bin: &str,
    stack: &'static str,
    n: usize,
    grub_cfg: &mut Option<Vec<u8>>,
) -> anyhow::Result<Row> {
    let lab = Lab::new("bstorm");
    storm::route_relayed(&lab);
    let data = lab.dir.join("data");
    let mut files = Files::write(&data, grub_cfg.clone().unwrap_or_default());
    let range = storm::relay_range();
    let mut servers: Vec<Server> = Vec::new();
    let mut daemon = None;
    match stack {
        "gb10-provision" => {
            // Beyond the defaults, what a site expecting N machines at once sets, as
            // for dnsmasq: transfers at once raised to 2N (the default, 64, answers the
            // 65th request with TFTP ERROR "busy", and EDK2 takes an ERROR as a failed
            // boot; a machine briefly holds two, its aborted size probe, whose ERROR
            // the daemon has not read yet, and its read); and the relay's lift
            // ([`RELAY_LIFT`]).
            let sessions = (2 * n).max(64).to_string();
            let (d, pid) = gb10(
                &lab,
                bin,
                &[
                    "--dhcp-relay-ranges",
                    &range,
                    "--tftp-max-sessions",
                    &sessions,
                    RELAY_LIFT[0],
                    RELAY_LIFT[1],
                    RELAY_LIFT[2],
                    RELAY_LIFT[3],
                ],
            );
            daemon = Some(d);
            servers.push(Server {
                name: "gb10",
                _process: gb10_lab::Guard(std::process::Command::new("true").spawn()?),
                pid,
            });
        }
        _ => {
            let cfg = grub_cfg
                .as_deref()
                .context("the reference runs after gb10-provision, whose grub.cfg it serves")?;
            std::fs::create_dir_all(data.join("tftp/grub"))?;
            std::fs::write(data.join("tftp/grub/grub.cfg"), cfg)?;
            servers.push(dnsmasq(&lab, &data, n));
            servers.push(nginx(&lab, &data.join("www"), n)?);
        }
    }
    // Both stacks answer before the storm: one TFTP fetch of grub.cfg, one HTTP HEAD.
    let cfg = storm::tftp_fetch(&lab, "grub/grub.cfg").map_err(anyhow::Error::msg)?;
    if grub_cfg.is_none() {
        if !String::from_utf8_lossy(&cfg).contains("menuentry")
            && !String::from_utf8_lossy(&cfg).contains("configfile")
        {
            bail!(
                "grub.cfg from gb10-provision does not look like one:\n{}",
                String::from_utf8_lossy(&cfg)
            );
        }
        *grub_cfg = Some(cfg.clone());
    }
    files.grub_cfg.data = cfg.into();
    let (code, _) = lab.client.curl(
        &format!("http://{}:{HTTP_PORT}/boot/vmlinuz", lab.server_ip),
        5.0,
    );
    if code != 200 {
        bail!("{stack} does not serve /boot/vmlinuz over HTTP (status {code})");
    }
    let cpu0: f64 = servers
        .iter()
        .map(|s| gb10_lab::cpu_seconds_tree(s.pid))
        .sum();
    let plan = Plan {
        machines: n,
        server: lab.server_ip.parse()?,
        http_port: HTTP_PORT,
        boot_file: "shimaa64.efi".into(),
        files: Arc::new(files),
        deadline: DEADLINE,
        cpu: Some(1),
        check: storm::Check::Sample,
    };
    let report = storm::run(&lab, plan);
    let server_cpu = servers
        .iter()
        .map(|s| gb10_lab::cpu_seconds_tree(s.pid))
        .sum::<f64>()
        - cpu0;
    let peak_rss = servers.iter().map(|s| storm::peak_rss_tree(s.pid)).sum();
    let check = match &daemon {
        Some(_) => {
            let m = lab.metrics();
            format!(
                "daemon: {} TFTP transfers complete, {} DHCP ACKs sent, {} requests rate-limited by XDP; {}",
                m.0.lines()
                    .filter(|l| l.starts_with("gb10_tftp_transfers_total"))
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum::<f64>(),
                m.0.lines()
                    .filter(
                        |l| l.starts_with("gb10_dhcp_replies_total{") && l.contains("type=\"ack\"")
                    )
                    .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum::<f64>(),
                m.value("gb10_xdp_rate_limited_total", &[]),
                crate::bench::xdp_seen(&lab)
            )
        }
        None => reference_check(&lab.dir),
    };
    drop(servers);
    drop(daemon);
    Ok(Row {
        machines: n,
        stack,
        report,
        server_cpu,
        peak_rss,
        check,
    })
}

/// dnsmasq as a PXE site runs it for DHCP and TFTP: the relayed subnet's range, the boot
/// file, its TFTP server, logging as by default (to a file here: no syslog in the lab).
/// Beyond the defaults: `--tftp-max` (default 50 transfers at once) and
/// `--dhcp-lease-max` (default 1000) raised to the storm's size, as a site with that
/// many machines must; `--no-ping`, because the generator answers for every address of
/// the subnet and dnsmasq would find each one taken.
fn dnsmasq(lab: &Lab, data: &Path, n: usize) -> Server {
    let args: Vec<String> = [
        "--keep-in-foreground",
        "--port=0",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--user=root",
        "--bind-interfaces",
        "--no-ping",
        "--enable-tftp",
        "--dhcp-boot=shimaa64.efi",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        format!("--interface={}", lab.server_if),
        format!(
            "--dhcp-range={},{},255.255.0.0,1h",
            storm::POOL.0,
            storm::POOL.1
        ),
        format!(
            "--dhcp-leasefile={}",
            lab.dir.join("dnsmasq.leases").display()
        ),
        format!(
            "--log-facility={}",
            lab.dir.join("dnsmasq-events.log").display()
        ),
        format!("--tftp-root={}", data.join("tftp").display()),
        format!("--tftp-max={}", n.max(50)),
        format!("--dhcp-lease-max={}", (2 * n).max(1000)),
    ])
    .collect();
    reference(lab, "dnsmasq", "dnsmasq", &args, &[])
}

/// nginx with one worker, sendfile on, an access log (to check the status codes), and
/// room for every machine's connection.
fn nginx(lab: &Lab, www: &Path, n: usize) -> anyhow::Result<Server> {
    let log = format!("access_log {};", lab.dir.join("nginx-access.log").display());
    nginx_on(lab, www, HTTP_PORT, (n + 64).max(1024), &log)
}

/// nginx (one worker, sendfile, tcp_nopush) serving `www` on `port`, pinned to core 0.
fn nginx_on(
    lab: &Lab,
    www: &Path,
    port: u16,
    connections: usize,
    http: &str,
) -> anyhow::Result<Server> {
    let conf = crate::nginx::config_for(
        &lab.dir,
        &format!("{}:{port}", lab.server_ip),
        www,
        &format!("tcp_nopush on; {http}"),
        "",
        connections,
    )?;
    Ok(reference(
        lab,
        "nginx",
        "nginx",
        &["-c".into(), conf.display().to_string()],
        &[],
    ))
}

/// What dnsmasq's log and nginx's access log say happened.
fn reference_check(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("dnsmasq-events.log")).unwrap_or_default();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let access = std::fs::read_to_string(dir.join("nginx-access.log")).unwrap_or_default();
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    for line in access.lines() {
        // Combined format: the status follows the quoted request line.
        if let Some(status) = line
            .split('"')
            .nth(2)
            .and_then(|rest| rest.split_whitespace().next())
        {
            *statuses.entry(status.to_owned()).or_default() += 1;
        }
    }
    format!(
        "dnsmasq log: {} DHCPACK, {} TFTP sent, {} TFTP aborted by the client, {} TFTP failed; \
         nginx access log statuses: {statuses:?}",
        count("DHCPACK"),
        count(" sent "),
        count("aborted"),
        count("failed")
    )
}

/// /proc/loadavg's first three fields.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `cargo xtask bench image`: `clients` HTTP clients each pulling one 1 GiB image at
/// once from gb10-provision (defaults) and from nginx (one worker, sendfile), each alone
/// on core 0, the clients (one async thread) on core 1; aggregate MB/s. Both servers
/// spend their time in the kernel's sendfile and TCP paths, so one run of either swings
/// by a third between runs (16 and 64 clients, 2026-12-01): `rounds` rounds per count,
/// both servers back to back in each ([`crate::bench::round_order`]), the ratio the
/// median of the rounds'.
pub fn image(clients: &[usize], rounds: usize) -> anyhow::Result<()> {
    let bin = release_bin("cargo xtask bench image")?;
    let lab = Lab::new("bimage");
    let www = lab.dir.join("data/www");
    std::fs::create_dir_all(&www)?;
    // Each client from an address of its own, as machines pulling an image are.
    storm::route_relayed(&lab);
    let image: Arc<[u8]> = gb10_lab::pseudo_random(9, 1 << 30).into();
    std::fs::write(www.join("image.raw"), &image)?;
    let (_daemon, ours) = gb10(&lab, &bin, &[]);
    let nginx = nginx_on(&lab, &www, 8081, 1024, "access_log off;")?;
    println!(
        "image: N clients each GET one 1 GiB file at once (body discarded in the kernel after \
         its first 64 KiB are checked); each server alone on core 0, clients on core 1; \
         {rounds} rounds per N, both servers back to back in each (ours first in odd rounds, \
         nginx in even); machine load before: {}",
        loadavg()
    );
    println!(
        "{:>5} {:>4} {:<15} {:>9} {:>8} {:>8} {:>10} {:>11} {:>9}",
        "round",
        "N",
        "server",
        "complete",
        "wall s",
        "MB/s",
        "server CPU",
        "CPU ms/GiB",
        "client %"
    );
    let servers = [
        ("gb10-provision", gb10_lab::HTTP_PORT, ours),
        ("nginx", 8081, nginx.pid),
    ];
    let mut summary = Vec::new();
    for &n in clients {
        let (mut rate, mut cost) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            // (MB/s, CPU seconds per GiB) per side.
            let mut pair = [(0.0, 0.0); 2];
            for side in crate::bench::round_order(round) {
                let (name, port, pid) = servers[side];
                let cpu0 = gb10_lab::cpu_seconds_tree(pid);
                let url = storm::Url {
                    server: lab.server_ip.parse()?,
                    port,
                    path: "/image.raw".into(),
                };
                let r = storm::pull(
                    &lab,
                    url,
                    image.clone(),
                    n,
                    Some(1),
                    Duration::from_secs(300),
                    None,
                );
                let cpu = gb10_lab::cpu_seconds_tree(pid) - cpu0;
                let gib = r.bytes as f64 / f64::from(1u32 << 30);
                let per_gib = cpu / gib.max(1e-9);
                println!(
                    "{round:>5} {n:>4} {name:<15} {:>9} {:>8.2} {:>8.0} {:>9.0}% {:>11.0} {:>8.0}%",
                    r.complete,
                    r.wall.as_secs_f64(),
                    r.mb_per_s(),
                    cpu * 100.0 / r.wall.as_secs_f64(),
                    per_gib * 1000.0,
                    r.generator_cpu.as_secs_f64() * 100.0 / r.wall.as_secs_f64()
                );
                for (why, count) in &r.failures {
                    println!("      failed {count}: {why}");
                }
                pair[side] = (r.mb_per_s(), per_gib);
            }
            rate.push(pair[0].0 / pair[1].0.max(1e-9));
            cost.push(pair[0].1 / pair[1].1.max(1e-9));
        }
        let each: Vec<String> = rate.iter().map(|r| format!("{r:.2}")).collect();
        summary.push(format!(
            "{n} clients x 1 GiB: gb10-provision / nginx = {:.2}x aggregate MB/s (median of \
             {rounds} rounds: {}), {:.2}x CPU per GiB (median)",
            crate::bench::median(rate),
            each.join(", "),
            crate::bench::median(cost),
        ));
    }
    for line in summary {
        println!("{line}");
    }
    println!("machine load after: {}", loadavg());
    Ok(())
}
