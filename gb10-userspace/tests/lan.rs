//! The live LAN address in netns labs: asserted in direct mode, waited for in proxy mode
//! (a real dhclient lease from a dnsmasq "site DHCP"), followed on change and on
//! interface recreation, and no socket on a wildcard address without the LAN device.
use std::{process::Command, time::Duration};

use gb10_lab::{Lab, require_root, require_tool, run, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");

fn addrs(lab: &Lab) -> String {
    let out = run(lab
        .server
        .cmd("ip")
        .args(["-4", "-o", "addr", "show", "dev", &lab.server_if]));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl 127.0.0.1:9180/healthz` inside the server namespace: the loopback health listener.
fn local_health(lab: &Lab) -> (u16, String) {
    lab.server.curl("http://127.0.0.1:9180/healthz", 2.0)
}

/// Every listening socket of `pid` in the server namespace, as `ss` prints its local
/// address (with `%dev` when bound to a device).
fn listeners(lab: &Lab, pid: u32) -> Vec<String> {
    let out = run(lab
        .server
        .cmd("ss")
        .args(["-H", "-l", "-n", "-t", "-u", "-p"]));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .collect()
}

#[test]
fn direct_mode_asserts_the_address_and_brings_the_link_up() {
    if !require_root("direct_mode_asserts_the_address_and_brings_the_link_up") {
        return;
    }
    let lab = Lab::new("ldir");
    lab.server.ip(&["addr", "flush", "dev", &lab.server_if]);
    lab.server
        .ip(&["addr", "add", "198.18.0.77/24", "dev", &lab.server_if]);
    lab.server.ip(&["link", "set", &lab.server_if, "down"]);
    let daemon = lab.start_daemon(BIN, &[]);
    let a = addrs(&lab);
    assert!(a.contains("198.18.0.1/24"), "asserted: {a}");
    assert!(
        a.contains("198.18.0.77/24"),
        "other addresses left alone: {a}"
    );
    assert!(
        daemon.log().contains("bringing the LAN link up"),
        "{}",
        daemon.log()
    );
    // Asserting is idempotent: a second daemon start adds nothing.
    drop(daemon);
    let _daemon = lab.start_daemon(BIN, &[]);
    assert_eq!(addrs(&lab).matches("198.18.0.1/24").count(), 1);
}

#[test]
fn an_address_change_moves_every_listener_within_two_seconds() {
    if !require_root("an_address_change_moves_every_listener_within_two_seconds") {
        return;
    }
    let lab = Lab::new("lchg");
    gb10_lab::write_file(&lab.dir.join("data/tftp/hello.txt"), "hello over tftp\n");
    let daemon = lab.start_daemon(BIN, &[]);
    assert!(
        listeners(&lab, daemon.pid())
            .iter()
            .any(|l| l.starts_with("198.18.0.1:"))
    );
    // The operator renumbers the LAN, deleting the old primary first: without
    // promote_secondaries Linux takes secondaries in the same subnet with it.
    lab.server
        .ip(&["addr", "del", "198.18.0.1/24", "dev", &lab.server_if]);
    lab.server
        .ip(&["addr", "add", "198.18.0.9/24", "dev", &lab.server_if]);
    let changed = std::time::Instant::now();
    let took = wait_until(Duration::from_secs(2), || {
        lab.http_at("198.18.0.9", "/healthz").0 == 200
    })
    .unwrap_or_else(|| {
        panic!(
            "HTTP not on the new address within 2 s: {}\n{}",
            addrs(&lab),
            daemon.log()
        )
    });
    eprintln!("HTTP answered on the new address after {took:?}");
    // TFTP follows within the same 2 s.
    let tftp = |ip: &str| lab.client.curl(&format!("tftp://{ip}/hello.txt"), 0.3).1;
    let left = Duration::from_secs(2).saturating_sub(changed.elapsed());
    let took = wait_until(left, || tftp("198.18.0.9") == "hello over tftp\n")
        .map(|_| changed.elapsed())
        .unwrap_or_else(|| panic!("TFTP not on the new address within 2 s\n{}", daemon.log()));
    eprintln!("TFTP answered on the new address {took:?} after the change");
    let (code, body) = lab.http_at("198.18.0.9", "/healthz");
    assert_eq!(code, 200);
    assert!(body.contains("198.18.0.9"), "{body}");
    assert_eq!(
        lab.http_at("198.18.0.1", "/healthz").0,
        0,
        "the old address still answers"
    );
    assert_eq!(
        tftp("198.18.0.1"),
        "",
        "TFTP still answers on the old address"
    );
    let l = listeners(&lab, daemon.pid());
    assert!(
        !l.iter().any(|l| l.starts_with("198.18.0.1:")),
        "a socket stayed on the old address: {l:?}"
    );
    // A DHCP OFFER names the new address as its server identifier (udhcpc reports it to
    // its script; the script changes nothing).
    let events = lab.dir.join("udhcpc.events");
    let script = lab.dir.join("udhcpc.sh");
    gb10_lab::write_file(
        &script,
        &format!("#!/bin/sh\necho \"$1 $serverid\" >> {}\n", events.display()),
    );
    run(Command::new("chmod").arg("+x").arg(&script));
    let _ = lab
        .client
        .cmd("udhcpc")
        .args(["-i", &lab.client_if, "-n", "-q", "-t", "3", "-T", "1", "-s"])
        .arg(&script)
        .output()
        .expect("udhcpc");
    let seen = std::fs::read_to_string(&events).unwrap_or_default();
    assert!(
        seen.contains("bound 198.18.0.9"),
        "server identifier after the change: {seen:?}\n{}",
        daemon.log()
    );
}

#[test]
fn a_recreated_interface_is_served_again_without_restart() {
    if !require_root("a_recreated_interface_is_served_again_without_restart") {
        return;
    }
    let lab = Lab::new("lrec");
    let daemon = lab.start_daemon(BIN, &[]);
    let pid = daemon.pid();
    assert!(
        Lab::xdp_attached(&lab.server, &lab.server_if),
        "XDP not attached at start\n{}",
        daemon.log()
    );
    lab.server.ip(&["link", "del", &lab.server_if]);
    assert!(
        wait_until(Duration::from_secs(3), || local_health(&lab).0 == 503).is_some(),
        "not-ready while the interface is gone"
    );
    assert!(
        local_health(&lab).1.contains("does not exist"),
        "{}",
        local_health(&lab).1
    );
    assert!(
        wait_until(Duration::from_secs(3), || {
            lab.metrics().value("gb10_xdp_attached", &[]) == 0.0
        })
        .is_some(),
        "/metrics still says XDP is attached to an interface that is gone"
    );
    run(Command::new("ip").args([
        "link",
        "add",
        &lab.server_if,
        "type",
        "veth",
        "peer",
        "name",
        &lab.client_if,
    ]));
    run(Command::new("ip").args(["link", "set", &lab.server_if, "netns", &lab.server.name]));
    run(Command::new("ip").args(["link", "set", &lab.client_if, "netns", &lab.client.name]));
    lab.client
        .ip(&["addr", "add", "198.18.0.2/24", "dev", &lab.client_if]);
    lab.client.ip(&["link", "set", &lab.client_if, "up"]);
    let took = wait_until(Duration::from_secs(10), || lab.http("/healthz").0 == 200)
        .unwrap_or_else(|| panic!("not served after the interface came back\n{}", daemon.log()));
    eprintln!("served again {took:?} after the interface was recreated");
    assert_eq!(daemon.pid(), pid);
    assert!(
        addrs(&lab).contains("198.18.0.1/24"),
        "re-asserted on the new interface"
    );
    // The XDP program comes back with the interface (the kernel detached it with the
    // old one): a recreated LAN is not left without its guard, and /metrics says so.
    assert!(
        wait_until(Duration::from_secs(3), || Lab::xdp_attached(
            &lab.server,
            &lab.server_if
        ))
        .is_some(),
        "XDP not attached to the recreated interface\n{}",
        daemon.log()
    );
    let m = lab.metrics();
    assert_eq!(m.value("gb10_xdp_attached", &[]), 1.0, "{}", m.0);
    assert_eq!(m.value("gb10_dhcp_identity_check", &[]), 1.0, "{}", m.0);
}

#[test]
fn proxy_mode_waits_for_a_real_lease_and_serves_on_it() {
    let name = "proxy_mode_waits_for_a_real_lease_and_serves_on_it";
    if !require_root(name)
        || !require_tool(name, "dnsmasq", "dnsmasq-base")
        || !require_tool(name, "dhclient", "isc-dhcp-client")
    {
        return;
    }
    let lab = Lab::new("lprx");
    lab.server.ip(&["addr", "flush", "dev", &lab.server_if]);
    let mut daemon = lab.spawn_daemon(BIN, &["--mode", "proxy"]);
    assert!(
        wait_until(Duration::from_secs(10), || local_health(&lab).0 == 503).is_some(),
        "proxy mode without an address must say not-ready\n{}",
        daemon.log()
    );
    let (_, body) = local_health(&lab);
    assert!(body.contains("no IPv4 address"), "{body}");
    assert!(
        addrs(&lab).trim().is_empty(),
        "proxy mode asserted an address: {}",
        addrs(&lab)
    );

    // The site's DHCP server lives on the client side of the LAN.
    let _site_dhcp = lab.client.dnsmasq_dhcp(
        &lab.client_if,
        "198.18.0.50,198.18.0.60,255.255.255.0,10m",
        &lab.dir,
        &[],
    );
    let (leased, _dhclient) = lab.server.dhclient_once(&lab.server_if, &lab.dir, 20);
    let leased = leased.expect("dhclient got no lease from the site DHCP");
    assert!(leased.starts_with("198.18.0."), "{leased}");
    let took = wait_until(Duration::from_secs(3), || {
        lab.http_at(&leased, "/healthz").0 == 200
    })
    .unwrap_or_else(|| panic!("not serving on the leased {leased}\n{}", daemon.log()));
    eprintln!("serving on the leased address {leased} {took:?} after the lease");
    assert_eq!(local_health(&lab).0, 200);
    assert!(daemon.try_status().is_none(), "daemon exited");
}

#[test]
fn no_socket_on_a_wildcard_address_without_the_lan_device() {
    if !require_root("no_socket_on_a_wildcard_address_without_the_lan_device") {
        return;
    }
    let lab = Lab::new("lwld");
    let daemon = lab.start_daemon(BIN, &[]);
    let l = listeners(&lab, daemon.pid());
    assert!(!l.is_empty(), "no listeners found for pid {}", daemon.pid());
    for addr in &l {
        let ok = addr.starts_with("198.18.0.1:")
            || addr.starts_with("127.0.0.1:")
            || addr.contains(&format!("%{}:", lab.server_if));
        assert!(
            ok,
            "socket {addr} is neither on the LAN address, loopback, nor bound to {}",
            lab.server_if
        );
    }
}

#[test]
fn a_missing_interface_is_fatal_and_named() {
    if !require_root("a_missing_interface_is_fatal_and_named") {
        return;
    }
    let lab = Lab::new("lmis");
    let mut cmd = lab.server.cmd(BIN);
    cmd.args(["serve", "--lan-iface", "nosuch0", "--data-path"])
        .arg(lab.dir.join("data"));
    let out = cmd.output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("nosuch0") && err.contains("does not exist"),
        "{err}"
    );
}
