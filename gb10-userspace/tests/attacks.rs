//! Attacks from a machine on the provisioning LAN, made as the attacker makes them: raw
//! DHCP frames out of its own interface that name a victim's MAC in `chaddr`, a RELEASE
//! and a DECLINE forged in the victim's name, an address the victim gave back, and
//! `curl` without the admin token. Each must fail, while the victim's own DHCP client
//! (busybox udhcpc on an interface with the victim's MAC) and its seed fetches keep
//! working. The daemon runs with XDP off: these are the daemon's own checks, the ones
//! that hold when the XDP identity check (chaddr = Ethernet source) is not attached.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use dhcproto::{
    Decodable as _, Decoder,
    v4::{Message, MessageType},
};
use gb10_lab::{
    ADMIN_TOKEN, Guard, Lab, RawSender,
    frames::{self, End},
    require_root, require_tool, wait_until, write_file,
};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");
const VICTIM: &str = "02:00:00:00:0a:01";
const VICTIM_MAC: [u8; 6] = [2, 0, 0, 0, 0x0a, 1];
/// A second inventory host: the attacker's own machine in the stale-lease attack.
const OTHER: &str = "02:00:00:00:0a:02";
/// A client the inventory does not name: its state comes from its own heartbeats.
const UNKNOWN: &str = "02:00:00:00:0a:03";
/// What only the victim's seed holds.
const SECRET: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIVictimOnly victim-secret";
/// The pool: one address, so who holds it is never in doubt.
const POOL: &str = "198.18.0.100";

fn inventory() -> String {
    format!(
        "[profiles.deb]\nkernel = \"d/linux\"\nseed = \"cloud-init\"\n\
         [[hosts]]\nmac = \"{VICTIM}\"\nhostname = \"victim\"\nprofile = \"deb\"\n\
         vars = {{ ssh_authorized_keys = [\"{SECRET}\"] }}\n\
         [[hosts]]\nmac = \"{OTHER}\"\nhostname = \"other\"\nprofile = \"deb\"\n"
    )
}

/// The lab, its inventory, and the daemon with a one-address pool, XDP off and the lab's
/// admin token.
fn start(tag: &str) -> (Lab, gb10_lab::Daemon) {
    let lab = Lab::new(tag);
    let data = lab.dir.join("data");
    write_file(&data.join("inventory.toml"), &inventory());
    let token = lab.token_file();
    let range = format!("{POOL}-{POOL}");
    let daemon = lab.start_daemon(
        BIN,
        &[
            // Not the default on purpose: the daemon's own checks, without XDP's (see top).
            "--xdp",
            "off",
            "--dhcp-range",
            &range,
            "--lease-time",
            "10m",
            "--admin-token-file",
            &token,
        ],
    );
    (lab, daemon)
}

/// busybox udhcpc on `iface` of the client namespace, its hook configuring the address
/// and logging `bound`/`deconfig` lines to a file; `-R`: release on exit.
struct Udhcpc {
    proc: Guard,
    events: PathBuf,
}

impl Udhcpc {
    #[track_caller]
    fn start(lab: &Lab, iface: &str) -> Self {
        let script = lab.dir.join(format!("udhcpc-{iface}.sh"));
        let events = lab.dir.join(format!("udhcpc-{iface}.events"));
        write_file(
            &script,
            &format!(
                "#!/bin/sh\necho \"$1 ip=$ip\" >> '{}'\n\
                 case \"$1\" in bound|renew) ip addr replace \"$ip/$mask\" dev \"$interface\" ;; \
                 deconfig) ip addr flush dev \"$interface\" ;; esac\nexit 0\n",
                events.display()
            ),
        );
        gb10_lab::run(Command::new("chmod").arg("+x").arg(&script));
        write_file(&events, "");
        let log = std::fs::File::create(lab.dir.join(format!("udhcpc-{iface}.log"))).unwrap();
        let child = lab
            .client
            .cmd("udhcpc")
            .args(["-f", "-R", "-i", iface, "-t", "10", "-T", "1", "-A", "1"])
            .arg("-s")
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("udhcpc");
        Self {
            proc: Guard(child),
            events,
        }
    }

