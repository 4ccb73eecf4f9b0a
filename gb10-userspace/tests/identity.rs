//! DHCP identity in the XDP guard, tried as an attacker on the LAN does it: raw frames
//! from its own Ethernet address with another client's MAC in `chaddr`. A DHCP frame
//! that is not relayed must name its Ethernet source; a forged one is dropped before the
//! kernel's stack and counted per source and globally (monitor mode counts and drops
//! nothing); the rate-limit buckets follow the Ethernet source, so rotating `chaddr`
//! buys nothing; an inventory host's allowance needs the frame to come from that host;
//! clients behind a relay (dhcrelay) are still served. Every test gets a real dhclient
//! its lease while the abuse goes on.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::sleep,
    time::{Duration, Instant},
};

use gb10_lab::{
    Daemon, Lab, PidGuard, RawSender, Sniffer, format_mac,
    frames::{self, End},
    require_root, require_tool, write_file,
};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");

/// The attacker's own Ethernet address: it never forges its source, only `chaddr`.
const ATTACKER: [u8; 6] = [0x02, 0x66, 0, 0, 0, 0x0a];
/// An inventory host with a fixed address, not on the LAN: the record the attacker wants.
const VICTIM: [u8; 6] = [0x02, 0x66, 0, 0, 0, 0x01];
const VICTIM_IP: [u8; 4] = [198, 18, 0, 60];
/// The guard's per-client rate and burst, written out (they are the defaults) because
/// the assertions count with them.
const RATE: f64 = 20.0;
const BURST: f64 = 60.0;
const GUARD_ARGS: [&str; 6] = [
    "--xdp",
    "required",
    "--guard-client-rate",
    "20",
    "--guard-client-burst",
    "60",
];

/// A bare lab (dhclient configures the client end) with the victim in the inventory,
/// and the daemon on it with [`GUARD_ARGS`] and `extra`.
#[track_caller]
fn lab_with_victim(tag: &str, extra: &[&str]) -> (Lab, Daemon) {
    let lab = Lab::bare(tag);
    write_file(
        &lab.dir.join("data/inventory.toml"),
        &format!(
            "[[hosts]]\nmac = \"{}\"\nhostname = \"victim-1\"\nip = \"{}\"\n",
            format_mac(&VICTIM),
            std::net::Ipv4Addr::from(VICTIM_IP)
        ),
    );
    let mut args = GUARD_ARGS.to_vec();
    args.extend_from_slice(extra);
    let daemon = lab.start_daemon(BIN, &args);
    // The guard task writes the inventory's allowances shortly after start.
    sleep(Duration::from_millis(600));
    (lab, daemon)
}

/// A DHCPREQUEST from Ethernet `src` naming `chaddr`, unicast to the server from
/// 198.18.0.2 (a renewing client), or from its port 67 as a relay agent would send it
/// when `giaddr` is given.
fn request(
    server_mac: [u8; 6],
    src: [u8; 6],
    chaddr: [u8; 6],
    xid: u32,
    giaddr: Option<[u8; 4]>,
) -> Vec<u8> {
    let payload = frames::dhcp_payload(chaddr, xid, 3, &[]);
    let (payload, sport) = match giaddr {
        Some(g) => (frames::relayed(payload, g), 67),
        None => (payload, 68),
    };
    frames::udp_frame(
        End::new(src, [198, 18, 0, 2], sport),
        End::new(server_mac, [198, 18, 0, 1], 67),
        &[],
        &payload,
    )
}

/// A broadcast DHCPREQUEST for the victim's address from `src` naming `chaddr`.
fn forged_request(src: [u8; 6], chaddr: [u8; 6], xid: u32) -> Vec<u8> {
    let payload = frames::dhcp_payload(chaddr, xid, 3, &[(50, &VICTIM_IP), (54, &[198, 18, 0, 1])]);
    frames::udp_frame(
        frames::dhcp_client(src),
        frames::DHCP_BROADCAST,
        &[],
        &payload,
    )
}

