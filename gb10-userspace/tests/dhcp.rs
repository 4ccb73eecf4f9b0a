//! The DHCP responder against real clients in network namespaces: udhcpc (busybox),
//! dhclient (isc-dhcp-client) and dhcpcd get, renew and release leases in direct mode;
//! a fixed host gets its address; malformed datagrams are counted and dropped. The daemon
//! runs with its defaults (XDP attached, guard enforce) unless a test says why not.
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use gb10_lab::{Daemon, Lab, Metrics, format_mac, frames, require_root, require_tool, write_file};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");
const RANGE: (&str, &str) = ("198.18.0.100", "198.18.0.150");

fn direct_args() -> Vec<&'static str> {
    vec![
        "--dhcp-range",
        "198.18.0.100-198.18.0.150",
        "--lease-time",
        "2m",
    ]
}

fn in_range(ip: &str) -> bool {
    let ip: std::net::Ipv4Addr = ip.parse().expect("an IPv4 address");
    let (start, end): (std::net::Ipv4Addr, std::net::Ipv4Addr) =
        (RANGE.0.parse().unwrap(), RANGE.1.parse().unwrap());
    (start..=end).contains(&ip)
}

/// A client process started by the test, killed by PID on Drop.
struct Proc(Option<Child>);

impl Proc {
    #[track_caller]
    fn spawn(mut cmd: Command, log: &Path) -> Self {
        let file = std::fs::File::create(log).expect("client log");
        cmd.stdin(Stdio::null())
            .stdout(file.try_clone().expect("log fd"))
            .stderr(file);
        Self(Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}")),
        ))
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.0 {
            // SAFETY: kill on our own child's PID.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A client hook script that appends one line per event (`EVENT key=value…`) to a file
/// and configures the address it is given, so renewals can be unicast.
struct Hook {
    script: PathBuf,
    events: PathBuf,
}

impl Hook {
    fn new(lab: &Lab, name: &str, body: &str) -> Self {
        let script = lab.dir.join(format!("{name}.sh"));
        let events = lab.dir.join(format!("{name}.events"));
        write_file(
            &script,
            &format!("#!/bin/sh\nEVENTS='{}'\n{body}\nexit 0\n", events.display()),
        );
        run_ok(Command::new("chmod").args(["+x"]).arg(&script));
        write_file(&events, "");
        Self { script, events }
    }

    /// The udhcpc hook: `$1` is the event, the lease is in the environment.
    fn udhcpc(lab: &Lab) -> Self {
        Self::new(
            lab,
            "udhcpc",
            r#"echo "$1 ip=$ip router=$router hostname=$hostname boot_file=$boot_file siaddr=$siaddr serverid=$serverid lease=$lease" >> "$EVENTS"
case "$1" in bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;; deconfig) ip addr flush dev "$interface" ;; esac"#,
        )
    }

    /// The dhclient hook (`-sf`): `$reason`, `$new_*`.
    fn dhclient(lab: &Lab) -> Self {
        Self::new(
            lab,
            "dhclient",
            r#"echo "$reason ip=$new_ip_address hostname=$new_host_name serverid=$new_dhcp_server_identifier" >> "$EVENTS"
case "$reason" in BOUND|RENEW|REBIND|REBOOT) ip addr replace "$new_ip_address/$new_subnet_mask" dev "$interface" ;; esac"#,
        )
    }

    /// Waits for the `n`-th line (1-based) that starts with `event `; returns it.
    #[track_caller]
    fn wait(&self, event: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.events).unwrap_or_default();
            if let Some(line) = text
                .lines()
                .filter(|l| l.starts_with(&format!("{event} ")))
                .nth(n - 1)
            {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no `{event}` #{n} within {timeout:?}; events:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `key=value` from an event line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or("")
}

#[track_caller]
fn run_ok(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&gb10_lab::run(cmd).stdout).into_owned()
}

/// GET `path` from inside the server namespace: DHCP labs leave the client end without
/// an address until a client configures one.
fn http_local(lab: &Lab, path: &str) -> (u16, String) {
    let url = format!("http://{}:{}{path}", lab.server_ip, gb10_lab::HTTP_PORT);
    lab.server.curl_token(&url, 5.0, &lab.admin_token())
}

#[track_caller]
fn metrics(lab: &Lab) -> Metrics {
    let (code, body) = http_local(lab, "/metrics");
    assert_eq!(code, 200, "/metrics: {body}");
    Metrics(body)
}