    /// The address of the first `bound` event, waiting up to 20 s.
    #[track_caller]
    fn bound(&self) -> Ipv4Addr {
        let mut text = String::new();
        let got = wait_until(Duration::from_secs(20), || {
            text = std::fs::read_to_string(&self.events).unwrap_or_default();
            text.lines().any(|l| l.starts_with("bound "))
        });
        assert!(got.is_some(), "udhcpc never bound:\n{text}");
        let line = text.lines().find(|l| l.starts_with("bound ")).unwrap();
        line.trim_start_matches("bound ip=")
            .parse()
            .expect("bound ip")
    }

    /// Stops it (it releases its lease on the way out) and waits for it to exit.
    fn stop(self) {
        drop(self.proc);
    }
}

/// The attacker's DHCP side: hand-made frames out of the client end (its own Ethernet
/// address as the source, whatever it likes inside), replies read on UDP port 68.
struct Attacker {
    raw: RawSender,
    sock: std::net::UdpSocket,
    /// The attacker's own Ethernet address and IP.
    me: End,
    server: End,
}

impl Attacker {
    fn open(lab: &Lab) -> Self {
        let raw = RawSender::open(&lab.client, &lab.client_if);
        let sock = lab.client.enter(|| {
            use socket2::{Domain, Protocol, Socket, Type};
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            // Beside the victim's udhcpc, which binds port 68 too when it renews.
            s.set_reuse_address(true).unwrap();
            s.set_broadcast(true).unwrap();
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, 68)).into())
                .expect("bind port 68");
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            std::net::UdpSocket::from(s)
        });
        let octets = |ip: &str| ip.parse::<Ipv4Addr>().unwrap().octets();
        let server_mac = gb10_lab::parse_mac(
            String::from_utf8_lossy(
                &gb10_lab::run(
                    lab.server
                        .cmd("cat")
                        .arg(format!("/sys/class/net/{}/address", lab.server_if)),
                )
                .stdout,
            )
            .trim(),
        )
        .unwrap();
        Self {
            raw,
            sock,
            me: End::new(lab.client_mac(), octets(lab.client_ip), 68),
            server: End::new(server_mac, octets(lab.server_ip), 67),
        }
    }

    /// A message of type `ty` in `chaddr`'s name (its client identifier too, as udhcpc
    /// sends it) from the attacker's Ethernet address: broadcast from 0.0.0.0 without a
    /// `ciaddr`, else unicast to the server from `src`.
    fn send(
        &self,
        chaddr: [u8; 6],
        xid: u32,
        ty: u8,
        (ciaddr, src): ([u8; 4], [u8; 4]),
        options: &[(u8, &[u8])],
    ) {
        let id: Vec<u8> = [&[1u8][..], &chaddr].concat();
        let mut opts: Vec<(u8, &[u8])> = vec![(61, &id)];
        opts.extend_from_slice(options);
        let payload = frames::dhcp_payload(chaddr, xid, ty, &opts);
        self.send_payload(payload, (ciaddr, src));
    }

    /// `payload` from the attacker's Ethernet address, as [`Attacker::send`] sends it.
    fn send_payload(&self, payload: Vec<u8>, (ciaddr, src): ([u8; 4], [u8; 4])) {
        let frame = if ciaddr == [0; 4] {
            frames::udp_frame(
                End {
                    ip: [0; 4],
                    ..self.me
                },
                frames::DHCP_BROADCAST,
                &[],
                &payload,
            )
        } else {
            // Unicast from an address it claims (its own, or the victim's).
            frames::udp_frame(
                End { ip: src, ..self.me },
                self.server,
                &[],
                &frames::with_ciaddr(payload, ciaddr),
            )
        };
        self.raw.send(&frame);
    }

    /// The next reply with `xid` within 2 s.
    fn reply(&self, xid: u32) -> Option<Message> {
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let Ok((n, _)) = self.sock.recv_from(&mut buf) else {
                continue;
            };
            if let Ok(m) = Message::decode(&mut Decoder::new(&buf[..n]))
                && m.xid() == xid
            {
                return Some(m);
            }
        }
        None
    }

    /// DISCOVER: the address offered to `chaddr`, if any.
    fn offered(&self, chaddr: [u8; 6], xid: u32) -> Option<Ipv4Addr> {
        self.send(chaddr, xid, 1, ([0; 4], [0; 4]), &[(55, &[1, 3, 6])]);
        let offer = self.reply(xid)?;
        (offer.opts().msg_type() == Some(MessageType::Offer)).then(|| offer.yiaddr())
    }

    /// DISCOVER → OFFER → REQUEST → ACK in `chaddr`'s name; the address ACKed.
    fn lease_as(&self, chaddr: [u8; 6], xid: u32) -> Option<Ipv4Addr> {
        let ip = self.offered(chaddr, xid)?;
        let sid = self.server.ip;
        let opts: &[(u8, &[u8])] = &[(54, &sid), (50, &ip.octets())];
        self.send(chaddr, xid, 3, ([0; 4], [0; 4]), opts);
        let ack = self.reply(xid)?;
        (ack.opts().msg_type() == Some(MessageType::Ack)).then_some(ip)
    }
}

