//! A hostile or broken LAN client against the real daemon with its defaults (XDP
//! attached, guard enforcing), one lab per abuse (issue 16): each checks that a
//! legitimate client is served while the abuse goes on, and that what the abuser can
//! take stays bounded. `GB10_BIN=/path/to/gb10-provision` runs them against another
//! build (how they were shown to fail before the bounds); `GB10_TEST_ALL=1` runs the
//! heartbeat-memory lab at its full 100,000 heartbeats (20,000 otherwise).
use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::{Duration, Instant},
};

use gb10_lab::{
    Lab, Netns, RawSender, format_mac, frames,
    hostile::{Budget, Flood},
    require_root, require_tool, wait_until, write_file,
};

/// The daemon under test: this build, or `GB10_BIN`.
fn bin() -> String {
    std::env::var("GB10_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_gb10-provision").into())
}

/// Whether the heavy variants run (`cargo xtask test --all`).
fn heavy() -> bool {
    std::env::var("GB10_TEST_ALL").is_ok_and(|v| v == "1")
}
const SERVER: SocketAddr = SocketAddr::V4(SocketAddrV4::new(
    Ipv4Addr::new(198, 18, 0, 1),
    gb10_lab::HTTP_PORT,
));
const FORM: &str = "application/x-www-form-urlencoded";
/// The daemon's default bounds on client records, as documented (`[clients]`).
const MAX_RECORDS: usize = 4096;
const STRAYS: usize = 256;

/// Root and every tool, each with its SKIP line when missing.
fn ready(test: &str, tools: &[(&str, &str)]) -> bool {
    require_root(test) && tools.iter().all(|(t, p)| require_tool(test, t, p))
}

/// A locally administered MAC that nobody has, different for each `i`.
fn made_up(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    let b = x.to_le_bytes();
    format_mac(&[0x06, b[0], b[1], b[2], b[3], b[4]])
}

/// A form-encoded heartbeat, as the onboard unit's `curl -d` posts it. `message` holds
/// only characters that need no escaping.
fn beat(mac: &str, phase: &str, message: &str) -> String {
    format!("mac={mac}&phase={phase}&message={message}")
}

/// A profile with a kernel, an initrd and a cloud-init seed, then `hosts`.
fn inventory(hosts: &str) -> String {
    format!(
        "default_profile = \"deb\"\n[profiles.deb]\nkernel = \"d/linux\"\n\
         initrd = \"d/initrd.gz\"\nseed = \"cloud-init\"\n{hosts}"
    )
}

