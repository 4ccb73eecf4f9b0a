//! The LAN XDP program in a netns lab: exact per-client counts of raw DHCP/TFTP frames,
//! malformed frames counted without harm, attach to the LAN interface only, detach on
//! SIGTERM (also when started with the stop signals blocked), and the `--xdp` modes with
//! and without CAP_BPF.
use std::{os::unix::process::CommandExt as _, process::Command, thread::sleep, time::Duration};

use gb10_lab::{
    Lab, RawSender, format_mac,
    frames::{self, End},
    require_root, require_tool, run,
};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");

/// Interfaces in `ns` that carry an XDP program.
fn xdp_ifaces(ns: &gb10_lab::Netns) -> Vec<String> {
    let out = run(ns.cmd("ip").args(["-d", "-o", "link", "show"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("prog/xdp"))
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

#[test]
fn counts_dhcp_and_tftp_per_client_mac_exactly() {
    if !require_root("counts_dhcp_and_tftp_per_client_mac_exactly") {
        return;
    }
    let lab = Lab::new("xcnt");
    let mut daemon = lab.start_daemon(BIN, &["--xdp", "required"]);
    assert_eq!(lab.metrics().value("gb10_xdp_attached", &[]), 1.0);
    assert_eq!(
        xdp_ifaces(&lab.server),
        vec![lab.server_if.clone()],
        "attached to the LAN interface only"
    );
    assert!(xdp_ifaces(&lab.client).is_empty());

    let dhcp_mac = [0x02, 0x42, 0, 0, 0xd1, 0x01];
    let tftp_mac = [0x02, 0x42, 0, 0, 0x7f, 0x02];
    let server_mac = lab.server_mac();
    let (n, m) = (37u32, 23u32);
    let sender = RawSender::open(&lab.client, &lab.client_if);
    for i in 0..n {
        sender.send(&frames::dhcp_discover(dhcp_mac, 0x1000 + i));
    }
    for i in 0..m {
        sender.send(&frames::tftp_rrq(
            End::new(tftp_mac, [198, 18, 0, 2], 40_000 + i as u16),
            End::new(server_mac, [198, 18, 0, 1], 69),
            "pxelinux.0",
        ));
    }
    sleep(Duration::from_millis(300));
    let metrics = lab.metrics();
    let count = |mac: [u8; 6], kind: &str| {
        metrics.value(
            "gb10_client_packets_total",
            &[("mac", &format_mac(&mac)), ("kind", kind)],
        )
    };
    assert_eq!(count(dhcp_mac, "dhcp"), f64::from(n), "{}", metrics.0);
    assert_eq!(count(tftp_mac, "tftp"), f64::from(m), "{}", metrics.0);
    assert_eq!(count(dhcp_mac, "tftp"), 0.0);
    assert_eq!(count(tftp_mac, "dhcp"), 0.0);
    let dhcp_frame_len = frames::dhcp_discover(dhcp_mac, 0).len() as f64;
    assert_eq!(
        metrics.value(
            "gb10_client_bytes_total",
            &[("mac", &format_mac(&dhcp_mac)), ("kind", "dhcp")]
        ),
        f64::from(n) * dhcp_frame_len
    );
    assert!(
        metrics.value(
            "gb10_client_last_seen_seconds",
            &[("mac", &format_mac(&dhcp_mac))]
        ) > 1.7e9
    );
    assert!(metrics.value("gb10_xdp_frames_total", &[("kind", "dhcp")]) >= f64::from(n));

    let status = daemon.stop();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        daemon.log()
    );
    assert!(
        xdp_ifaces(&lab.server).is_empty(),
        "an XDP program is left on the interface"
    );
    assert!(daemon.log().contains("XDP program detached"));
}

/// A daemon started by a parent that blocked SIGTERM and SIGINT (signal masks survive
/// exec: `cargo xtask lab` blocks them for its own sigwait, and so can a supervisor)
/// still stops on SIGTERM and detaches its XDP program, instead of ignoring it until a
/// SIGKILL leaves no log line and skips the orderly shutdown.
#[test]
fn sigterm_stops_it_even_when_the_parent_blocked_it() {
    if !require_root("sigterm_stops_it_even_when_the_parent_blocked_it") {
        return;
    }
    let lab = Lab::new("xsig");
    let mut cmd = lab.server.cmd(BIN);
    // SAFETY: between fork and exec only async-signal-safe calls on the child's own mask.
    unsafe {
        cmd.pre_exec(|| {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut daemon = lab.spawn_daemon_with(cmd, &["--xdp", "required"]);
    if let Err(err) = daemon.wait_ready(&lab, Duration::from_secs(20)) {
        panic!("daemon did not become ready: {err}\n{}", daemon.log());
    }
    let status = daemon.stop();
    assert!(
        status.success(),
        "exit after SIGTERM: {status}\n{}",
        daemon.log()
    );
    assert!(daemon.log().contains("SIGTERM: shutting down"));
    assert!(
        xdp_ifaces(&lab.server).is_empty(),
        "an XDP program is left on the interface"
    );
}

#[test]
fn malformed_frames_are_counted_and_harmless() {
    if !require_root("malformed_frames_are_counted_and_harmless") {
        return;
    }
    let lab = Lab::new("xbad");
    let _daemon = lab.start_daemon(BIN, &["--xdp", "required"]);
    let mac = [0x02, 0x42, 0, 0, 0xba, 0xd0];
    let bad = frames::malformed(mac);
    let sender = RawSender::open(&lab.client, &lab.client_if);
    for frame in &bad {
        sender.send(frame);
    }
    // A frame with IPv4 options (IHL 6) is well-formed: counted as DHCP, not malformed.
    let payload = frames::dhcp_payload(mac, 9, 1, &[]);
    sender.send(&frames::udp_frame(
        frames::dhcp_client(mac),
        frames::DHCP_BROADCAST,
        &[1, 1, 1, 0],
        &payload,
    ));
    sleep(Duration::from_millis(300));
    let metrics = lab.metrics();
    let mac_s = format_mac(&mac);
    assert_eq!(
        metrics.value("gb10_client_malformed_total", &[("mac", &mac_s)]),
        bad.len() as f64,
        "{}",
        metrics.0
    );
    assert_eq!(
        metrics.value(
            "gb10_client_packets_total",
            &[("mac", &mac_s), ("kind", "dhcp")]
        ),
        1.0
    );
    assert!(metrics.value("gb10_xdp_malformed_total", &[]) >= bad.len() as f64);
    assert_eq!(lab.http("/healthz").0, 200, "daemon still serving");
}

#[test]
fn xdp_off_serves_metrics_without_the_program() {
    if !require_root("xdp_off_serves_metrics_without_the_program") {
        return;
    }
    let lab = Lab::new("xoff");
    let daemon = lab.start_daemon(BIN, &["--xdp", "off"]);
    let m = lab.metrics();
    assert_eq!(m.value("gb10_xdp_attached", &[]), 0.0);
    // Said plainly: without XDP nothing checks that a DHCP client is who it claims.
    assert_eq!(m.get("gb10_dhcp_identity_check", &[]), Some(0.0), "{}", m.0);
    assert!(xdp_ifaces(&lab.server).is_empty());
    let log = daemon.log();
    assert!(log.contains("XDP is off"), "{log}");
    assert!(log.contains("DHCP identity check off"), "{log}");
}

#[test]
fn guard_off_turns_the_identity_check_off_and_says_so() {
    if !require_root("guard_off_turns_the_identity_check_off_and_says_so") {
        return;
    }
    let lab = Lab::new("xgof");
    let daemon = lab.start_daemon(BIN, &["--xdp", "required", "--guard", "off"]);
    let m = lab.metrics();
    assert_eq!(m.value("gb10_xdp_attached", &[]), 1.0);
    assert_eq!(m.get("gb10_dhcp_identity_check", &[]), Some(0.0), "{}", m.0);
    assert!(
        daemon.log().contains("DHCP identity check off"),
        "{}",
        daemon.log()
    );
    // Forged frames pass and are not counted: nothing judges them.
    let sender = RawSender::open(&lab.client, &lab.client_if);
    for i in 0..5 {
        sender.send(&frames::forged_discover(
            [0x02, 0x42, 0, 0, 0xf0, 0x01],
            [0x02, 0x42, 0, 0, 0xf0, 0x02],
            i,
        ));
    }
    sleep(Duration::from_millis(300));
    assert_eq!(
        lab.metrics().value("gb10_xdp_identity_mismatch_total", &[]),
        0.0
    );
}

/// The daemon under setpriv with CAP_BPF, CAP_SYS_ADMIN and CAP_PERFMON removed.
fn without_bpf(lab: &Lab) -> Command {
    let mut cmd = lab.server.cmd("setpriv");
    cmd.args([
        "--bounding-set=-bpf,-sys_admin,-perfmon",
        "--inh-caps=-all",
        "--",
        BIN,
    ]);
    cmd
}

#[test]
fn without_cap_bpf_auto_serves_and_required_refuses() {
    if !require_root("without_cap_bpf_auto_serves_and_required_refuses")
        || !require_tool(
            "without_cap_bpf_auto_serves_and_required_refuses",
            "setpriv",
            "util-linux",
        )
    {
        return;
    }
    let lab = Lab::new("xcap");
    {
        let mut daemon = lab.spawn_daemon_with(without_bpf(&lab), &["--xdp", "auto"]);
        daemon
            .wait_ready(&lab, Duration::from_secs(20))
            .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
        let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid())).unwrap();
        let cap_eff = status.lines().find(|l| l.starts_with("CapEff:")).unwrap();
        let caps = u64::from_str_radix(cap_eff.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(caps & (1 << 39), 0, "CAP_BPF still effective: {cap_eff}");
        assert_eq!(lab.metrics().value("gb10_xdp_attached", &[]), 0.0);
        assert!(
            daemon.log().contains("XDP not attached"),
            "{}",
            daemon.log()
        );
        assert!(
            daemon.log().contains("CAP_BPF"),
            "the warning names the capability:\n{}",
            daemon.log()
        );
    }
    let mut daemon = lab.spawn_daemon_with(without_bpf(&lab), &["--xdp", "required"]);
    let status = daemon
        .wait_exit(Duration::from_secs(20))
        .expect("required without CAP_BPF must exit");
    assert!(!status.success());
    let log = daemon.log();
    assert!(
        log.contains("XDP is required") && log.contains("CAP_BPF"),
        "{log}"
    );
}