/// The victim's lease state as `/explain` shows it (with the admin token).
fn lease_state(lab: &Lab, mac: &str) -> String {
    let (code, body) = lab.http_admin(&format!("/explain?mac={mac}"));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["lease"]["state"].as_str().unwrap_or("none").to_owned()
}

/// The attacker leases an address in the victim's name (DISCOVER/REQUEST with the
/// victim's chaddr and client identifier, from its own Ethernet address), takes that
/// address and asks for the victim's seed from it: refused, the neighbour entry names
/// the attacker. The victim's own udhcpc then gets the address and its seed.
#[test]
fn seed_theft_by_forged_chaddr() {
    let name = "attacks::seed_theft_by_forged_chaddr";
    if !require_root(name)
        || !require_tool(name, "curl", "curl")
        || !require_tool(name, "udhcpc", "udhcpc")
    {
        return;
    }
    let (lab, daemon) = start("atks");
    let attacker = Attacker::open(&lab);
    let ip = attacker
        .lease_as(VICTIM_MAC, 0x5eed_0001)
        .unwrap_or_else(|| panic!("no lease in the victim's name\n{}", daemon.log()));
    assert_eq!(ip.to_string(), POOL);
    drop(attacker);
    lab.client
        .ip(&["addr", "add", &format!("{ip}/24"), "dev", &lab.client_if]);
    let (code, body) = lab.get_via(&ip.to_string(), &format!("/cloud-init/{VICTIM}/user-data"));
    assert_eq!(code, 403, "the victim's seed went to the attacker:\n{body}");
    assert!(!body.contains("victim-secret"), "{body}");
    lab.client
        .ip(&["addr", "del", &format!("{ip}/24"), "dev", &lab.client_if]);

    // The victim itself: its own MAC, its own client.
    lab.macvlan("vic", VICTIM, None);
    let victim = Udhcpc::start(&lab, "vic");
    let got = victim.bound();
    assert_eq!(got, ip, "the victim gets the address");
    let (code, body) = lab.get_via("vic", &format!("/cloud-init/{VICTIM}/user-data"));
    assert_eq!(
        code,
        200,
        "the victim's own seed:\n{body}\n{}",
        daemon.log()
    );
    assert!(body.contains("victim-secret"), "{body}");
    victim.stop();
}

