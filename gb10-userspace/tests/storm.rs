//! A small boot storm against the daemon with its defaults (XDP attached, guard
//! enforce): machines booting at once through a relay as EDK2, shim and GRUB do (DHCP,
//! TFTP with the size probe and a window, GRUB's TFTP, HTTP kernel and initrd), and
//! every one of them must finish with every byte right. A correctness test, not a
//! timing: `cargo xtask bench storm` measures.
use std::{sync::Arc, time::Duration};

use gb10_lab::{
    Lab,
    storm::{self, Files, Plan},
};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");

/// Machines in the storm: enough that DHCP, TFTP and HTTP overlap for a while.
const MACHINES: usize = 50;

#[test]
fn storm_boots_every_machine_byte_identical() {
    let name = "storm_boots_every_machine_byte_identical";
    if !gb10_lab::require_root(name) || !gb10_lab::require_tool(name, "curl", "curl") {
        return;
    }
    let lab = Lab::new("storm");
    storm::route_relayed(&lab);
    let data = lab.dir.join("data");
    let mut files = Files::write(&data, Vec::new());
    // Defaults but for the relayed subnet's pool. Nothing about the guard: every TFTP
    // request of the storm arrives from the relay's MAC and shares its per-client
    // allowance (20/s, burst 60), so some wait for EDK2's retransmit; they must still
    // all get through.
    let daemon = lab.start_daemon(BIN, &["--dhcp-relay-ranges", &storm::relay_range()]);
    let m = lab.metrics();
    assert_eq!(m.value("gb10_xdp_attached", &[]), 1.0, "XDP is a default");

    // The daemon renders grub.cfg per request; what it answers one client, it must
    // answer each machine of the storm.
    let cfg = storm::tftp_fetch(&lab, "grub/grub.cfg")
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    assert!(
        String::from_utf8_lossy(&cfg).contains("net_default_mac"),
        "grub.cfg over TFTP:\n{}\n{}",
        String::from_utf8_lossy(&cfg),
        daemon.log()
    );
    files.grub_cfg.data = cfg.into();
    let per_boot = files.bytes_per_boot();

    let report = storm::run(
        &lab,
        Plan {
            machines: MACHINES,
            server: lab.server_ip.parse().unwrap(),
            http_port: gb10_lab::HTTP_PORT,
            boot_file: "shimaa64.efi".into(),
            files: Arc::new(files),
            deadline: Duration::from_secs(90),
            cpu: None,
            check: storm::Check::Every,
        },
    );
    let m = lab.metrics();
    let limited = m.value("gb10_xdp_rate_limited_total", &[]);
    eprintln!(
        "storm of {MACHINES}: {} boots in {:.1} s (p50 {:?}, p99 {:?}), {} retransmits, \
         {limited} requests rate-limited by the guard",
        report.completed(),
        report.wall.as_secs_f64(),
        report.percentile(50.0),
        report.percentile(99.0),
        report.retransmits
    );
    assert!(
        report.failures.is_empty() && report.completed() == MACHINES,
        "{} of {MACHINES} boots completed; failures: {:?}\n--- daemon log (tail) ---\n{}",
        report.completed(),
        report.failures,
        tail(&daemon.log(), 60)
    );
    // The daemon's own account agrees: a lease per machine, the bytes it sent.
    let leased: f64 =
        m.0.lines()
            .filter(|l| l.starts_with("gb10_dhcp_replies_total{") && l.contains("type=\"ack\""))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
    assert!(leased >= MACHINES as f64, "ACKs counted: {leased}\n{}", m.0);
    let tftp_bytes: f64 =
        m.0.lines()
            .filter(|l| l.starts_with("gb10_tftp_bytes_total{"))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
    assert!(
        tftp_bytes >= (MACHINES as u64 * (per_boot - (50 << 20))) as f64,
        "TFTP bytes counted: {tftp_bytes}"
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