/// Starts the daemon and waits (bounded) until it answers on the server side.
#[track_caller]
fn start(lab: &Lab, args: &[&str]) -> Daemon {
    let mut daemon = lab.spawn_daemon(BIN, args);
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_local(lab, "/healthz").0 != 200 {
        if let Some(status) = daemon.try_status() {
            panic!("daemon exited: {status}\n{}", daemon.log());
        }
        assert!(
            Instant::now() < deadline,
            "daemon not ready\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    daemon
}

/// Polls `/metrics` until `name{labels}` reaches `want` (bounded); its final value.
#[track_caller]
fn wait_metric(lab: &Lab, name: &str, labels: &[(&str, &str)], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metrics(lab).value(name, labels);
        if v >= want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn udhcpc(lab: &Lab, hook: &Hook) -> Proc {
    let mut cmd = lab.client.cmd("udhcpc");
    cmd.args(["-f", "-i", &lab.client_if, "-t", "10", "-T", "1", "-A", "1"])
        .arg("-s")
        .arg(&hook.script);
    Proc::spawn(cmd, &lab.dir.join("udhcpc.log"))
}

#[test]
fn udhcpc_gets_renews_and_releases_a_lease() {
    if !require_root("udhcpc_gets_renews_and_releases_a_lease")
        || !require_tool("udhcpc", "udhcpc", "udhcpc")
    {
        return;
    }
    let lab = Lab::bare("dhu");
    let mut daemon = start(&lab, &direct_args());
    let mac = format_mac(&lab.client_mac());
    let hook = Hook::udhcpc(&lab);
    let client = udhcpc(&lab, &hook);

    let bound = hook.wait("bound", 1, Duration::from_secs(20));
    let ip = field(&bound, "ip").to_owned();
    assert!(in_range(&ip), "{bound}");
    assert_eq!(field(&bound, "serverid"), lab.server_ip, "{bound}");
    assert_eq!(field(&bound, "lease"), "120", "{bound}");
    let ack = [("mac", mac.as_str()), ("type", "ack")];
    assert_eq!(wait_metric(&lab, "gb10_dhcp_replies_total", &ack, 1.0), 1.0);

    // SIGUSR1: RENEWING, a unicast REQUEST with ciaddr set.
    client.signal(libc::SIGUSR1);
    let renew = hook.wait("renew", 1, Duration::from_secs(20));
    assert_eq!(field(&renew, "ip"), ip, "same address on renewal: {renew}");
    assert_eq!(wait_metric(&lab, "gb10_dhcp_replies_total", &ack, 2.0), 2.0);

    // SIGUSR2: RELEASE.
    client.signal(libc::SIGUSR2);
    let release = [("mac", mac.as_str()), ("type", "release")];
    assert_eq!(
        wait_metric(&lab, "gb10_dhcp_messages_total", &release, 1.0),
        1.0,
        "{}",
        daemon.log()
    );
    drop(client);

    // The released lease survives a restart as a record.
    assert!(daemon.stop().success(), "{}", daemon.log());
    let _daemon = start(&lab, &direct_args());
    assert_eq!(metrics(&lab).value("gb10_dhcp_leases_restored", &[]), 1.0);
    assert_eq!(
        metrics(&lab).value("gb10_dhcp_store_records_skipped", &[]),
        0.0
    );
}

#[test]
fn fixed_host_gets_its_address_and_name() {
    if !require_root("fixed_host_gets_its_address_and_name")
        || !require_tool("fixed_host_gets_its_address_and_name", "udhcpc", "udhcpc")
    {
        return;
    }
    let lab = Lab::bare("dhf");
    let mac = format_mac(&lab.client_mac());
    write_file(
        &lab.dir.join("data/inventory.toml"),
        &format!("[[hosts]]\nmac = \"{mac}\"\nhostname = \"spark-1\"\nip = \"198.18.0.50\"\n"),
    );
    let _daemon = start(&lab, &direct_args());
    let hook = Hook::udhcpc(&lab);
    let _client = udhcpc(&lab, &hook);
    let bound = hook.wait("bound", 1, Duration::from_secs(20));
    assert_eq!(field(&bound, "ip"), "198.18.0.50", "{bound}");
    assert_eq!(field(&bound, "hostname"), "spark-1", "{bound}");

    // /explain tells the same story, with the client's DHCP counters.
    let (code, body) = http_local(&lab, &format!("/explain?mac={mac}&arch=11"));
    assert_eq!(code, 200, "{body}");
    let e: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(e["dhcp"]["address"], "fixed 198.18.0.50 (inventory)", "{e}");
    assert_eq!(e["dhcp"]["file"], "shimaa64.efi", "{e}");
    assert_eq!(e["dhcp"]["hostname"], "spark-1", "{e}");
    assert_eq!(e["dhcp_counters"]["sent"]["ack"], 1, "{e}");
    assert_eq!(e["lease"]["ip"], "198.18.0.50", "{e}");
    assert_eq!(e["lease"]["state"], "leased", "{e}");
    assert_eq!(
        metrics(&lab).value("gb10_dhcp_leases", &[("state", "leased")]),
        1.0
    );
    let (code, _) = http_local(&lab, "/explain?mac=nonsense");
    assert_eq!(code, 400);
}

#[test]
fn dhclient_gets_reboots_into_and_releases_a_lease() {
    if !require_root("dhclient_gets_reboots_into_and_releases_a_lease")
        || !require_tool("dhclient", "dhclient", "isc-dhcp-client")
    {
        return;
    }
    let lab = Lab::bare("dhd");
    let _daemon = start(&lab, &direct_args());
    let mac = format_mac(&lab.client_mac());
    let hook = Hook::dhclient(&lab);
    let (lf, pf) = (
        lab.dir.join("dhclient.leases"),
        lab.dir.join("dhclient.pid"),
    );
    let dhclient = |extra: &[&str]| {
        let mut cmd = lab.client.cmd("dhclient");
        cmd.args(["-4", "-v", "-lf"])
            .arg(&lf)
            .arg("-pf")
            .arg(&pf)
            .arg("-sf")
            .arg(&hook.script)
            .args(extra)
            .arg(&lab.client_if);
        cmd
    };
    // Foreground, one try: DISCOVER, OFFER, REQUEST, ACK.
    let first = Proc::spawn(dhclient(&["-d", "-1"]), &lab.dir.join("dhclient-1.log"));
    let bound = hook.wait("BOUND", 1, Duration::from_secs(30));
    let ip = field(&bound, "ip").to_owned();
    assert!(in_range(&ip), "{bound}");
    assert_eq!(field(&bound, "serverid"), lab.server_ip);
    drop(first);

    // A second start asks for the remembered address (INIT-REBOOT) and keeps it.
    let second = Proc::spawn(dhclient(&["-d", "-1"]), &lab.dir.join("dhclient-2.log"));
    let reboot = hook.wait("REBOOT", 1, Duration::from_secs(30));
    assert_eq!(field(&reboot, "ip"), ip, "{reboot}");
    drop(second);
    let ack = [("mac", mac.as_str()), ("type", "ack")];
    assert_eq!(wait_metric(&lab, "gb10_dhcp_replies_total", &ack, 2.0), 2.0);

    // -r: RELEASE.
    let out = dhclient(&["-r"]).output().expect("dhclient -r");
    assert!(out.status.success(), "{out:?}");
    let release = [("mac", mac.as_str()), ("type", "release")];
    assert_eq!(
        wait_metric(&lab, "gb10_dhcp_messages_total", &release, 1.0),
        1.0
    );
}

#[test]
fn malformed_datagrams_are_counted_and_the_next_client_is_served() {
    if !require_root("malformed_datagrams_are_counted_and_the_next_client_is_served")
        || !require_tool("malformed", "udhcpc", "udhcpc")
    {
        return;
    }
    let lab = Lab::bare("dhm");
    let _daemon = start(&lab, &direct_args());
    let raw = gb10_lab::RawSender::open(&lab.client, &lab.client_if);
    let mac = [2, 0, 0, 0, 0x66, 1];
    let cases = malformed_payloads(mac);
    for (payload, _) in &cases {
        raw.send(&frames::udp_frame(
            frames::dhcp_client(mac),
            frames::DHCP_BROADCAST,
            &[],
            payload,
        ));
    }
    // With XDP attached (the default) the program drops what it can judge from the frame
    // (too short for a DHCP message, no magic cookie); the daemon counts the rest.
    let xdp_drops = ["too_short", "bad_cookie"];
    assert_eq!(
        wait_metric(
            &lab,
            "gb10_xdp_malformed_dropped_total",
            &[],
            xdp_drops.len() as f64
        ),
        xdp_drops.len() as f64,
        "{}",
        metrics(&lab).0
    );
    for (_, reason) in cases.iter().filter(|(_, r)| !xdp_drops.contains(r)) {
        let want = cases.iter().filter(|(_, r)| r == reason).count() as f64;
        assert_eq!(
            wait_metric(
                &lab,
                "gb10_dhcp_malformed_total",
                &[("reason", reason)],
                want
            ),
            want,
            "reason {reason}"
        );
    }
    let hook = Hook::udhcpc(&lab);
    let _client = udhcpc(&lab, &hook);
    let bound = hook.wait("bound", 1, Duration::from_secs(20));
    assert!(in_range(field(&bound, "ip")), "{bound}");
}

/// DHCP payloads each broken one way, with the reason label the daemon must count.
fn malformed_payloads(mac: [u8; 6]) -> Vec<(Vec<u8>, &'static str)> {
    let good = frames::dhcp_payload(mac, 7, 1, &[]);
    let mut short = good.clone();
    short.truncate(200);
    let mut cookie = good.clone();
    cookie[236] = 0;
    let mut overrun = frames::dhcp_payload(mac, 7, 1, &[]);
    let end = overrun.iter().rposition(|b| *b == 255).expect("END");
    overrun.truncate(end);
    overrun.extend_from_slice(&[60, 200, b'P']);
    let mut no_end = good.clone();
    no_end.truncate(end);
    let mut hlen = good.clone();
    hlen[2] = 17;
    let two_types = frames::dhcp_payload(mac, 7, 1, &[(53, &[3])]);
    let long_id = frames::dhcp_payload(mac, 7, 1, &[(61, &[1; 100]), (61, &[1; 100])]);
    vec![
        (short, "too_short"),
        (cookie, "bad_cookie"),
        (overrun, "option_overrun"),
        (no_end, "no_end"),
        (hlen, "hlen"),
        (two_types, "duplicate_message_type"),
        (long_id, "client_id_too_long"),
    ]
}

#[test]
fn dhcpcd_gets_rebinds_and_releases_a_lease() {
    if !require_root("dhcpcd_gets_rebinds_and_releases_a_lease")
        || !require_tool("dhcpcd", "dhcpcd", "dhcpcd-base")
    {
        return;
    }
    let lab = Lab::bare("dhc");
    let _daemon = start(&lab, &direct_args());
    let mac = format_mac(&lab.client_mac());
    let hook = Hook::new(
        &lab,
        "dhcpcd",
        r#"echo "$reason ip=$new_ip_address" >> "$EVENTS""#,
    );
    // dhcpcd keeps its control socket and leases under /run and /var/lib: private
    // tmpfs mounts (in the mount namespace `ip netns exec` makes) keep it off the host's.
    let script = format!(
        r#"set -e
mount -t tmpfs none /run
mkdir -p /var/lib/dhcpcd && mount -t tmpfs none /var/lib/dhcpcd
dhcpcd -B -4 -A -f /dev/null -c '{hook}' {iface} &
pid=$!
wait_for() {{ for i in $(seq 1 150); do grep -q "^$1 " '{events}' && return 0; sleep 0.1; done; return 1; }}
wait_for BOUND
dhcpcd -4 -n {iface}
wait_for RENEW
dhcpcd -4 -k {iface}
wait_for STOPPED
wait $pid || true
"#,
        hook = hook.script.display(),
        events = hook.events.display(),
        iface = lab.client_if,
    );
    let out = lab
        .client
        .cmd("timeout")
        .args(["60", "sh", "-c", &script])
        .output()
        .expect("dhcpcd script");
    let events = std::fs::read_to_string(&hook.events).unwrap_or_default();
    assert!(out.status.success(), "{out:?}\n{events}");
    let bound = hook.wait("BOUND", 1, Duration::from_secs(1));
    let ip = field(&bound, "ip");
    assert!(in_range(ip), "{bound}");
    let renew = hook.wait("RENEW", 1, Duration::from_secs(1));
    assert_eq!(field(&renew, "ip"), ip, "{renew}");
    let ack = [("mac", mac.as_str()), ("type", "ack")];
    assert_eq!(wait_metric(&lab, "gb10_dhcp_replies_total", &ack, 2.0), 2.0);
    let release = [("mac", mac.as_str()), ("type", "release")];
    assert_eq!(
        wait_metric(&lab, "gb10_dhcp_messages_total", &release, 1.0),
        1.0
    );
}

/// A DHCP request from the client namespace's UDP socket (port 68, bound to `iface`).
fn pxe_request(mac: [u8; 6], ty: dhcproto::v4::MessageType, ciaddr: std::net::Ipv4Addr) -> Vec<u8> {
    use dhcproto::{
        Encodable as _, Encoder,
        v4::{Architecture, DhcpOption, Flags, Message},
    };
    let mut m = Message::new(
        ciaddr,
        std::net::Ipv4Addr::UNSPECIFIED,
        std::net::Ipv4Addr::UNSPECIFIED,
        std::net::Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_flags(Flags::default().set_broadcast());
    let o = m.opts_mut();
    o.insert(DhcpOption::MessageType(ty));
    o.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(
        7u16,
    )));
    o.insert(DhcpOption::ClassIdentifier(
        b"PXEClient:Arch:00007:UNDI:003000".to_vec(),
    ));
    o.insert(DhcpOption::ClientMachineIdentifier(
        [[0u8].as_slice(), &[0x42; 16]].concat(),
    ));
    let mut buf = Vec::new();
    m.encode(&mut Encoder::new(&mut buf)).expect("encode");
    buf
}

/// The BOOTP `file` field as text, without its NUL.
fn file(m: &dhcproto::v4::Message) -> String {
    String::from_utf8_lossy(m.fname().unwrap_or_default())
        .trim_end_matches('\0')
        .to_owned()
}

/// Every DHCP reply `sock` receives within `window`, decoded, with its sender.
fn collect_replies(
    sock: &std::net::UdpSocket,
    window: Duration,
) -> Vec<(std::net::SocketAddr, dhcproto::v4::Message)> {
    use dhcproto::{Decodable as _, Decoder};
    let deadline = Instant::now() + window;
    let mut got = Vec::new();
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .expect("timeout");
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if let Ok(m) = dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..n])) {
                    got.push((from, m));
                }
            }
            Err(_) => break,
        }
    }
    got
}