/// Sends `frames` from the client end with nothing else on the wire, 1 ms apart (the
/// veth ring never overflows, so the XDP program meets every one): (frames sent, how
/// many reached the server's UDP stack, how long the sending took).
fn send_alone(lab: &Lab, frames: impl IntoIterator<Item = Vec<u8>>) -> (u32, u64, Duration) {
    let sender = RawSender::open(&lab.client, &lab.client_if);
    let before = lab.server.udp_reached();
    let start = Instant::now();
    let mut sent = 0;
    for f in frames {
        sender.send(&f);
        sent += 1;
        sleep(Duration::from_millis(1));
    }
    let elapsed = start.elapsed();
    sleep(Duration::from_millis(300));
    (sent, lab.server.udp_reached() - before, elapsed)
}

/// Sends `frame(i)` from the client end every 5 ms while `f` runs (at most 4,000 frames
/// and 60 s): what `f` returned and how many frames were sent.
fn during<T>(
    lab: &Lab,
    frame: impl Fn(u32) -> Vec<u8> + Send + 'static,
    f: impl FnOnce() -> T,
) -> (T, u32) {
    let sender = RawSender::open(&lab.client, &lab.client_if);
    let stop = Arc::new(AtomicBool::new(false));
    let abuse = std::thread::spawn({
        let stop = stop.clone();
        move || {
            let start = Instant::now();
            let mut sent = 0;
            for i in 0..4_000 {
                if stop.load(Ordering::Relaxed) || start.elapsed() > Duration::from_secs(60) {
                    break;
                }
                // A full queue is back-pressure: only what left counts.
                if sender.try_send(&frame(i)).is_ok() {
                    sent += 1;
                }
                sleep(Duration::from_millis(5));
            }
            sent
        }
    });
    let out = f();
    stop.store(true, Ordering::Relaxed);
    (out, abuse.join().expect("abuse thread"))
}

/// A real dhclient on the client end; the address it was bound to.
fn dhclient(lab: &Lab) -> (Option<String>, PidGuard) {
    lab.client.dhclient_once(&lab.client_if, &lab.dir, 20)
}

/// Whether a frame is a BOOTREPLY from a DHCP server port.
fn is_dhcp_reply(frame: &[u8]) -> bool {
    frames::udp_of(frame)
        .is_some_and(|(sport, _, p)| (sport == 67 || sport == 4011) && p.len() >= 240 && p[0] == 2)
}

/// The `chaddr` of each sniffed DHCP reply.
fn reply_chaddrs(replies: &[Vec<u8>]) -> Vec<[u8; 6]> {
    replies
        .iter()
        .filter_map(|f| frames::udp_of(f))
        .map(|(_, _, p)| p[28..34].try_into().expect("6 bytes"))
        .collect()
}

/// Asserts that the frames that passed the per-source bucket, of `sent` in `elapsed`,
/// are its burst plus what its rate refilled.
#[track_caller]
fn assert_source_bucket(limited: f64, sent: u32, elapsed: Duration, m: &gb10_lab::Metrics) {
    let passed = f64::from(sent) - limited;
    let most = BURST + (RATE * elapsed.as_secs_f64()).ceil() + 1.0;
    eprintln!("{passed} of {sent} requests in {elapsed:.2?} passed one source's bucket");
    assert!(
        (BURST..=most).contains(&passed),
        "{passed} of {sent} passed the attacker's bucket in {elapsed:?} (expected {BURST}..={most})\n{}",
        m.0
    );
}

/// Asserts that every one of the `sent` forged frames was counted against the attacker's
/// own address, and that they are all the forgeries counted.
#[track_caller]
fn assert_forgeries_counted(m: &gb10_lab::Metrics, sent: u32) {
    let attacker = format_mac(&ATTACKER);
    assert_eq!(
        m.value("gb10_client_identity_mismatch_total", &[("mac", &attacker)]),
        f64::from(sent),
        "{}",
        m.0
    );
    assert_eq!(
        m.value("gb10_xdp_identity_mismatch_total", &[]),
        f64::from(sent)
    );
}

