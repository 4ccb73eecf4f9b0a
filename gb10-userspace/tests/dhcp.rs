//! The DHCP responder against real clients in network namespaces: udhcpc (busybox),
//! dhclient (isc-dhcp-client) and dhcpcd get, renew and release leases in direct mode;
//! a fixed host gets its address; malformed datagrams are counted and dropped.
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
        "--xdp",
        "off",
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
            r#"echo "$1 ip=$ip hostname=$hostname boot_file=$boot_file siaddr=$siaddr serverid=$serverid lease=$lease" >> "$EVENTS"
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
    let out = lab
        .server
        .cmd("curl")
        .args(["-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}", &url])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
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
            mac,
            frames::BROADCAST,
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            68,
            67,
            &[],
            payload,
        ));
    }
    for (_, reason) in &cases {
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
