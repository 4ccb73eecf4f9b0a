//! The XDP/TC guard in netns labs: per-client rate limits and malformed drops on the LAN
//! (what reaches the kernel's UDP stack is counted independently of the daemon), monitor
//! mode, nothing provisioning-related in or out of a second "wan" interface even for a
//! socket listening there, and a foreign DHCP server (dnsmasq) reported within a second.
use std::{
    net::UdpSocket,
    os::fd::FromRawFd as _,
    process::Command,
    thread::sleep,
    time::{Duration, Instant},
};

use gb10_lab::{
    Lab, Netns, RawSender, format_mac,
    frames::{self, End},
    require_root, require_tool, run, wait_until,
};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");

/// A DHCPREQUEST unicast to the server (a renewing client), from `chaddr`.
fn unicast_request(server_mac: [u8; 6], chaddr: [u8; 6], xid: u32) -> Vec<u8> {
    let payload = frames::dhcp_payload(chaddr, xid, 3, &[]);
    frames::udp_frame(
        End::new(chaddr, [198, 18, 0, 2], 68),
        End::new(server_mac, [198, 18, 0, 1], 67),
        &[],
        &payload,
    )
}

/// Sends `n` unicast DHCP requests from one client to the daemon; returns how many
/// reached the server's UDP stack.
fn flood_one_client(lab: &Lab, chaddr: [u8; 6], n: u32) -> u64 {
    let server_mac = lab.server_mac();
    let sender = RawSender::open(&lab.client, &lab.client_if);
    let before = lab.server.udp_reached();
    for i in 0..n {
        sender.send(&unicast_request(server_mac, chaddr, i));
    }
    sleep(Duration::from_millis(300));
    lab.server.udp_reached() - before
}

#[test]
fn enforce_rate_limits_one_client_and_counts_it() {
    if !require_root("enforce_rate_limits_one_client_and_counts_it") {
        return;
    }
    let lab = Lab::new("grat");
    let _daemon = lab.start_daemon(
        BIN,
        &[
            "--xdp",
            "required",
            "--guard",
            "enforce",
            "--guard-client-rate",
            "5",
            "--guard-client-burst",
            "10",
        ],
    );
    let chaddr = [0x02, 0x47, 0, 0, 0, 0x01];
    let n = 200;
    let reached = flood_one_client(&lab, chaddr, n);
    let m = lab.metrics();
    let limited = m.value(
        "gb10_client_rate_limited_total",
        &[("mac", &format_mac(&chaddr))],
    );
    eprintln!("{n} requests from one client: {reached} reached the stack, {limited} limited");
    // The burst of 10 plus what 5/s refills while the 200 frames go out.
    assert!((10..=13).contains(&reached), "reached {reached}\n{}", m.0);
    assert_eq!(
        reached as f64 + limited,
        f64::from(n),
        "every request either passed or was limited"
    );
    assert_eq!(m.value("gb10_xdp_rate_limited_total", &[]), limited);
    assert_eq!(m.value("gb10_guard_mode", &[("mode", "enforce")]), 1.0);
}

#[test]
fn monitor_counts_what_enforce_would_drop_and_drops_nothing() {
    if !require_root("monitor_counts_what_enforce_would_drop_and_drops_nothing") {
        return;
    }
    let lab = Lab::new("gmon");
    let _daemon = lab.start_daemon(
        BIN,
        &[
            "--xdp",
            "required",
            "--guard",
            "monitor",
            "--guard-client-rate",
            "5",
            "--guard-client-burst",
            "10",
        ],
    );
    let chaddr = [0x02, 0x47, 0, 0, 0, 0x02];
    let reached = flood_one_client(&lab, chaddr, 200);
    let m = lab.metrics();
    let limited = m.value(
        "gb10_client_rate_limited_total",
        &[("mac", &format_mac(&chaddr))],
    );
    assert_eq!(reached, 200, "monitor mode dropped something");
    assert!(
        (187.0..=190.0).contains(&limited),
        "would-drop count {limited}"
    );
    assert_eq!(m.value("gb10_guard_mode", &[("mode", "monitor")]), 1.0);
}