#[test]
fn a_forged_chaddr_gets_nothing_and_is_dropped_and_counted() {
    let name = "a_forged_chaddr_gets_nothing_and_is_dropped_and_counted";
    if !require_root(name) || !require_tool(name, "dhclient", "isc-dhcp-client") {
        return;
    }
    let (lab, daemon) = lab_with_victim("idfg", &[]);
    let sniffer = Sniffer::start(&lab.client, &lab.client_if, is_dhcp_reply);
    // DISCOVER and REQUEST for the victim's fixed address, from the attacker's own port.
    let forged = |i: u32| {
        if i.is_multiple_of(2) {
            frames::forged_discover(ATTACKER, VICTIM, 0x1500 + i)
        } else {
            forged_request(ATTACKER, VICTIM, 0x1500 + i)
        }
    };
    let (alone, reached, _) = send_alone(&lab, (0..40).map(forged));
    assert_eq!(
        reached,
        0,
        "a forged frame reached the stack\n{}",
        lab.metrics().0
    );
    // The same abuse while a real client asks for its own lease.
    let ((leased, _dhclient), meanwhile) = during(&lab, move |i| forged(i + 40), || dhclient(&lab));
    let sent = alone + meanwhile;
    let replies = sniffer.finish();
    eprintln!(
        "{sent} forged DISCOVER/REQUESTs; dhclient: {leased:?}; {} DHCP replies sniffed",
        replies.len()
    );
    let m = lab.metrics();
    assert!(
        leased.is_some(),
        "the legitimate client got no lease during the abuse\n{}",
        daemon.log()
    );
    assert_forgeries_counted(&m, sent);
    assert_eq!(m.value("gb10_dhcp_identity_check", &[]), 1.0);
    // No answer for the victim on the wire; the legitimate client's were seen, so the
    // sniffer was listening.
    let chaddrs = reply_chaddrs(&replies);
    assert!(
        !chaddrs.contains(&VICTIM),
        "{} replies for the victim reached the attacker's port",
        chaddrs.iter().filter(|c| **c == VICTIM).count()
    );
    assert!(
        chaddrs.contains(&lab.client_mac()),
        "the sniffer saw none of the legitimate client's replies: {chaddrs:02x?}"
    );
    // The victim's record: no lease, no DHCP message from it.
    let (code, body) = lab.http_admin(&format!("/explain?mac={}", format_mac(&VICTIM)));
    assert_eq!(code, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).expect("explain JSON");
    assert!(
        e["lease"].is_null(),
        "the victim's record got a lease: {body}"
    );
    assert!(
        e["dhcp_counters"].is_null(),
        "the daemon processed messages for the victim: {body}"
    );
}

#[test]
fn rotating_chaddr_from_one_port_takes_no_address_and_meets_its_source_bucket() {
    let name = "rotating_chaddr_from_one_port_takes_no_address_and_meets_its_source_bucket";
    if !require_root(name) || !require_tool(name, "dhclient", "isc-dhcp-client") {
        return;
    }
    let (lab, daemon) = lab_with_victim("idrot", &[]);
    // A new name per DISCOVER: 300 of them would take every address of the 101 in the
    // default pool, were they served.
    let rotating = |i: u32| {
        frames::forged_discover(
            ATTACKER,
            [0x02, 0x67, 0, 0, (i >> 8) as u8, i as u8],
            0x2000 + i,
        )
    };
    let (sent, reached, elapsed) = send_alone(&lab, (0..300).map(rotating));
    let m = lab.metrics();
    assert_eq!(reached, 0, "rotated DISCOVERs reached the stack\n{}", m.0);
    assert_forgeries_counted(&m, sent);
    let attacker = format_mac(&ATTACKER);
    // One Ethernet source, one bucket, whatever the names it uses.
    let limited = m.value("gb10_client_rate_limited_total", &[("mac", &attacker)]);
    assert_source_bucket(limited, sent, elapsed, &m);
    // More of it while a new client asks: the pool still has its addresses.
    let ((leased, _dhclient), _) = during(&lab, move |i| rotating(i + 300), || dhclient(&lab));
    let leased = leased.unwrap_or_else(|| panic!("no lease for a new client\n{}", daemon.log()));
    let offered = lab
        .metrics()
        .value("gb10_dhcp_leases", &[("state", "offered")]);
    assert!(
        offered <= 1.0,
        "{offered} addresses on offer besides {leased}"
    );
}