/// `curl` from `ns` with the source address `from` (and the admin token, for admin
/// reads): (status, body), 0 when unanswered.
fn curl_from(ns: &Netns, from: &str, url: &str, token: Option<&str>) -> (u16, String) {
    let mut cmd = ns.cmd("curl");
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let out = cmd
        .args(["-sS", "-m", "10", "--interface", from])
        .args(["-o", "-", "-w", "\n%{http_code}", url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text:.300}"))
}

/// The size of the daemon's store file.
fn store_bytes(lab: &Lab) -> u64 {
    std::fs::metadata(lab.dir.join("data/state/gb10.redb")).map_or(0, |m| m.len())
}

const MIB: f64 = 1024.0 * 1024.0;

/// More made-up MACs than the old client table held (65,536) heartbeat; then, while more
/// arrive, an inventory host leases (dhclient), is recorded, and gets its seed from its
/// leased address; after a restart it still does, and the table stays within its bound.
#[test]
fn made_up_macs_cannot_fill_the_client_table() {
    let test = "abuse::client_table";
    if !ready(test, &[("dhclient", "isc-dhcp-client"), ("curl", "curl")]) {
        return;
    }
    let lab = Lab::bare("ab-table");
    // The flood's address: a stranger on the LAN.
    lab.client
        .ip(&["addr", "add", "198.18.0.3/24", "dev", &lab.client_if]);
    let mac = format_mac(&lab.client_mac());
    write_file(
        &lab.dir.join("data/inventory.toml"),
        &inventory(&format!("[[hosts]]\nmac = \"{mac}\"\nprofile = \"deb\"\n")),
    );
    let mut daemon = lab.start_daemon(&bin(), &[]);
    let made_up_beat = |i: u64| beat(&made_up(i), "installing", "hello");
    let first = Flood::start(
        &lab.client,
        SERVER,
        "/heartbeat",
        FORM,
        Budget {
            requests: 70_000,
            connections: 4,
            time: Duration::from_secs(240),
        },
        made_up_beat,
    )
    .join();
    eprintln!(
        "{test}: {} heartbeats from made-up MACs in {:.1} s ({:.0}/s; {} refused, {} broken)",
        first.sent,
        first.elapsed.as_secs_f64(),
        first.rate(),
        first.refused,
        first.broken
    );
    assert!(first.sent >= 70_000, "the flood did not finish: {first:?}");

    let more = Flood::start(
        &lab.client,
        SERVER,
        "/heartbeat",
        FORM,
        Budget {
            requests: 1_000_000,
            connections: 2,
            time: Duration::from_secs(120),
        },
        move |i| made_up_beat(i + 1_000_000),
    );
    let (leased, _dhclient) = lab.client.dhclient_once(&lab.client_if, &lab.dir, 30);
    let ip = leased.expect("the inventory host got no lease during the flood");
    let token = lab.admin_token();
    let host_is_served = |when: &str, first_seed: bool| {
        // Its record is kept (the seed below also proves the lease table names it the
        // holder of its address: the owner check reads it).
        let (code, body) = curl_from(
            &lab.client,
            &ip,
            &format!("http://{SERVER}/clients/{mac}"),
            Some(&token),
        );
        assert_eq!(code, 200, "{when}: the host's record: {body:.300}");
        assert_eq!(json(&body)["mac"], mac.as_str(), "{when}: {body:.300}");
        let (code, body) = curl_from(
            &lab.client,
            &ip,
            &format!("http://{SERVER}/cloud-init/{mac}/user-data"),
            None,
        );
        if first_seed {
            assert_eq!(code, 200, "{when}: the host's seed: {body:.300}");
        } else {
            // Its secrets go out once per install; this answer (not "belongs to another
            // host's address") says the owner check still names it the holder.
            assert_eq!(code, 403, "{when}: the host's seed again: {body:.300}");
            assert!(body.contains("handed out already"), "{when}: {body:.300}");
        }
    };
    host_is_served("during the flood", true);
    let during = more.stop();
    eprintln!(
        "{test}: {} more heartbeats while the host leased",
        during.sent
    );
    let records = |lab: &Lab| {
        let (code, body) = curl_from(
            &lab.client,
            &ip,
            &format!("http://{SERVER}/clients"),
            Some(&token),
        );
        assert_eq!(code, 200, "{body:.300}");
        json(&body).as_array().map_or(0, Vec::len)
    };
    let held = records(&lab);
    eprintln!("{test}: {held} client records held");
    assert!(
        held <= MAX_RECORDS + STRAYS + 1,
        "{held} records for {} made-up MACs",
        first.sent + during.sent
    );

    daemon.stop();
    let _daemon = lab.start_daemon(&bin(), &[]);
    host_is_served("after a restart", false);
    let held = records(&lab);
    assert!(held <= MAX_RECORDS + 1, "{held} records after a restart");
}

/// 100,000 (20,000 outside `GB10_TEST_ALL`) hostile heartbeats with 1,000-byte messages, half for the 100 inventory hosts
/// (records that are never forgotten), half for made-up MACs: the daemon's resident
/// memory and its store grow by a bounded amount, and `GET /boot.ipxe` and a TFTP fetch
/// are served meanwhile.
#[test]
fn hostile_heartbeats_leave_memory_and_store_bounded() {
    let test = "abuse::memory_and_store";
    if !ready(test, &[("curl", "curl")]) {
        return;
    }
    let lab = Lab::new("ab-rss");
    let hosts: String = (0..100)
        .map(|i| format!("[[hosts]]\nmac = \"02:00:00:bb:00:{i:02x}\"\nprofile = \"deb\"\n"))
        .collect();
    write_file(&lab.dir.join("data/inventory.toml"), &inventory(&hosts));
    let boot = gb10_lab::pseudo_random(7, 200_000);
    std::fs::create_dir_all(lab.dir.join("data/tftp")).unwrap();
    std::fs::write(lab.dir.join("data/tftp/boot.efi"), &boot).unwrap();
    let daemon = lab.start_daemon(&bin(), &[]);
    let message = |i: u64| format!("{i:08}{}", "m".repeat(992));
    let hostile = move |i: u64| {
        let mac = if i.is_multiple_of(2) {
            format!("02:00:00:bb:00:{:02x}", (i / 2) % 100)
        } else {
            made_up(i)
        };
        beat(&mac, "installing", &message(i))
    };
    let budget = |requests| Budget {
        requests,
        connections: 4,
        time: Duration::from_secs(300),
    };
    // A first round so allocator arenas and the store's pages are in use, then the figures.
    Flood::start(
        &lab.client,
        SERVER,
        "/heartbeat",
        FORM,
        budget(2_000),
        hostile,
    )
    .join();
    std::thread::sleep(Duration::from_secs(3));
    let (rss0, store0) = (gb10_lab::rss_bytes(daemon.pid()), store_bytes(&lab));

    let requests = if heavy() { 100_000 } else { 20_000 };
    let flood = Flood::start(
        &lab.client,
        SERVER,
        "/heartbeat",
        FORM,
        budget(requests),
        move |i| hostile(i + 2_000),
    );
    std::thread::sleep(Duration::from_secs(2));
    let (code, script) = lab.http("/boot.ipxe");
    assert_eq!(code, 200, "GET /boot.ipxe during the flood: {script:.300}");
    let got = lab.dir.join("boot.efi");
    let fetched = lab
        .client
        .cmd("curl")
        .args(["-sS", "-m", "60", "-o"])
        .arg(&got)
        .arg("tftp://198.18.0.1/boot.efi")
        .status()
        .expect("curl");
    assert!(fetched.success(), "TFTP fetch during the flood failed");
    assert!(
        std::fs::read(&got).unwrap() == boot,
        "TFTP fetch came back altered"
    );
    let tally = flood.join();
    // Two flush periods, so what the flood changed is on disk.
    std::thread::sleep(Duration::from_secs(3));
    let (rss1, store1) = (gb10_lab::rss_bytes(daemon.pid()), store_bytes(&lab));
    let (rss_growth, store_growth) = (
        rss1.saturating_sub(rss0) as f64 / MIB,
        store1.saturating_sub(store0) as f64 / MIB,
    );
    println!(
        "{test}: {} heartbeats (1,000-byte messages) in {:.1} s ({:.0}/s): RSS {:.1} -> {:.1} MiB \
         (+{rss_growth:.1}), store {:.1} -> {:.1} MiB (+{store_growth:.1})",
        tally.sent,
        tally.elapsed.as_secs_f64(),
        tally.rate(),
        rss0 as f64 / MIB,
        rss1 as f64 / MIB,
        store0 as f64 / MIB,
        store1 as f64 / MIB
    );
    assert!(
        tally.sent >= requests,
        "the flood did not finish: {tally:?}"
    );
    let (code, one) = lab.http_admin("/clients/02:00:00:bb:00:00");
    assert_eq!(code, 200, "{one:.300}");
    assert!(
        one.len() < 64 * 1024,
        "one inventory host's record is {} bytes",
        one.len()
    );
    assert!(
        rss_growth < 48.0,
        "resident memory grew by {rss_growth:.1} MiB"
    );
    assert!(
        store_growth < 32.0,
        "the store grew by {store_growth:.1} MiB"
    );
}

/// (status, body) of `curl` against the admin listener, inside the server namespace.
fn admin(lab: &Lab, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    gb10_lab::request(
        &lab.server,
        method,
        &format!("http://127.0.0.1:9190{path}"),
        token,
        None,
    )
}

/// A heartbeat flood for one registered host while another walks through its rebuild
/// (boot fetch, seed, post-install heartbeat): every transition of the second arrives,
/// none is lost to a lagging event stream, and its kernel and seed are served meanwhile.
#[test]
fn heartbeat_flood_loses_no_host_transition() {
    let test = "abuse::host_transitions";
    if !ready(test, &[("curl", "curl")]) {
        return;
    }
    const A: &str = "02:00:00:aa:00:01";
    const B: &str = "02:00:00:aa:00:02";
    const TOKEN: &str = "abuse-token-0123456789";
    let lab = Lab::new("ab-host");
    // The client end is host A (its fixed address is the client's): the owner check
    // wants A's MAC in the neighbour entry for that address.
    for args in [
        &["link", "set", "dev", &lab.client_if, "down"][..],
        &["link", "set", "dev", &lab.client_if, "address", A],
        &["link", "set", "dev", &lab.client_if, "up"],
    ] {
        lab.client.ip(args);
    }
    let data = lab.dir.join("data");
    write_file(
        &data.join("inventory.toml"),
        &inventory(&format!(
            "[[hosts]]\nmac = \"{A}\"\nip = \"{}\"\nprofile = \"deb\"\n\
             [[hosts]]\nmac = \"{B}\"\nprofile = \"deb\"\n",
            lab.client_ip
        )),
    );
    write_file(&data.join("www/d/linux"), "a kernel\n");
    let config = lab.dir.join("config.toml");
    write_file(
        &config,
        &format!("[admin]\ntoken = \"{TOKEN}\"\nlisten = \"127.0.0.1:9190\"\n"),
    );
    let daemon = lab.start_daemon(&bin(), &["--config", config.to_str().unwrap()]);
    let state = |mac: &str| {
        let (code, body) = admin(&lab, "GET", &format!("/api/hosts/{mac}"), Some(TOKEN));
        assert_eq!(code, 200, "{body:.300}");
        json(&body)
    };
    let wait_state = |want: &str, since: Instant| {
        let mut last = serde_json::Value::Null;
        let reached = wait_until(Duration::from_secs(15), || {
            last = state(A);
            last["state"] == want
        });
        assert!(
            reached.is_some(),
            "host never reached {want} ({:.1} s into the flood): {last:#}",
            since.elapsed().as_secs_f64()
        );
    };
    let (code, body) = admin(
        &lab,
        "POST",
        &format!("/api/hosts/{A}/rebuild"),
        Some(TOKEN),
    );
    assert_eq!(code, 200, "{body:.300}");

    let flood = Flood::start(
        &lab.client,
        SERVER,
        "/heartbeat",
        FORM,
        Budget {
            requests: 1_000_000,
            connections: 4,
            time: Duration::from_secs(120),
        },
        |i| beat(B, "alive", &format!("beat-{i}")),
    );
    let started = Instant::now();
    // The host walks through its rebuild with the flood well under way…
    assert!(
        flood.wait_started(2_000, Duration::from_secs(60)),
        "the flood did not start"
    );
    let (code, body) = lab.http("/d/linux");
    assert_eq!(code, 200, "the kernel during the flood: {body:.300}");
    wait_state("pxe_booted", started);
    let (code, body) = lab.http(&format!("/cloud-init/{A}/user-data"));
    assert_eq!(code, 200, "the seed during the flood: {body:.300}");
    // The installed system proves itself with the token its seed carried.
    let token = gb10_lab::install_token(&body).expect("the seed carries the install token");
    wait_state("installing", started);
    lab.client.post_json(
        &format!("http://{SERVER}/heartbeat"),
        &format!(r#"{{"mac":"{A}","phase":"installed","token":"{token}"}}"#),
    );
    wait_state("installed", started);
    // …and on for a while after, as the issue's 5,000.
    flood.wait_started(6_000, Duration::from_secs(60));
    let tally = flood.stop();
    let lagged = daemon.log().matches("lagged").count();
    println!(
        "{test}: {} heartbeats for {B} in {:.1} s ({:.0}/s) while {A} was rebuilt; \
         {lagged} lag warnings",
        tally.sent,
        tally.elapsed.as_secs_f64(),
        tally.rate()
    );
    assert!(tally.sent > 5_000, "the flood barely ran: {tally:?}");
    let path: Vec<String> = state(A)["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(path, ["pxe_ready", "pxe_booted", "installing", "installed"]);
    // The flood came from A's address: B's client timeline keeps it as a stranger's,
    // and it never counts as B's own heartbeat.
    let b = state(B);
    assert!(b["last_heartbeat"].is_null(), "{b:#}");
    let (code, body) = gb10_lab::request(
        &lab.client,
        "GET",
        &format!("http://{SERVER}/clients/{B}"),
        Some(TOKEN),
        None,
    );
    assert_eq!(code, 200, "{body:.300}");
    assert!(
        body.contains(r#""proof":"stranger""#),
        "the flood is not in B's timeline: {body:.600}"
    );
}

/// A TFTP read request that is never acknowledged, sent from a socket that stays open.
fn unacknowledged_rrq(from: Ipv4Addr) -> UdpSocket {
    let s = UdpSocket::bind((from, 0)).expect("bind");
    let mut rrq = vec![0, 1];
    rrq.extend_from_slice(b"boot/f.bin\0octet\0");
    s.send_to(&rrq, "198.18.0.1:69").expect("send");
    s
}

/// Fetches `boot/f.bin` with curl from `from` and compares it.
#[track_caller]
fn tftp_fetch(lab: &Lab, from: &str, want: &[u8], when: &str) -> Duration {
    let got = lab.dir.join(format!("got-{from}"));
    let start = Instant::now();
    let out = lab
        .client
        .cmd("curl")
        .args(["-sS", "-m", "30", "--interface", from, "-o"])
        .arg(&got)
        .arg("tftp://198.18.0.1/boot/f.bin")
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "{when}: TFTP fetch failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(&got).unwrap() == want, "{when}: file altered");
    start.elapsed()
}

/// 64 read requests never acknowledged from one address, then one each from 64
/// addresses: a client elsewhere still fetches at once, the first abuser holds no more
/// than its share, and every session that never saw an ACK is gone soon.
#[test]
fn unacknowledged_tftp_requests_cannot_hold_every_slot() {
    let test = "abuse::tftp_slots";
    if !ready(test, &[("curl", "curl")]) {
        return;
    }
    let lab = Lab::new("ab-tftp");
    let file = gb10_lab::pseudo_random(9, 64 * 1024);
    let path = lab.dir.join("data/tftp/boot/f.bin");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, &file).unwrap();
    lab.client
        .ip(&["addr", "add", "198.18.0.3/24", "dev", &lab.client_if]);
    for k in 0..64 {
        lab.client.ip(&[
            "addr",
            "add",
            &format!("198.18.0.{}/24", 100 + k),
            "dev",
            &lab.client_if,
        ]);
    }
    let _daemon = lab.start_daemon(&bin(), &[]);
    // Paced under the guard's 20 requests a second per MAC: all of them reach the daemon.
    let pace = Duration::from_millis(70);
    let one_source = lab.client.enter(move || {
        (0..64)
            .map(|_| {
                std::thread::sleep(pace);
                unacknowledged_rrq(Ipv4Addr::new(198, 18, 0, 3))
            })
            .collect::<Vec<_>>()
    });
    let took = tftp_fetch(&lab, lab.client_ip, &file, "after 64 from one address");
    eprintln!("{test}: fetched in {took:?} beside 64 unacknowledged requests from one address");
    let m = lab.metrics();
    let busy = m.value(
        "gb10_tftp_errors_total",
        &[("client", "198.18.0.3"), ("reason", "busy")],
    );
    assert!(
        busy >= 56.0,
        "one address held more than its share (refused busy: {busy})\n{}",
        m.0
    );

    let many_sources = lab.client.enter(move || {
        (0..64)
            .map(|k| {
                std::thread::sleep(pace);
                unacknowledged_rrq(Ipv4Addr::new(198, 18, 0, 100 + k))
            })
            .collect::<Vec<_>>()
    });
    let sent = Instant::now();
    let took = tftp_fetch(&lab, lab.client_ip, &file, "after 64 from 64 addresses");
    eprintln!("{test}: fetched in {took:?} beside 64 unacknowledged requests from 64 addresses");
    let gone = wait_until(Duration::from_secs(20), || {
        lab.metrics().value("gb10_tftp_sessions", &[]) == 0.0
    });
    let after = sent.elapsed();
    eprintln!("{test}: unacknowledged sessions gone {after:?} after the last request");
    assert!(
        gone.is_some(),
        "sessions that never saw an ACK still run {after:?} later"
    );
    drop((one_source, many_sources));
}

/// DHCP payloads wrapped in frames from `mac` (Ethernet source and chaddr alike).
fn dhcp_frame(mac: [u8; 6], xid: u32, msg_type: u8, options: &[(u8, &[u8])]) -> Vec<u8> {
    let payload = frames::dhcp_payload(mac, xid, msg_type, options);
    frames::udp_frame(
        frames::dhcp_client(mac),
        frames::DHCP_BROADCAST,
        &[],
        &payload,
    )
}

/// Runs dhclient as a new machine: `mac` on the client end, no address, no lease file.
fn fresh_dhclient(lab: &Lab, mac: &str) -> (Option<String>, gb10_lab::PidGuard) {
    lab.client
        .ip(&["link", "set", "dev", &lab.client_if, "down"]);
    lab.client
        .ip(&["link", "set", "dev", &lab.client_if, "address", mac]);
    lab.client.ip(&["addr", "flush", "dev", &lab.client_if]);
    lab.client.ip(&["link", "set", "dev", &lab.client_if, "up"]);
    let _ = std::fs::remove_file(lab.dir.join(format!("dhclient-{}.leases", lab.client_if)));
    lab.client.dhclient_once(&lab.client_if, &lab.dir, 30)
}

fn in_pool(ip: &str) -> bool {
    let ip: Ipv4Addr = ip.parse().expect("an address");
    (Ipv4Addr::new(198, 18, 0, 100)..=Ipv4Addr::new(198, 18, 0, 200)).contains(&ip)
}

/// One machine asks for every pool address under as many client identifiers (the
/// Ethernet source and chaddr its own), then a port rotates its MAC on every DISCOVER:
/// a new machine still gets a lease, the inventory host its fixed address, and the first
/// abuser holds a bounded number of addresses.
#[test]
fn one_client_cannot_take_the_pool() {
    let test = "abuse::dhcp_pool";
    if !ready(test, &[("dhclient", "isc-dhcp-client")]) {
        return;
    }
    const FIXED: &str = "02:00:00:cc:00:01";
    let lab = Lab::bare("ab-pool");
    write_file(
        &lab.dir.join("data/inventory.toml"),
        &inventory(&format!(
            "[[hosts]]\nmac = \"{FIXED}\"\nip = \"198.18.0.50\"\nprofile = \"deb\"\n"
        )),
    );
    let _daemon = lab.start_daemon(&bin(), &[]);
    let raw = RawSender::open(&lab.client, &lab.client_if);
    let hoarder = [0x02, 0, 0, 0xdd, 0, 1];
    // INIT-REBOOT requests naming each pool address, each under a new client identifier;
    // paced under the guard's 20 a second per client.
    for i in 0..101u8 {
        let ip = [198, 18, 0, 100 + i];
        raw.send(&dhcp_frame(
            hoarder,
            0x0a00 + u32::from(i),
            3,
            &[(50, &ip), (61, &[0, 0xab, i])],
        ));
        std::thread::sleep(Duration::from_millis(70));
    }
    let leased = |lab: &Lab| {
        lab.metrics()
            .value("gb10_dhcp_leases", &[("state", "leased")])
    };
    let hoarded = leased(&lab);
    eprintln!("{test}: one MAC under 101 client identifiers holds {hoarded} leases");
    let (ip, dhclient) = fresh_dhclient(&lab, "02:00:00:ee:00:01");
    let ip = ip.expect("a new machine got no lease after one MAC asked for the whole pool");
    assert!(in_pool(&ip), "{ip}");
    drop(dhclient);
    assert!(hoarded <= 4.0, "one MAC holds {hoarded} leases");

    // A port that changes its MAC on every DISCOVER, for the rest of the test.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rotating = {
        let stop = stop.clone();
        let raw = RawSender::open(&lab.client, &lab.client_if);
        std::thread::spawn(move || {
            let mut n = 0u64;
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && start.elapsed() < Duration::from_secs(90)
                && n < 100_000
            {
                let mac = gb10_lab::parse_mac(&made_up(n + 7)).unwrap();
                if raw
                    .try_send(&dhcp_frame(mac, n as u32, 1, &[(55, &[1, 3, 6])]))
                    .is_ok()
                {
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            n
        })
    };
    std::thread::sleep(Duration::from_secs(2));
    let offered = lab
        .metrics()
        .value("gb10_dhcp_leases", &[("state", "offered")]);
    eprintln!("{test}: {offered} addresses on offer to rotating MACs");
    let asked = Instant::now();
    let (ip, dhclient) = fresh_dhclient(&lab, "02:00:00:ee:00:02");
    let ip = ip.expect("a new machine got no lease while a port rotated its MAC");
    assert!(in_pool(&ip), "{ip}");
    // A late REQUEST still wins the offer the flood took back, so this is one DORA, not
    // a NAK and a new DISCOVER after each offer the flood churned through.
    eprintln!("{test}: a new machine got {ip} in {:?}", asked.elapsed());
    drop(dhclient);
    let (ip, dhclient) = fresh_dhclient(&lab, FIXED);
    assert_eq!(
        ip.as_deref(),
        Some("198.18.0.50"),
        "the inventory host did not get its fixed address"
    );
    drop(dhclient);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = rotating.join().unwrap();
    eprintln!("{test}: {sent} DISCOVERs from rotating MACs");
    assert!(sent > 500, "the rotating flood barely ran");
}