#[test]
fn inventory_hosts_get_their_own_allowance() {
    if !require_root("inventory_hosts_get_their_own_allowance") {
        return;
    }
    let lab = Lab::new("gknw");
    let known = [0x02, 0x47, 0, 0, 0, 0x03];
    gb10_lab::write_file(
        &lab.dir.join("data/inventory.toml"),
        &format!(
            "[[hosts]]\nmac = \"{}\"\nhostname = \"known-1\"\n",
            format_mac(&known)
        ),
    );
    let _daemon = lab.start_daemon(
        BIN,
        &[
            "--xdp",
            "required",
            "--guard",
            "enforce",
            "--guard-client-rate",
            "5",
            "--guard-client-burst",
            "10",
            "--guard-known-rate",
            "5",
            "--guard-known-burst",
            "100",
        ],
    );
    // The allowance is written by the guard task shortly after start.
    sleep(Duration::from_millis(600));
    let reached = flood_one_client(&lab, known, 80);
    assert_eq!(
        reached, 80,
        "an inventory host within its own burst of 100 was limited"
    );
}

#[test]
fn malformed_frames_to_our_ports_are_dropped_before_the_stack() {
    if !require_root("malformed_frames_to_our_ports_are_dropped_before_the_stack") {
        return;
    }
    let lab = Lab::new("gbad");
    let _daemon = lab.start_daemon(BIN, &["--xdp", "required", "--guard", "enforce"]);
    let mac = [0x02, 0x47, 0, 0, 0, 0x04];
    let server_mac = lab.server_mac();
    let to_server = End::new(server_mac, [198, 18, 0, 1], 67);
    let from = End::new(mac, [198, 18, 0, 2], 68);
    // Well-formed IP/UDP aimed at our DHCP port, with DHCP payloads that lie.
    let short = frames::udp_frame(from, to_server, &[], &[1u8; 100]);
    let mut bad_cookie = frames::dhcp_payload(mac, 1, 1, &[]);
    bad_cookie[236] = 0;
    let bad_cookie = frames::udp_frame(from, to_server, &[], &bad_cookie);
    let tftp_short = frames::udp_frame(
        from,
        End {
            port: 69,
            ..to_server
        },
        &[],
        &[0, 1],
    );
    let sender = RawSender::open(&lab.client, &lab.client_if);
    let before = lab.server.udp_reached();
    for f in [&short, &bad_cookie, &tftp_short] {
        sender.send(f);
    }
    sleep(Duration::from_millis(300));
    assert_eq!(
        lab.server.udp_reached() - before,
        0,
        "a malformed frame reached the stack"
    );
    let m = lab.metrics();
    assert_eq!(
        m.value("gb10_xdp_malformed_dropped_total", &[]),
        3.0,
        "{}",
        m.0
    );
    assert_eq!(
        m.value("gb10_client_malformed_total", &[("mac", &format_mac(&mac))]),
        3.0
    );
    // A well-formed request from the same client still gets through.
    sender.send(&unicast_request(server_mac, mac, 9));
    sleep(Duration::from_millis(200));
    assert_eq!(lab.server.udp_reached() - before, 1);
}

/// A second interface on the server, "wan", with its own client namespace.
struct Wan {
    ns: Netns,
    server_if: String,
    client_if: String,
}

impl Wan {
    /// The wan interface, then the daemon with the guard in `mode`, once the guard is
    /// attached to wan.
    fn with_daemon(lab: &Lab, mode: &str) -> (Self, gb10_lab::Daemon) {
        let wan = Self::new(lab);
        let daemon = lab.start_daemon(BIN, &["--xdp", "required", "--guard", mode]);
        let attached = wait_until(Duration::from_secs(6), || {
            let m = lab.metrics();
            m.value("gb10_guard_attached", &[("iface", &wan.server_if)]) == 1.0
        });
        assert!(
            attached.is_some(),
            "guard not attached to {}\n{}",
            wan.server_if,
            daemon.log()
        );
        (wan, daemon)
    }