#[test]
fn proxy_mode_beside_dnsmasq() {
    use dhcproto::v4::{DhcpOption, MessageType, OptionCode};
    if !require_root("proxy_mode_beside_dnsmasq")
        || !require_tool("proxy_mode_beside_dnsmasq", "dnsmasq", "dnsmasq-base")
        || !require_tool("proxy_mode_beside_dnsmasq", "dhclient", "isc-dhcp-client")
    {
        return;
    }
    // client ns: bridge `br` over the veth to our server and a veth to the site ns,
    // where dnsmasq is the site's DHCP server on 198.18.0.3.
    let lab = Lab::bare("dhp");
    let site = gb10_lab::Netns::new(format!("gb10-dhp-x{}", lab.id));
    let (br, to_site, site_if) = (
        format!("br{}", lab.id),
        format!("gx{}", lab.id),
        format!("gy{}", lab.id),
    );
    lab.client.ip(&["link", "add", &br, "type", "bridge"]);
    lab.client
        .ip(&["link", "set", &lab.client_if, "master", &br]);
    lab.client.ip(&[
        "link", "add", &to_site, "type", "veth", "peer", "name", &site_if,
    ]);
    lab.client
        .ip(&["link", "set", &site_if, "netns", &site.name]);
    lab.client.ip(&["link", "set", &to_site, "master", &br]);
    lab.client.ip(&["link", "set", &to_site, "up"]);
    lab.client.ip(&["link", "set", &br, "up"]);
    site.ip(&["addr", "add", "198.18.0.3/24", "dev", &site_if]);
    site.ip(&["link", "set", &site_if, "up"]);
    let mut dnsmasq = site.cmd("dnsmasq");
    dnsmasq
        .args([
            "--no-daemon",
            "--port=0",
            "--bind-interfaces",
            "--no-resolv",
        ])
        .args(["--no-hosts", "--user=root", "--log-dhcp", "--pid-file="])
        .arg(format!("--interface={site_if}"))
        .arg("--dhcp-range=198.18.0.160,198.18.0.170,2m")
        .arg(format!(
            "--dhcp-leasefile={}",
            lab.dir.join("dnsmasq.leases").display()
        ));
    let _dnsmasq = Proc::spawn(dnsmasq, &lab.dir.join("dnsmasq.log"));

    let mut args = direct_args();
    args.extend(["--mode", "proxy"]);
    let _daemon = start(&lab, &args);

    // A plain client: its address from dnsmasq, nothing from us (counted).
    let hook = Hook::dhclient(&lab);
    let mut cmd = lab.client.cmd("dhclient");
    cmd.args(["-4", "-d", "-1", "-v", "-lf"])
        .arg(lab.dir.join("dhclient.leases"))
        .arg("-pf")
        .arg(lab.dir.join("dhclient.pid"))
        .arg("-sf")
        .arg(&hook.script)
        .arg(&br);
    let plain = Proc::spawn(cmd, &lab.dir.join("dhclient.log"));
    let bound = hook.wait("BOUND", 1, Duration::from_secs(30));
    let client_ip: std::net::Ipv4Addr = field(&bound, "ip").parse().expect("client ip");
    assert_eq!(field(&bound, "serverid"), "198.18.0.3", "{bound}");
    drop(plain);
    assert!(
        wait_metric(
            &lab,
            "gb10_dhcp_no_reply_total",
            &[("reason", "not_pxe")],
            2.0
        ) >= 2.0,
        "DISCOVER and REQUEST of the plain client are counted"
    );
    assert_eq!(
        metrics(&lab).value(
            "gb10_dhcp_replies_total",
            &[("mac", &format_mac(&lab.client_mac())), ("type", "offer")]
        ),
        0.0
    );

    // A PXE-class client: an address from dnsmasq, the boot file from us.
    let capture = require_tool("proxy_mode_beside_dnsmasq", "tcpdump", "tcpdump")
        .then(|| Capture::start(&lab, "proxy"));
    let iface = br.clone();
    let sock = lab.client.enter(move || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
        s.set_reuse_address(true).expect("reuse");
        s.set_broadcast(true).expect("broadcast");
        s.bind_device(Some(iface.as_bytes())).expect("bind device");
        s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], 68)).into())
            .expect("bind :68");
        std::net::UdpSocket::from(s)
    });
    let mac = [0x52, 0x54, 0, 0xaa, 0xbb, 0x07];
    // A real client sends its DHCP frames from its own MAC: the XDP identity check (on by
    // default) drops a chaddr that is not the frame's source.
    let as_client = |m: [u8; 6]| {
        lab.client
            .ip(&["link", "set", &br, "address", &format_mac(&m)])
    };
    as_client(mac);
    let discover = pxe_request(mac, MessageType::Discover, std::net::Ipv4Addr::UNSPECIFIED);
    sock.send_to(&discover, "255.255.255.255:67")
        .expect("send DISCOVER");
    let replies = collect_replies(&sock, Duration::from_secs(3));
    let from = |ip: &str| {
        replies
            .iter()
            .filter(|(f, m)| f.ip().to_string() == ip && m.chaddr() == mac)
            .map(|(_, m)| m)
            .collect::<Vec<_>>()
    };
    let site_offer = from("198.18.0.3");
    assert_eq!(site_offer.len(), 1, "dnsmasq offers: {replies:?}");
    assert!(!site_offer[0].yiaddr().is_unspecified());
    let ours = from(lab.server_ip);
    assert_eq!(ours.len(), 1, "our proxy offers: {replies:?}");
    let proxy = ours[0];
    assert_eq!(proxy.opts().msg_type(), Some(MessageType::Offer));
    assert!(
        proxy.yiaddr().is_unspecified(),
        "proxy never hands out addresses"
    );
    assert_eq!(file(proxy), "ipxe.efi");
    assert_eq!(proxy.siaddr().to_string(), lab.server_ip);
    assert!(matches!(
        proxy.opts().get(OptionCode::ClassIdentifier),
        Some(DhcpOption::ClassIdentifier(c)) if c == b"PXEClient"
    ));
    assert!(matches!(
        proxy.opts().get(OptionCode::VendorExtensions),
        Some(DhcpOption::VendorExtensions(v)) if v == &[6, 1, 8, 255]
    ));

    // Boot-server REQUEST on port 4011 from the configured address: an ACK with the file.
    let request = pxe_request(mac, MessageType::Request, client_ip);
    sock.send_to(&request, format!("{}:4011", lab.server_ip))
        .expect("send to 4011");
    let acks = collect_replies(&sock, Duration::from_secs(3));
    let ack = acks
        .iter()
        .find(|(f, m)| f.port() == 4011 && m.chaddr() == mac)
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("no ACK from port 4011: {acks:?}"));
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(file(ack), "ipxe.efi");
    assert!(ack.yiaddr().is_unspecified());
    if let Some(capture) = capture {
        let decoded = capture.decode(2);
        assert!(decoded.contains("Vendor-Option (43)"), "{decoded}");
    }

    // Firmware that ignores the proxy offer: DISCOVER, offer, DISCOVER again, no
    // REQUEST. The first offer counts as unanswered for that MAC; the client above
    // followed its offer up, so it has none.
    let deaf = [0x52, 0x54, 0, 0xaa, 0xbb, 0x08];
    as_client(deaf);
    for _ in 0..2 {
        let d = pxe_request(deaf, MessageType::Discover, std::net::Ipv4Addr::UNSPECIFIED);
        sock.send_to(&d, "255.255.255.255:67")
            .expect("send DISCOVER");
        collect_replies(&sock, Duration::from_millis(500));
    }
    let unanswered = |m: [u8; 6]| {
        metrics(&lab).value(
            "gb10_dhcp_offers_unanswered_total",
            &[("mac", &format_mac(&m))],
        )
    };
    assert_eq!(unanswered(deaf), 1.0);
    assert_eq!(unanswered(mac), 0.0);
}