/// The victim leases the only address, fetches its seed and gives the address back on
/// shutdown; the attacker's machine (its own MAC, its own udhcpc) gets that address and
/// asks for the victim's seed from it: refused (the old holder is no owner). Its own
/// seed it gets.
#[test]
fn stale_lease_owner() {
    let name = "attacks::stale_lease_owner";
    if !require_root(name)
        || !require_tool(name, "curl", "curl")
        || !require_tool(name, "udhcpc", "udhcpc")
    {
        return;
    }
    let (lab, daemon) = start("atko");
    lab.macvlan("vic", VICTIM, None);
    let victim = Udhcpc::start(&lab, "vic");
    let ip = victim.bound();
    let (code, body) = lab.get_via("vic", &format!("/cloud-init/{VICTIM}/user-data"));
    assert_eq!(code, 200, "the victim's own seed:\n{body}");
    victim.stop();
    let released = wait_until(Duration::from_secs(10), || {
        lease_state(&lab, VICTIM) == "released"
    });
    assert!(
        released.is_some(),
        "udhcpc -R did not release\n{}",
        daemon.log()
    );

    lab.macvlan("oth", OTHER, None);
    let other = Udhcpc::start(&lab, "oth");
    assert_eq!(other.bound(), ip, "the one address goes to the next client");
    let (code, body) = lab.get_via("oth", &format!("/cloud-init/{VICTIM}/user-data"));
    assert_eq!(
        code, 403,
        "the old holder's seed went to the new one:\n{body}"
    );
    assert!(!body.contains("victim-secret"), "{body}");
    // Its own seed. Seen twice in about 55 runs: this second connection from the reused
    // address got no answer within curl's 10 s while the daemon had rendered and
    // recorded the seed (its log shows the host moving to `installing`): the address
    // moved between two Ethernet addresses on one bridge a moment before, so the stall is
    // most likely the server's neighbour entry, not the seed route. cloud-init retries a
    // seed; so does this, once, and says so.
    let path = format!("/cloud-init/{OTHER}/user-data");
    let (mut code, mut body) = lab.get_via("oth", &path);
    if code == 0 {
        println!(
            "stale_lease_owner: the first GET of its own seed got no answer in 10 s; retrying once"
        );
        (code, body) = lab.get_via("oth", &path);
    }
    assert_eq!(code, 200, "its own seed:\n{body}\n{}", daemon.log());
    other.stop();
}

/// The victim holds the only address. The attacker forges its RELEASE (victim's chaddr
/// and client identifier, from the attacker's own address) and, past the conflict-check
/// window, its DECLINE: the lease stays, and the attacker's DISCOVER gets nothing. The
/// victim's own RELEASE ends it.
///
/// Not covered here: a RELEASE forged from the victim's *address* (IP source and ciaddr
/// the victim's, Ethernet source the attacker's). The daemon's UDP socket does not see
/// the Ethernet source and our neighbour entry for the address names the victim, so
/// with XDP off that one still ends the lease; it needs the XDP check that chaddr is
/// the frame's Ethernet source (not built yet, issue 15).
#[test]
fn forged_release_and_decline_keep_the_lease() {
    let name = "attacks::forged_release_and_decline_keep_the_lease";
    if !require_root(name) || !require_tool(name, "udhcpc", "udhcpc") {
        return;
    }
    let (lab, daemon) = start("atkr");
    lab.macvlan("vic", VICTIM, None);
    let victim = Udhcpc::start(&lab, "vic");
    let ip = victim.bound();
    let acked = Instant::now();
    assert_eq!(lease_state(&lab, VICTIM), "leased");
    let attacker = Attacker::open(&lab);
    let (leased, sid) = (ip.octets(), attacker.server.ip);

    // RELEASE in the victim's name from the attacker's own address, with and without
    // our server identifier.
    let own = attacker.me.ip;
    attacker.send(VICTIM_MAC, 0x5eed_0101, 7, (leased, own), &[(54, &sid)]);
    attacker.send(VICTIM_MAC, 0x5eed_0102, 7, (leased, own), &[]);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lease_state(&lab, VICTIM), "leased", "{}", daemon.log());
    assert_eq!(
        attacker.offered(lab.client_mac(), 0x5eed_0103),
        None,
        "the victim's address was freed for the attacker"
    );

    // DECLINE in the victim's name, past the window after the ACK in which its own
    // conflict check would have declined.
    let window = Duration::from_secs(gb10_provision::dhcp::leases::DECLINE_WINDOW_SECS + 1);
    std::thread::sleep(window.saturating_sub(acked.elapsed()));
    let decline: &[(u8, &[u8])] = &[(54, &sid), (50, &leased)];
    attacker.send(VICTIM_MAC, 0x5eed_0104, 4, ([0; 4], [0; 4]), decline);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lease_state(&lab, VICTIM), "leased", "{}", daemon.log());

    // The victim's own RELEASE on the way out: ended.
    victim.stop();
    let released = wait_until(Duration::from_secs(10), || {
        lease_state(&lab, VICTIM) == "released"
    });
    assert!(released.is_some(), "the victim's RELEASE\n{}", daemon.log());
    let m = lab.metrics();
    assert!(
        m.value(
            "gb10_dhcp_no_reply_total",
            &[("reason", "not_lease_holder")]
        ) >= 3.0,
        "{}",
        m.0
    );
}