    fn new(lab: &Lab) -> Self {
        let ns = Netns::new(format!("gb10-wan-{}", lab.id));
        let (server_if, client_if) = (format!("gw{}", lab.id), format!("gv{}", lab.id));
        run(Command::new("ip").args([
            "link", "add", &server_if, "type", "veth", "peer", "name", &client_if,
        ]));
        run(Command::new("ip").args(["link", "set", &server_if, "netns", &lab.server.name]));
        run(Command::new("ip").args(["link", "set", &client_if, "netns", &ns.name]));
        lab.server
            .ip(&["addr", "add", "198.19.0.1/24", "dev", &server_if]);
        lab.server.ip(&["link", "set", &server_if, "up"]);
        ns.ip(&["addr", "add", "198.19.0.2/24", "dev", &client_if]);
        ns.ip(&["link", "set", &client_if, "up"]);
        Self {
            ns,
            server_if,
            client_if,
        }
    }
}

/// A UDP socket in `ns` on 0.0.0.0:`port`, bound to `iface` (as a server that listened
/// on the wrong interface would be), non-blocking.
/// Binds `0.0.0.0` (broadcasts reach it) unless `ip` is given.
fn listen_on(ns: &Netns, iface: &str, port: u16) -> UdpSocket {
    listen_on_at(ns, iface, [0; 4], port)
}

/// As [`listen_on`], bound to `ip`: the daemon holds `198.18.0.1:69` without
/// SO_REUSEADDR, so a wildcard listener on 69 would clash with it.
fn listen_on_at(ns: &Netns, iface: &str, ip: [u8; 4], port: u16) -> UdpSocket {
    let iface = iface.to_owned();
    ns.enter(move || {
        // Bound to the device before bind(), as the daemon's DHCP socket is: two sockets
        // on 0.0.0.0:67 for different devices then coexist.
        // SAFETY: a fresh socket, owned right away; setsockopt/bind on memory we own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let sock = UdpSocket::from_raw_fd(fd);
            let name = std::ffi::CString::new(iface).unwrap();
            let on: libc::c_int = 1;
            for (opt, val, len) in [
                (
                    libc::SO_BINDTODEVICE,
                    name.as_ptr().cast(),
                    name.as_bytes_with_nul().len(),
                ),
                (
                    libc::SO_REUSEADDR,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>(),
                ),
                (
                    libc::SO_BROADCAST,
                    (&raw const on).cast(),
                    size_of::<libc::c_int>(),
                ),
            ] {
                let rc = libc::setsockopt(fd, libc::SOL_SOCKET, opt, val, len as u32);
                assert_eq!(
                    rc,
                    0,
                    "setsockopt {opt}: {}",
                    std::io::Error::last_os_error()
                );
            }
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: port.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(ip),
                },
                sin_zero: [0; 8],
            };
            let rc = libc::bind(
                fd,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            );
            assert_eq!(rc, 0, "bind :{port}: {}", std::io::Error::last_os_error());
            sock
        }
    })
}

fn drain(sock: &UdpSocket) -> usize {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    while sock.recv_from(&mut buf).is_ok() {
        n += 1;
    }
    n
}

/// Sends provisioning requests into the wan interface and provisioning replies out of it;
/// returns (requests a listener on wan received, replies the wan client received).
fn cross_wan(lab: &Lab, wan: &Wan) -> (usize, usize) {
    // DHCP on the wildcard (the DISCOVER is a broadcast), the unicast ports on wan's
    // own address, all bound to the wan device as a misconfigured server's would be.
    let listeners = [
        listen_on(&lab.server, &wan.server_if, 67),
        listen_on_at(&lab.server, &wan.server_if, [198, 19, 0, 1], 4011),
        listen_on_at(&lab.server, &wan.server_if, [198, 19, 0, 1], 69),
    ];
    let wan_client = listen_on(&wan.ns, &wan.client_if, 68);
    let wan_client_tftp = listen_on(&wan.ns, &wan.client_if, 41_069);
    // In: a broadcast DISCOVER, a 4011 REQUEST and a TFTP RRQ from the wan side.
    let mac = wan.ns.mac(&wan.client_if);
    let server_mac = lab.server.mac(&wan.server_if);
    let sender = RawSender::open(&wan.ns, &wan.client_if);
    sender.send(&frames::dhcp_discover(mac, 1));
    let proxy_req = frames::dhcp_payload(mac, 2, 3, &[(60, b"PXEClient:Arch:00007:UNDI:003000")]);
    sender.send(&frames::udp_frame(
        End::new(mac, [198, 19, 0, 2], 68),
        End::new(server_mac, [198, 19, 0, 1], 4011),
        &[],
        &proxy_req,
    ));
    sender.send(&frames::tftp_rrq(
        End::new(mac, [198, 19, 0, 2], 41_069),
        End::new(server_mac, [198, 19, 0, 1], 69),
        "shimx64.efi",
    ));
    // Out: a DHCP reply and a TFTP DATA packet leaving through wan (sent as frames, so
    // they take the interface's egress path like any socket's would).
    let wan_mac = wan.ns.mac(&wan.client_if);
    let out = RawSender::open(&lab.server, &wan.server_if);
    let offer = frames::dhcp_payload([2, 0, 0, 0, 0, 9], 3, 2, &[]);
    let (us, them) = (
        End::new(server_mac, [198, 19, 0, 1], 67),
        End::new(wan_mac, [198, 19, 0, 2], 68),
    );
    // ENOBUFS when TC drops it: counted below either way.
    let _ = out.try_send(&frames::udp_frame(us, them, &[], &offer));
    let _ = out.try_send(&frames::udp_frame(
        End { port: 69, ..us },
        End {
            port: 41_069,
            ..them
        },
        &[],
        &[0, 3, 0, 1, b'x'],
    ));
    sleep(Duration::from_millis(300));
    let got_in: usize = listeners.iter().map(drain).sum();
    let got_out = drain(&wan_client) + drain(&wan_client_tftp);
    (got_in, got_out)
}