/// A lab whose LAN is a /18, so pools hold thousands of clients; the client end keeps
/// 198.18.0.2 (perfdhcp speaks as a relay from it).
#[track_caller]
fn big_lab(tag: &str) -> Lab {
    let mut lab = Lab::new(tag);
    for (ns, ifc, ip) in [
        (&lab.server, &lab.server_if, lab.server_ip),
        (&lab.client, &lab.client_if, lab.client_ip),
    ] {
        ns.ip(&["addr", "del", &format!("{ip}/24"), "dev", ifc]);
        ns.ip(&["addr", "add", &format!("{ip}/18"), "dev", ifc]);
    }
    lab.prefix = 18;
    // perfdhcp and RelayClient act as a relay: their giaddr is on a relayed subnet the
    // server reaches over the LAN link (a giaddr on the LAN's own subnet gets nothing).
    lab.client.ip(&[
        "addr",
        "add",
        &format!("{RELAY_IP}/18"),
        "dev",
        &lab.client_if,
    ]);
    lab.server
        .ip(&["route", "add", "198.19.0.0/18", "dev", &lab.server_if]);
    lab
}

/// The load generators' relay address (see [`big_lab`]).
const RELAY_IP: &str = "198.19.0.2";

fn big_args() -> Vec<&'static str> {
    vec![
        "--dhcp-range",
        "198.18.1.0-198.18.63.250",
        "--dhcp-relay-ranges",
        "198.19.0.0/18=198.19.1.0-198.19.63.250",
        "--lease-time",
        "1h",
    ]
}