/// A stranger on the LAN, no token: nothing that names clients or hosts (`/clients`,
/// `/explain`, `/metrics`, the hosts and fleet API, the dashboard's data and event
/// streams) answers; with the token all of it does. `/healthz` stays open, and
/// `/metrics` stays open on the loopback health listener.
#[test]
fn strangers_read_no_clients() {
    let name = "attacks::strangers_read_no_clients";
    if !require_root(name) || !require_tool(name, "curl", "curl") {
        return;
    }
    let (lab, _daemon) = start("atkt");
    // A client the daemon knows: a heartbeat in the victim's name (a stranger's: kept in
    // its timeline, moves nothing).
    let (code, body) = beat_via(&lab, lab.client_ip, VICTIM, "alive");
    assert_eq!(code, 403, "{body}");
    let routes = [
        "/clients".to_owned(),
        format!("/clients/{VICTIM}"),
        format!("/explain?mac={VICTIM}"),
        "/metrics".into(),
        "/admin/api/hosts".into(),
        format!("/admin/api/hosts/{VICTIM}"),
        "/admin/api/clients".into(),
        format!("/admin/api/clients/{VICTIM}"),
        "/admin/api/clients/events".into(),
        "/admin/events".into(),
    ];
    let url = |p: &str| format!("http://{}:{}{p}", lab.server_ip, gb10_lab::HTTP_PORT);
    for path in &routes {
        let (code, body) = lab.client.curl(&url(path), 2.0);
        assert_eq!(code, 401, "{path} without the token: {body}");
        assert!(!body.contains(VICTIM), "{path} named the victim: {body}");
        let (code, body) = lab
            .client
            .curl_token(&url(path), 2.0, "wrong-token-000000000000");
        assert_eq!(code, 401, "{path} with a wrong token: {body}");
    }
    for path in &routes[..routes.len() - 2] {
        let (code, body) = lab.http_admin(path);
        assert_eq!(code, 200, "{path} with the token: {body}");
    }
    let (code, body) = lab.http_admin(&format!("/clients/{VICTIM}"));
    assert!(code == 200 && body.contains(VICTIM), "{body}");
    // Event streams open with the token (curl gives up after 2 s: the stream is live).
    for path in &routes[routes.len() - 2..] {
        let out = lab
            .client
            .cmd("curl")
            .args([
                "-sS",
                "-m",
                "2",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
            ])
            .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
            .arg(url(path))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{path}");
    }
    assert_eq!(lab.http("/healthz").0, 200);
    let (code, page) = lab.http("/admin/");
    assert_eq!(code, 200, "the dashboard page itself holds no data");
    assert!(!page.contains(VICTIM));
    assert!(
        lab.metrics().0.contains("gb10_clients"),
        "the loopback health listener keeps /metrics"
    );
}