#[test]
fn nothing_provisioning_crosses_a_guarded_interface() {
    if !require_root("nothing_provisioning_crosses_a_guarded_interface") {
        return;
    }
    let lab = Lab::new("gwan");
    let (wan, _daemon) = Wan::with_daemon(&lab, "enforce");
    assert!(
        lab.metrics()
            .get("gb10_guard_attached", &[("iface", &lab.server_if)])
            .is_none(),
        "guard on the LAN interface"
    );
    let (got_in, got_out) = cross_wan(&lab, &wan);
    let m = lab.metrics();
    let counted = |dir: &str| {
        m.value(
            "gb10_guard_packets_total",
            &[("iface", &wan.server_if), ("direction", dir)],
        )
    };
    assert_eq!(
        (got_in, got_out),
        (0, 0),
        "provisioning traffic crossed wan\n{}",
        m.0
    );
    assert_eq!(counted("in"), 3.0, "{}", m.0);
    assert_eq!(counted("out"), 2.0, "{}", m.0);
    // Other traffic on wan is untouched.
    let other = listen_on(&lab.server, &wan.server_if, 5_000);
    let mac = wan.ns.mac(&wan.client_if);
    let server_mac = lab.server.mac(&wan.server_if);
    RawSender::open(&wan.ns, &wan.client_if).send(&frames::udp_frame(
        End::new(mac, [198, 19, 0, 2], 5_001),
        End::new(server_mac, [198, 19, 0, 1], 5_000),
        &[],
        b"not provisioning",
    ));
    sleep(Duration::from_millis(200));
    assert_eq!(drain(&other), 1, "the guard dropped unrelated traffic");
}

#[test]
fn monitor_mode_lets_wan_traffic_through_and_counts_it() {
    if !require_root("monitor_mode_lets_wan_traffic_through_and_counts_it") {
        return;
    }
    let lab = Lab::new("gwmn");
    let (wan, _daemon) = Wan::with_daemon(&lab, "monitor");
    // The same crossing reaches the listeners: so it is the guard that stops it in enforce.
    let (got_in, got_out) = cross_wan(&lab, &wan);
    assert_eq!((got_in, got_out), (3, 2));
    let m = lab.metrics();
    assert_eq!(
        m.value(
            "gb10_guard_packets_total",
            &[("iface", &wan.server_if), ("direction", "in")]
        ),
        3.0
    );
}