/// Runs perfdhcp in the client namespace; (success, output).
fn perfdhcp(lab: &Lab, args: &[&str]) -> (bool, String) {
    let out = lab
        .client
        .cmd("timeout")
        .args(["120", "perfdhcp", "-4", "-l", RELAY_IP, "-x", "e"])
        .args(args)
        .arg(lab.server_ip)
        .output()
        .expect("perfdhcp");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Where the kernels dropped packets: the server's LAN veth and UDP counters, and UDP's
/// on the client side (perfdhcp's own receive buffer).
fn drop_counters(lab: &Lab) -> String {
    let out = |o: std::process::Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let link = out(gb10_lab::run(lab.server.cmd("ip").args([
        "-s",
        "-s",
        "link",
        "show",
        "dev",
        &lab.server_if,
    ])));
    let udp = |ns: &gb10_lab::Netns| {
        out(gb10_lab::run(
            ns.cmd("grep").args(["^Udp:", "/proc/net/snmp"]),
        ))
    };
    format!(
        "server {link}server {}client {}",
        udp(&lab.server),
        udp(&lab.client)
    )
}

#[test]
fn perfdhcp_1000_per_second_for_10_s_without_loss() {
    if !require_root("perfdhcp_1000_per_second_for_10_s_without_loss")
        || !require_tool("perfdhcp", "perfdhcp", "kea-admin")
    {
        return;
    }
    let lab = big_lab("dhr");
    let daemon = start(&lab, &big_args());
    let overflowed_before = udp_counters(&lab.client)["RcvbufErrors"];
    let (ok, out) = perfdhcp(
        &lab,
        &[
            "-r", "1000", "-p", "10", "-R", "12000", "-u", // 1,000 DORA/s for 10 s
            "-W", "2000000", // wait 2 s for the replies still in flight at the end
        ],
    );
    println!("{out}");
    let stat = |key: &str| -> Vec<f64> {
        out.lines()
            .filter_map(|l| l.trim().strip_prefix(key))
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    let (sent, drops) = (stat("sent packets:"), stat("drops:").iter().sum::<f64>());
    // What XDP refused (the guard's rate limits) and the kernels' counters, to tell
    // whose loss a drop is.
    let m = metrics(&lab);
    let refused = [
        "gb10_xdp_rate_limited_total",
        "gb10_xdp_malformed_dropped_total",
    ]
    .map(|name| format!("{name} {}", m.value(name, &[])));
    let context = format!(
        "{out}\n{refused:?}\n{}\n{}",
        drop_counters(&lab),
        daemon.log()
    );
    assert!(ok || drops > 0.0, "perfdhcp failed:\n{context}");
    // The daemon's side: every request perfdhcp sent reached its socket (nothing
    // dropped by XDP, the veth or a full buffer) and was answered.
    let server = udp_counters(&lab.server);
    assert_eq!(server["RcvbufErrors"] + server["InErrors"], 0, "{context}");
    assert!(
        server["InDatagrams"] as f64 >= sent.iter().sum::<f64>(),
        "requests lost on the way to the daemon:\n{context}"
    );
    assert!(
        server["OutDatagrams"] >= server["InDatagrams"],
        "requests left unanswered:\n{context}"
    );
    // perfdhcp's side: on a machine shared with builds it can fall behind reading its
    // replies, and the kernel drops them at its full receive buffer. Those are its own
    // losses, counted apart; any other drop is the test's failure.
    let overflowed = udp_counters(&lab.client)["RcvbufErrors"] - overflowed_before;
    assert!(
        drops <= overflowed as f64,
        "{drops} drops, only {overflowed} of them at perfdhcp's own receive buffer:\n{context}"
    );
    if drops > 0.0 {
        println!("perfdhcp lost {drops} replies at its own full receive buffer (a loaded machine)");
    }
    // perfdhcp paces itself; on a machine shared with builds it may fall short of the
    // rate it was asked for, so the floor here is half of it.
    assert!(
        sent[0] >= 5_000.0,
        "only {} exchanges started:\n{out}",
        sent[0]
    );
}

/// The UDP counters of a namespace (`/proc/net/snmp`), by name.
fn udp_counters(ns: &gb10_lab::Netns) -> std::collections::HashMap<String, u64> {
    let out = gb10_lab::run(ns.cmd("grep").args(["^Udp:", "/proc/net/snmp"]));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines().map(|l| l.split_whitespace().skip(1));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("no UDP counters: {text}");
    };
    names
        .zip(values)
        .map(|(n, v)| (n.to_owned(), v.parse().unwrap_or(0)))
        .collect()
}

#[test]
fn perfdhcp_avalanche_leases_all_1000() {
    if !require_root("perfdhcp_avalanche_leases_all_1000")
        || !require_tool("perfdhcp", "perfdhcp", "kea-admin")
    {
        return;
    }
    let lab = big_lab("dha");
    let daemon = start(&lab, &big_args());
    let (ok, out) = perfdhcp(
        &lab,
        &[
            "--scenario",
            "avalanche",
            "-R",
            "1000",
            "-u",
            "-W",
            "2000000",
        ],
    );
    println!("{out}");
    assert!(ok, "perfdhcp avalanche failed:\n{out}\n{}", daemon.log());
}

/// A relay-style DHCP client in the client namespace (like perfdhcp: from
/// [`RELAY_IP`]:67 with giaddr set), so the test knows exactly which ACKs it saw.
struct RelayClient {
    sock: std::net::UdpSocket,
    giaddr: std::net::Ipv4Addr,
    server: std::net::SocketAddr,
}

impl RelayClient {
    fn open(lab: &Lab) -> Self {
        let giaddr: std::net::Ipv4Addr = RELAY_IP.parse().expect("relay ip");
        let sock = lab.client.enter(move || {
            let s = std::net::UdpSocket::bind((giaddr, 67)).expect("bind relay port");
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .expect("timeout");
            s
        });
        Self {
            sock,
            giaddr,
            server: format!("{}:67", lab.server_ip).parse().expect("server"),
        }
    }

    fn send(
        &self,
        mac: [u8; 6],
        xid: u32,
        ty: dhcproto::v4::MessageType,
        extra: &[dhcproto::v4::DhcpOption],
    ) {
        use dhcproto::{
            Encodable as _, Encoder,
            v4::{DhcpOption, Message},
        };
        let unspecified = std::net::Ipv4Addr::UNSPECIFIED;
        let mut m = Message::new_with_id(
            xid,
            unspecified,
            unspecified,
            unspecified,
            self.giaddr,
            &mac,
        );
        m.opts_mut().insert(DhcpOption::MessageType(ty));
        for o in extra {
            m.opts_mut().insert(o.clone());
        }
        let mut buf = Vec::new();
        m.encode(&mut Encoder::new(&mut buf)).expect("encode");
        let _ = self.sock.send_to(&buf, self.server);
    }

    /// The next reply with `xid`, within the socket timeout.
    fn reply(&self, xid: u32) -> Option<dhcproto::v4::Message> {
        use dhcproto::{Decodable as _, Decoder};
        let mut buf = [0u8; 1500];
        let deadline = Instant::now() + Duration::from_millis(300);
        while Instant::now() < deadline {
            let (n, _) = self.sock.recv_from(&mut buf).ok()?;
            if let Ok(m) = dhcproto::v4::Message::decode(&mut Decoder::new(&buf[..n]))
                && m.xid() == xid
            {
                return Some(m);
            }
        }
        None
    }

    /// One DISCOVER-OFFER-REQUEST-ACK; the address when the ACK arrived.
    fn dora(&self, mac: [u8; 6], xid: u32) -> Option<std::net::Ipv4Addr> {
        use dhcproto::v4::{DhcpOption, MessageType};
        self.send(mac, xid, MessageType::Discover, &[]);
        let offer = self.reply(xid)?;
        if offer.opts().msg_type() != Some(MessageType::Offer) {
            return None;
        }
        let ip = offer.yiaddr();
        self.send(
            mac,
            xid,
            MessageType::Request,
            &[
                DhcpOption::ServerIdentifier(self.server_ip()),
                DhcpOption::RequestedIpAddress(ip),
            ],
        );
        let ack = self.reply(xid)?;
        (ack.opts().msg_type() == Some(MessageType::Ack) && ack.yiaddr() == ip).then_some(ip)
    }

    fn server_ip(&self) -> std::net::Ipv4Addr {
        match self.server {
            std::net::SocketAddr::V4(v4) => *v4.ip(),
            std::net::SocketAddr::V6(_) => unreachable!("IPv4 lab"),
        }
    }
}

#[test]
fn kill_9_under_load_loses_no_acked_lease() {
    use std::sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    };
    if !require_root("kill_9_under_load_loses_no_acked_lease") {
        return;
    }
    const KILLS: usize = 50;
    let lab = big_lab("dhk");
    let client = RelayClient::open(&lab);
    type Acked = Vec<([u8; 6], std::net::Ipv4Addr)>;
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let load = std::thread::spawn({
        let (acked, stop) = (acked.clone(), stop.clone());
        move || {
            let started = Instant::now();
            let mut n: u32 = 0;
            // Bounded in count and time: 200k transactions or 10 minutes.
            while !stop.load(Ordering::Relaxed)
                && n < 200_000
                && started.elapsed() < Duration::from_secs(600)
            {
                n += 1;
                let mac = [
                    0x02,
                    0x4b,
                    (n >> 24) as u8,
                    (n >> 16) as u8,
                    (n >> 8) as u8,
                    n as u8,
                ];
                if let Some(ip) = client.dora(mac, n) {
                    acked.lock().unwrap().push((mac, ip));
                }
            }
        }
    });
    let started = Instant::now();
    for round in 0..KILLS {
        assert!(
            started.elapsed() < Duration::from_secs(480),
            "kill loop too slow at round {round}"
        );
        let mut daemon = start(&lab, &big_args());
        // Let some exchanges through, a different share each round.
        std::thread::sleep(Duration::from_millis(150 + (round as u64 * 37) % 300));
        daemon.signal(libc::SIGKILL);
        assert!(
            daemon.wait_exit(Duration::from_secs(10)).is_some(),
            "SIGKILL ignored?"
        );
    }
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > KILLS * 20,
        "too little load: {} ACKs",
        acked.len()
    );

    // No address was ACKed to two clients.
    let mut by_ip = std::collections::HashMap::new();
    for (mac, ip) in &acked {
        if let Some(other) = by_ip.insert(*ip, *mac) {
            assert_eq!(other, *mac, "{ip} ACKed to two clients");
        }
    }
    // Every ACKed lease is in the store (its table and its log) after the last kill.
    let store = gb10_provision::store::Store::open(&lab.dir.join("data")).expect("store");
    let log = gb10_provision::dhcp::store::log_dir(&lab.dir.join("data"));
    let (leases, skipped) = gb10_provision::dhcp::store::load(&store, &log);
    assert_eq!(skipped, 0);
    let stored: std::collections::HashMap<_, _> = leases.iter().map(|l| (l.ip, l.mac.0)).collect();
    let missing: Vec<_> = acked
        .iter()
        .filter(|(mac, ip)| stored.get(ip) != Some(mac))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} ACKed leases missing from the store, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    println!(
        "{} ACKed leases over {KILLS} kill -9 rounds, all on disk",
        acked.len()
    );
}