/// The victim (udhcpc, which sends option 61 = its htype and MAC) holds the only
/// address. The attacker, from its own chaddr and Ethernet address, sends a REQUEST for
/// that address with the victim's client identifier (it hears it in every broadcast
/// DISCOVER): NAKed, the lease stays the victim's.
#[test]
fn client_identifier_of_another() {
    let name = "attacks::client_identifier_of_another";
    if !require_root(name) || !require_tool(name, "udhcpc", "udhcpc") {
        return;
    }
    let (lab, daemon) = start("atki");
    lab.macvlan("vic", VICTIM, None);
    let victim = Udhcpc::start(&lab, "vic");
    let ip = victim.bound();
    let attacker = Attacker::open(&lab);
    let victim_id: Vec<u8> = [&[1u8][..], &VICTIM_MAC].concat();
    let (sid, xid) = (attacker.server.ip, 0x5eed_0201);
    let payload = frames::dhcp_payload(
        attacker.me.mac,
        xid,
        3,
        &[(61, &victim_id), (54, &sid), (50, &ip.octets())],
    );
    attacker.send_payload(payload, ([0; 4], [0; 4]));
    let reply = attacker
        .reply(xid)
        .unwrap_or_else(|| panic!("no answer to the REQUEST\n{}", daemon.log()));
    assert_eq!(
        reply.opts().msg_type(),
        Some(MessageType::Nak),
        "the victim's address was ACKed to the attacker: {reply:?}"
    );
    let (code, body) = lab.http_admin(&format!("/explain?mac={VICTIM}"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"leased\""), "{body}");
    victim.stop();
}

/// A LAN client writes its own address as `giaddr`, as if it were a relay: the server
/// must not hand it a LAN lease answered to port 67 of an address it chose (only relay
/// pools serve a non-zero giaddr; none is configured here).
#[test]
fn forged_relay_on_the_lan() {
    let name = "attacks::forged_relay_on_the_lan";
    if !require_root(name) {
        return;
    }
    let (lab, daemon) = start("atkg");
    let attacker = Attacker::open(&lab);
    // Where a relay listens: the server answers a relayed request to giaddr:67.
    let relay = lab.client.enter(|| {
        let s = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 67)).expect("bind port 67");
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        s
    });
    let giaddr = attacker.me.ip;
    for (xid, ty) in [(0x5eed_0301u32, 1u8), (0x5eed_0302, 3)] {
        let mut payload = frames::dhcp_payload(
            lab.client_mac(),
            xid,
            ty,
            &[(50, &POOL.parse::<Ipv4Addr>().unwrap().octets())],
        );
        payload[24..28].copy_from_slice(&giaddr);
        attacker.send_payload(payload, ([0; 4], [0; 4]));
    }
    let mut buf = [0u8; 1500];
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok((n, from)) = relay.recv_from(&mut buf) {
            let m = Message::decode(&mut Decoder::new(&buf[..n]));
            panic!("the server answered the forged relay from {from}: {m:?}");
        }
    }
    let m = lab.metrics();
    assert!(
        m.value("gb10_dhcp_no_reply_total", &[("reason", "no_pool")]) >= 2.0,
        "{}\n{}",
        m.0,
        daemon.log()
    );
}