#[test]
fn a_foreign_dhcp_server_is_reported_within_a_second() {
    let name = "a_foreign_dhcp_server_is_reported_within_a_second";
    if !require_root(name) || !require_tool(name, "dnsmasq", "dnsmasq-base") {
        return;
    }
    let lab = Lab::new("grog");
    let daemon = lab.start_daemon(BIN, &["--xdp", "required"]);
    let rogue_mac = format_mac(&lab.client_mac());
    let _rogue = lab.client.dnsmasq_dhcp(
        &lab.client_if,
        "198.18.0.50,198.18.0.60,255.255.255.0,10m",
        &lab.dir,
        &[],
    );
    sleep(Duration::from_millis(300));
    // Any client's DISCOVER makes the rogue answer; its OFFER crosses the LAN interface.
    let start = Instant::now();
    let sender = RawSender::open(&lab.server, &lab.server_if);
    sender.send(&frames::dhcp_discover([0x02, 0x47, 0, 0, 0, 0x05], 77));
    let labels = [
        ("mac", rogue_mac.as_str()),
        ("ip", "198.18.0.2"),
        ("role", "rogue"),
    ];
    let took = wait_until(Duration::from_secs(3), || {
        lab.metrics()
            .value("gb10_dhcp_foreign_server_packets_total", &labels)
            >= 1.0
    })
    .unwrap_or_else(|| panic!("rogue not reported\n{}\n{}", lab.metrics().0, daemon.log()));
    let logged = wait_until(Duration::from_secs(2), || {
        let log = daemon.log();
        log.contains("rogue DHCP server") && log.contains(&rogue_mac) && log.contains("198.18.0.2")
    });
    eprintln!(
        "rogue in /metrics {took:?}, logged {:?} after the first DISCOVER",
        logged.map(|_| start.elapsed())
    );
    assert!(took <= Duration::from_secs(1), "took {took:?}");
    assert!(
        start.elapsed() <= Duration::from_secs(2) && logged.is_some(),
        "{}",
        daemon.log()
    );
    assert_eq!(
        lab.metrics()
            .value("gb10_dhcp_foreign_servers", &[("role", "rogue")]),
        1.0
    );
    assert_eq!(
        daemon.log().matches("rogue DHCP server").count(),
        1,
        "logged once per server"
    );
}

#[test]
fn a_flood_of_random_macs_is_limited_and_the_known_client_still_gets_its_lease() {
    let name = "a_flood_of_random_macs_is_limited_and_the_known_client_still_gets_its_lease";
    if !require_root(name) || !require_tool(name, "dhclient", "isc-dhcp-client") {
        return;
    }
    let lab = Lab::bare("gfld");
    let legit = lab.client_mac();
    gb10_lab::write_file(
        &lab.dir.join("data/inventory.toml"),
        &format!(
            "[[hosts]]\nmac = \"{}\"\nhostname = \"legit-1\"\nip = \"198.18.0.50\"\n",
            format_mac(&legit)
        ),
    );
    let (rate, burst) = (500u64, 1000u64);
    let daemon = lab.start_daemon(
        BIN,
        &[
            "--xdp",
            "required",
            "--guard",
            "enforce",
            "--guard-global-rate",
            &rate.to_string(),
            "--guard-global-burst",
            &burst.to_string(),
        ],
    );
    // The guard task writes the inventory's allowance shortly after start.
    sleep(Duration::from_millis(600));
    let budget = gb10_lab::flood::Budget {
        frames: 3_000_000,
        time: Duration::from_secs(5),
    };
    let r = gb10_lab::flood::run(&lab, &daemon, budget);
    eprintln!(
        "flood: {} DISCOVERs in {:.1?} ({:.0}/s) from random MACs; limited {}; the daemon \
         processed {} DHCP messages and used {:.1} % of a core; legit client: {:?}",
        r.sent,
        r.elapsed,
        r.rate(),
        r.limited,
        r.daemon_messages,
        r.daemon_cpu * 100.0,
        r.leased
    );
    assert_eq!(
        r.leased.as_deref(),
        Some("198.18.0.50"),
        "the known client lost its lease\n{}",
        daemon.log()
    );
    assert!(r.sent > 10_000, "the generator sent only {}", r.sent);
    // What got through is bounded by the global bucket: burst + rate x duration (+ the
    // legitimate client's few), whatever the flood rate.
    let bound = burst as f64 + rate as f64 * r.elapsed.as_secs_f64() + 20.0;
    assert!(
        r.daemon_messages <= bound,
        "{} messages reached the daemon, bound {bound}",
        r.daemon_messages
    );
    assert!(
        r.limited >= r.sent as f64 - bound,
        "limited {} of {}",
        r.limited,
        r.sent
    );
}