#[test]
fn dhcrelay_relays_a_client_on_another_subnet() {
    if !require_root("dhcrelay_relays_a_client_on_another_subnet")
        || !require_tool("dhcrelay", "dhcrelay", "isc-dhcp-relay")
        || !require_tool("dhcrelay", "udhcpc", "udhcpc")
    {
        return;
    }
    // server ns ── 198.18.0.0/24 ── relay ns (the lab's client end, 198.18.0.2)
    //                               relay ns (198.19.1.1) ── far ns (the DHCP client)
    let lab = Lab::new("dhy");
    let far = lab.far_subnet("198.19.1.1", "198.19.1.0/24");
    let mut args = direct_args();
    args.extend([
        "--dhcp-relay-ranges",
        "198.19.1.0/24=198.19.1.100-198.19.1.150,198.19.1.1",
    ]);
    let _daemon = lab.start_daemon(BIN, &args);
    let _relay = lab.dhcrelay(&far);

    let hook = Hook::udhcpc(&lab);
    let mut cmd = far.ns.cmd("udhcpc");
    cmd.args(["-f", "-i", &far.far_if, "-t", "20", "-T", "1", "-A", "1"])
        .arg("-s")
        .arg(&hook.script);
    let _client = Proc::spawn(cmd, &lab.dir.join("udhcpc.log"));
    let bound = hook.wait("bound", 1, Duration::from_secs(30));
    let ip: std::net::Ipv4Addr = field(&bound, "ip").parse().expect("ip");
    let (start, end): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (
        "198.19.1.100".parse().unwrap(),
        "198.19.1.150".parse().unwrap(),
    );
    assert!((start..=end).contains(&ip), "{bound}");
    assert_eq!(field(&bound, "router"), "198.19.1.1", "{bound}");
}