/// POSTs a heartbeat `phase` in `mac`'s name (no token) through `via` (an interface
/// or address of the client namespace): the HTTP status and body.
fn beat_via(lab: &Lab, via: &str, mac: &str, phase: &str) -> (u16, String) {
    lab.post_via(
        via,
        "/heartbeat",
        &format!(r#"{{"mac":"{mac}","phase":"{phase}"}}"#),
    )
}

/// A client's record (with the admin token), as JSON.
fn client(lab: &Lab, mac: &str) -> serde_json::Value {
    let (code, body) = lab.http_admin(&format!("/clients/{mac}"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// An unknown client (not in the inventory) leases with its own udhcpc and reports
/// `installed` from its address: with `[boot] installed = "not_found"` (the default)
/// its next network boot is sent to its disk. A stranger on the LAN (its own address, no
/// token) then posts heartbeats in its name: `installing` (its next boot would install
/// again and wipe the disk), `failed`, `onboarded`; and `alive` for an inventory host
/// with no install yet. Each is answered 403, kept in the victim's timeline as the
/// stranger's, and moves nothing. Then it posts more heartbeats in the victim's name, each
/// a different phase, than the timeline holds: the victim's own history (its lease, its
/// `installed`) stays, and the stranger's entries stay a handful.
#[test]
fn stranger_heartbeats_move_nothing() {
    let name = "attacks::stranger_heartbeats_move_nothing";
    if !require_root(name)
        || !require_tool(name, "curl", "curl")
        || !require_tool(name, "udhcpc", "udhcpc")
    {
        return;
    }
    let (lab, daemon) = start("atkh");
    lab.macvlan("unk", UNKNOWN, None);
    let unknown = Udhcpc::start(&lab, "unk");
    let ip = unknown.bound();
    let (code, body) = beat_via(&lab, "unk", UNKNOWN, "installed");
    assert_eq!(code, 200, "its own heartbeat, from {ip}: {body}");
    assert_eq!(client(&lab, UNKNOWN)["state"], "installed");

    for phase in ["installing", "failed", "onboarded"] {
        let (code, body) = beat_via(&lab, lab.client_ip, UNKNOWN, phase);
        assert_eq!(
            code,
            403,
            "a stranger's `{phase}`: {body}\n{}",
            daemon.log()
        );
        assert!(body.contains("stranger"), "{body}");
    }
    let record = client(&lab, UNKNOWN);
    assert_eq!(record["state"], "installed", "{record:#}");
    let strangers = record["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["proof"] == "stranger")
        .count();
    assert_eq!(
        strangers, 3,
        "the stranger's heartbeats in the timeline: {record:#}"
    );

    // Pushing the victim's history out: more distinct heartbeats than the timeline holds
    // (its default, 100), none of them a repeat of the last.
    for i in 0..120 {
        let (code, body) = beat_via(&lab, lab.client_ip, UNKNOWN, &format!("p{i}"));
        assert_eq!(code, 403, "{body}");
    }
    let record = client(&lab, UNKNOWN);
    let timeline = record["timeline"].as_array().unwrap();
    assert!(
        timeline.iter().any(|e| e["event"] == "leased"),
        "the victim's lease pushed out of its timeline: {record:#}"
    );
    assert!(
        timeline
            .iter()
            .any(|e| e["phase"] == "installed" && e["proof"] == "anonymous"),
        "the victim's own `installed` pushed out of its timeline: {record:#}"
    );
    let strangers = timeline.iter().filter(|e| e["proof"] == "stranger").count();
    assert!(
        (1..=8).contains(&strangers),
        "{strangers} stranger entries kept: {record:#}"
    );
    assert_eq!(record["state"], "installed", "{record:#}");

    // An inventory host before its first install: nothing to prove, so only its own
    // address speaks for it.
    let (code, body) = beat_via(&lab, lab.client_ip, OTHER, "alive");
    assert_eq!(code, 403, "{body}");
    let (code, host) = lab.http_admin(&format!("/admin/api/hosts/{OTHER}"));
    assert_eq!(code, 200, "{host}");
    let host: serde_json::Value = serde_json::from_str(&host).unwrap();
    assert!(host["last_heartbeat"].is_null(), "{host:#}");

    let m = lab.metrics();
    assert_eq!(
        m.value("gb10_heartbeats_stranger_total", &[]),
        124.0,
        "{}",
        m.0
    );
    // The client itself still moves its own state.
    let (code, body) = beat_via(&lab, "unk", UNKNOWN, "onboarded");
    assert_eq!(code, 200, "{body}");
    assert_eq!(client(&lab, UNKNOWN)["state"], "onboarded");
    unknown.stop();
}