#[test]
fn a_spoofed_inventory_mac_gets_no_allowance_direct_or_as_a_relay() {
    let name = "a_spoofed_inventory_mac_gets_no_allowance_direct_or_as_a_relay";
    if !require_root(name) || !require_tool(name, "dhclient", "isc-dhcp-client") {
        return;
    }
    // The inventory's allowance (defaults, written out): 100/s, bursts of 300.
    let (lab, daemon) = lab_with_victim(
        "idinv",
        &["--guard-known-rate", "100", "--guard-known-burst", "300"],
    );
    let server_mac = lab.server_mac();
    let attacker = format_mac(&ATTACKER);
    // From the attacker's own port, not relayed: forged, and counted against the
    // attacker's own bucket at the rate of any unknown client.
    let (sent, reached, elapsed) = send_alone(
        &lab,
        (0..200).map(|i| request(server_mac, ATTACKER, VICTIM, i, None)),
    );
    let m = lab.metrics();
    assert_eq!(reached, 0, "spoofed requests reached the stack\n{}", m.0);
    let limited = m.value("gb10_client_rate_limited_total", &[("mac", &attacker)]);
    assert_source_bucket(limited, sent, elapsed, &m);
    // Posing as a relay (giaddr set, on a subnet with no pool): not checked, since a
    // relay's frames name their clients, but held to an unknown client's rate.
    let (sent, reached, elapsed) = send_alone(
        &lab,
        (0..200).map(|i| {
            request(
                server_mac,
                ATTACKER,
                VICTIM,
                1000 + i,
                Some([198, 19, 9, 1]),
            )
        }),
    );
    let m = lab.metrics();
    let limited_now = m.value("gb10_client_rate_limited_total", &[("mac", &attacker)]);
    assert_eq!(
        f64::from(sent) - (limited_now - limited),
        reached as f64,
        "{}",
        m.0
    );
    assert_source_bucket(limited_now - limited, sent, elapsed, &m);
    // The host itself, from its own port, still has its allowance (and its own bucket,
    // untouched by the relayed frames that named it).
    let (sent, reached, _) = send_alone(
        &lab,
        (0..200).map(|i| request(server_mac, VICTIM, VICTIM, 2000 + i, None)),
    );
    assert_eq!(
        reached,
        u64::from(sent),
        "the inventory host was limited\n{}",
        lab.metrics().0
    );
    // A new client is served while the spoofing goes on.
    let ((leased, _dhclient), _) = during(
        &lab,
        move |i| request(server_mac, ATTACKER, VICTIM, 3000 + i, None),
        || dhclient(&lab),
    );
    assert!(
        leased.is_some(),
        "no lease during the spoofing\n{}",
        daemon.log()
    );
}