/// tcpdump on the server's LAN end, writing our replies (from ports 67 and 4011).
struct Capture {
    proc: Option<Proc>,
    pcap: PathBuf,
}

impl Capture {
    fn start(lab: &Lab, name: &str) -> Self {
        let pcap = lab.dir.join(format!("{name}.pcap"));
        let mut cap = lab.server.cmd("tcpdump");
        cap.args(["-U", "-n", "-i", &lab.server_if, "-w"])
            .arg(&pcap)
            .args(["udp and (src port 67 or src port 4011)"]);
        let proc = Some(Proc::spawn(cap, &lab.dir.join(format!("{name}.log"))));
        std::thread::sleep(Duration::from_millis(500));
        Self { proc, pcap }
    }

    /// Stops the capture and decodes it with tcpdump -vvv, an independent DHCP parser:
    /// at least `replies` BOOTP replies, none with a complaint.
    #[track_caller]
    fn decode(mut self, replies: usize) -> String {
        std::thread::sleep(Duration::from_millis(500));
        drop(self.proc.take());
        let decoded = run_ok(
            Command::new("tcpdump")
                .args(["-n", "-vvv", "-r"])
                .arg(&self.pcap),
        );
        println!("{decoded}");
        assert!(decoded.matches("Reply").count() >= replies, "{decoded}");
        for bad in [
            "[|bootp]",
            "malformed",
            "Malformed",
            "invalid",
            "bad length",
            "[|",
        ] {
            assert!(!decoded.contains(bad), "tcpdump flags `{bad}`:\n{decoded}");
        }
        decoded
    }
}

#[test]
fn replies_decode_cleanly_in_tcpdump() {
    if !require_root("replies_decode_cleanly_in_tcpdump")
        || !require_tool("replies_decode_cleanly_in_tcpdump", "tcpdump", "tcpdump")
        || !require_tool("replies_decode_cleanly_in_tcpdump", "udhcpc", "udhcpc")
    {
        return;
    }
    let lab = Lab::bare("dht");
    let _daemon = start(&lab, &direct_args());
    let capture = Capture::start(&lab, "replies");
    // Two clients in turn: UEFI PXE (file, siaddr, option 60) and iPXE (URL, 175).
    for (tag, extra) in [
        (
            "uefi",
            vec!["-V", "PXEClient:Arch:00007:UNDI:003000", "-x", "0x5d:0007"],
        ),
        (
            "ipxe",
            vec![
                "-V",
                "PXEClient:Arch:00007:UNDI:003010",
                "-x",
                "0x5d:0007",
                "-x",
                "0x4d:69505845",
            ],
        ),
    ] {
        let hook = Hook::udhcpc(&lab);
        let mut cmd = lab.client.cmd("udhcpc");
        cmd.args([
            "-f",
            "-q",
            "-i",
            &lab.client_if,
            "-t",
            "10",
            "-T",
            "1",
            "-A",
            "1",
        ])
        .args(&extra)
        .arg("-s")
        .arg(&hook.script);
        let _c = Proc::spawn(cmd, &lab.dir.join(format!("udhcpc-{tag}.log")));
        let bound = hook.wait("bound", 1, Duration::from_secs(20));
        let want = if tag == "uefi" {
            "ipxe.efi"
        } else {
            "http://198.18.0.1:8080/boot.ipxe"
        };
        assert_eq!(field(&bound, "boot_file"), want, "{bound}");
    }
    let decoded = capture.decode(4);
    // Full-DHCP replies name the boot file; they do not echo PXEClient (EDK2 rejects an
    // offer that does: see boot.rs, and the firmware boots in cargo xtask e2e).
    assert!(decoded.contains("ipxe.efi"), "{decoded}");
    assert!(decoded.contains("boot.ipxe"), "{decoded}");
}

#[test]
fn poisoned_lease_records_are_skipped_and_the_daemon_serves() {
    if !require_root("poisoned_lease_records_are_skipped_and_the_daemon_serves")
        || !require_tool("poisoned", "udhcpc", "udhcpc")
    {
        return;
    }
    let lab = Lab::bare("dhx");
    {
        // Two bad records (garbage; key and content disagree) beside one good lease.
        let store = gb10_provision::store::Store::open(&lab.dir.join("data")).expect("store");
        let good = gb10_provision::dhcp::leases::Lease {
            ip: "198.18.0.100".parse().unwrap(),
            client: gb10_provision::dhcp::leases::ClientId(vec![1, 2, 0, 0, 0, 0, 9]),
            mac: gb10_provision::mac::Mac([2, 0, 0, 0, 0, 9]),
            state: gb10_provision::dhcp::leases::LeaseState::Leased,
            expires: u64::MAX / 2,
            hostname: None,
        };
        let txn = store.db().begin_write().expect("txn");
        {
            let mut t = txn
                .open_table(gb10_provision::dhcp::store::LEASES)
                .expect("table");
            let encoded = gb10_provision::dhcp::store::encode(&good);
            t.insert(u32::from(good.ip), encoded.as_slice())
                .expect("good");
            t.insert(0xc612_0065, [1u8, 1, 0xff].as_slice())
                .expect("garbage");
            t.insert(0xc612_0066, encoded.as_slice())
                .expect("key mismatch");
        }
        txn.commit().expect("commit");
    }
    let _daemon = start(&lab, &direct_args());
    let m = metrics(&lab);
    assert_eq!(m.value("gb10_dhcp_leases_restored", &[]), 1.0);
    assert_eq!(m.value("gb10_dhcp_store_records_skipped", &[]), 2.0);
    let hook = Hook::udhcpc(&lab);
    let _client = udhcpc(&lab, &hook);
    let bound = hook.wait("bound", 1, Duration::from_secs(20));
    let ip = field(&bound, "ip");
    assert!(in_range(ip), "{bound}");
    assert_ne!(
        ip, "198.18.0.120",
        "the restored lease is not handed to another client"
    );
}

/// Not a pass/fail test: how many DORA/s perfdhcp gets at full speed (run it with
/// `cargo test --release … -- --ignored --nocapture perfdhcp_max_rate`).
#[test]
#[ignore = "a measurement; run explicitly, in release"]
fn perfdhcp_max_rate() {
    if !require_root("perfdhcp_max_rate") || !require_tool("perfdhcp", "perfdhcp", "kea-admin") {
        return;
    }
    let lab = big_lab("dhz");
    // The daemon's rate, not the guard's: perfdhcp is one relay on purpose faster than
    // the global cap on unknown clients (2,500/s), so that cap is lifted; XDP stays.
    let mut args = big_args();
    args.extend(["--guard-global-rate", "0"]);
    let _daemon = start(&lab, &args);
    let (_, out) = perfdhcp(&lab, &["-p", "10", "-R", "16000", "-W", "2000000"]);
    println!("{out}");
}

#[test]
fn unknown_clients_can_be_ignored() {
    if !require_root("unknown_clients_can_be_ignored")
        || !require_tool("unknown_clients_can_be_ignored", "udhcpc", "udhcpc")
    {
        return;
    }
    let lab = Lab::bare("dhn");
    let mut args = direct_args();
    args.extend(["--boot-unknown-clients", "ignore"]);
    let _daemon = start(&lab, &args);
    let hook = Hook::udhcpc(&lab);
    let out = lab
        .client
        .cmd("timeout")
        .args([
            "20",
            "udhcpc",
            "-f",
            "-n",
            "-q",
            "-i",
            &lab.client_if,
            "-t",
            "2",
            "-T",
            "1",
        ])
        .arg("-s")
        .arg(&hook.script)
        .output()
        .expect("udhcpc");
    assert!(
        !out.status.success(),
        "an unknown client got a lease: {out:?}"
    );
    let events = std::fs::read_to_string(&hook.events).unwrap_or_default();
    assert!(!events.contains("bound"), "{events}");
    assert!(
        wait_metric(
            &lab,
            "gb10_dhcp_no_reply_total",
            &[("reason", "ignored")],
            2.0
        ) >= 2.0
    );
}