#[test]
fn monitor_counts_a_forged_chaddr_and_drops_nothing() {
    let name = "monitor_counts_a_forged_chaddr_and_drops_nothing";
    if !require_root(name) || !require_tool(name, "dhclient", "isc-dhcp-client") {
        return;
    }
    let (lab, daemon) = lab_with_victim("idmon", &["--guard", "monitor"]);
    let forged = |i: u32| frames::forged_discover(ATTACKER, VICTIM, 0x3000 + i);
    let (sent, reached, elapsed) = send_alone(&lab, (0..200).map(forged));
    let m = lab.metrics();
    assert_eq!(
        reached,
        u64::from(sent),
        "monitor mode dropped something\n{}",
        m.0
    );
    let attacker = format_mac(&ATTACKER);
    assert_forgeries_counted(&m, sent);
    // What enforce would also have limited, counted against the source.
    let limited = m.value("gb10_client_rate_limited_total", &[("mac", &attacker)]);
    assert_source_bucket(limited, sent, elapsed, &m);
    assert_eq!(m.value("gb10_dhcp_identity_check", &[]), 1.0);
    assert_eq!(m.value("gb10_guard_mode", &[("mode", "monitor")]), 1.0);
    let ((leased, _dhclient), _) = during(&lab, move |i| forged(i + 200), || dhclient(&lab));
    assert!(
        leased.is_some(),
        "no lease during the abuse\n{}",
        daemon.log()
    );
}

#[test]
fn clients_behind_a_relay_are_served_and_not_taken_for_forgers() {
    let name = "clients_behind_a_relay_are_served_and_not_taken_for_forgers";
    if !require_root(name)
        || !require_tool(name, "dhclient", "isc-dhcp-client")
        || !require_tool(name, "dhcrelay", "isc-dhcp-relay")
    {
        return;
    }
    // server ── 198.18.0.0/24 ── client end: dhcrelay (198.18.0.2 | 198.19.1.1) ── far
    let lab = Lab::new("idrel");
    let far = lab.far_subnet("198.19.1.1", "198.19.1.0/24");
    let mut args = GUARD_ARGS.to_vec();
    args.extend([
        "--dhcp-relay-ranges",
        "198.19.1.0/24=198.19.1.100-198.19.1.150,198.19.1.1",
    ]);
    let daemon = lab.start_daemon(BIN, &args);
    let _relay = lab.dhcrelay(&far);
    // The far client's lease, through the relay, while the attacker beside the relay
    // forges DISCOVERs in its name.
    let far_mac = far.ns.mac(&far.far_if);
    let ((leased, _dhclient), forged) = during(
        &lab,
        move |i| frames::forged_discover(ATTACKER, far_mac, 0x4000 + i),
        || far.ns.dhclient_once(&far.far_if, &lab.dir, 30),
    );
    let leased: std::net::Ipv4Addr = leased
        .unwrap_or_else(|| panic!("no lease through the relay\n{}", daemon.log()))
        .parse()
        .expect("IPv4");
    let pool: std::ops::RangeInclusive<std::net::Ipv4Addr> =
        "198.19.1.100".parse().unwrap()..="198.19.1.150".parse().unwrap();
    assert!(pool.contains(&leased), "{leased}");
    let m = lab.metrics();
    let relay = format_mac(&lab.client_mac());
    assert!(
        m.value(
            "gb10_client_packets_total",
            &[("mac", &relay), ("kind", "dhcp")]
        ) >= 2.0,
        "the relay's frames were not seen\n{}",
        m.0
    );
    assert_eq!(
        m.value("gb10_client_identity_mismatch_total", &[("mac", &relay)]),
        0.0,
        "relayed frames taken for forgeries"
    );
    assert_eq!(
        m.value("gb10_xdp_identity_mismatch_total", &[]),
        f64::from(forged),
        "only the attacker's frames are forgeries\n{}",
        m.0
    );
    // Many clients behind one relay are not lumped into the relay's bucket: 100 names
    // (twice the burst a single source gets) from its port, relayed from a subnet
    // without a pool so that no address is taken.
    let server_mac = lab.server_mac();
    let relay_mac = lab.client_mac();
    let (sent, reached, _) = send_alone(
        &lab,
        (0..100u32).map(|i| {
            request(
                server_mac,
                relay_mac,
                [0x02, 0x68, 0, 0, 0, i as u8],
                0x5000 + i,
                Some([198, 19, 2, 1]),
            )
        }),
    );
    assert_eq!(
        reached,
        u64::from(sent),
        "relayed clients were limited\n{}",
        lab.metrics().0
    );
}
