//! Network-namespace labs for gb10-provision's privileged tests: namespaces joined by
//! veth pairs with 198.18.0.0/15 addresses, the real daemon started inside, real
//! clients run with `ip netns exec`, raw frames sent from chosen MACs. Everything is
//! torn down on Drop, also when the test panics.
use std::{
    fs::File,
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

pub mod browser;
pub mod debs;
pub mod flood;
pub mod frames;
pub mod hostile;
pub mod storm;

/// Deterministic bytes, different per `seed`, that neither repeat nor compress away
/// (xorshift, eight bytes a step: a 1 GiB image is generated in about a second).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// True when running as root. Otherwise prints a visible SKIP line naming the test.
#[track_caller]
pub fn require_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!(
        "SKIP {test}: needs root (network namespaces, veth, XDP); run the test command as root"
    );
    println!("SKIP {test}: needs root");
    false
}

/// True when `tool` is on PATH; otherwise prints a SKIP line naming the package.
pub fn require_tool(test: &str, tool: &str, package: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()));
    if !found {
        eprintln!(
            "SKIP {test}: `{tool}` missing; apt-get install {package} (cargo xtask setup does)"
        );
        println!("SKIP {test}: `{tool}` missing");
    }
    found
}

/// Prints a SKIP line straight to stderr: the test harness captures `eprintln!` of
/// passing tests, and a skip must be seen. Under `GB10_NO_SKIP=1` (what `cargo xtask
/// test` sets once setup has installed everything) a skip is a failure instead, so CI
/// cannot pass a test that did not run.
#[track_caller]
pub fn skip(test: &str, why: &str) {
    if std::env::var_os("GB10_NO_SKIP").is_some_and(|v| v == "1") {
        panic!("{test} cannot run: {why} (GB10_NO_SKIP=1)");
    }
    let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A short id unique within this machine for the life of the test process.
fn unique() -> u32 {
    (std::process::id() % 10_000) * 100 + NEXT.fetch_add(1, Ordering::Relaxed) % 100
}

/// Runs a command and panics with its output when it fails.
#[track_caller]
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    out
}

#[track_caller]
fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

/// A network namespace, deleted on Drop (which also destroys its veth ends).
pub struct Netns {
    pub name: String,
}

impl Netns {
    #[track_caller]
    pub fn new(name: String) -> Self {
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        // IPv6 off: no router solicitations or DAD noise in the counters.
        let _ = ns
            .cmd("sysctl")
            .args(["-qw", "net.ipv6.conf.all.disable_ipv6=1"])
            .output();
        let _ = ns
            .cmd("sysctl")
            .args(["-qw", "net.ipv6.conf.default.disable_ipv6=1"])
            .output();
        ns
    }

    /// The Ethernet address of `iface` in this namespace.
    #[track_caller]
    pub fn mac(&self, iface: &str) -> [u8; 6] {
        let out = run(self
            .cmd("cat")
            .arg(format!("/sys/class/net/{iface}/address")));
        parse_mac(String::from_utf8_lossy(&out.stdout).trim())
            .unwrap_or_else(|| panic!("no MAC for {iface} in {}", self.name))
    }

    /// A command that runs `program` inside this namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// `ip -n NS ARGS…`, panicking on failure.
    #[track_caller]
    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full);
    }

    /// `curl URL` from this namespace with a timeout in seconds: (HTTP status, body);
    /// status 0 when nothing answered.
    pub fn curl(&self, url: &str, timeout_s: f32) -> (u16, String) {
        self.curl_with(url, timeout_s, &[])
    }

    /// As [`Netns::curl`], with `Authorization: Bearer token`.
    pub fn curl_token(&self, url: &str, timeout_s: f32, token: &str) -> (u16, String) {
        let header = format!("Authorization: Bearer {token}");
        self.curl_with(url, timeout_s, &["-H", &header])
    }

    fn curl_with(&self, url: &str, timeout_s: f32, extra: &[&str]) -> (u16, String) {
        let out = self
            .cmd("curl")
            .args(["-sS", "-m", &timeout_s.to_string(), "-o", "-"])
            .args(["-w", "\n%{http_code}"])
            .args(extra)
            .arg(url)
            .output()
            .expect("curl (apt-get install curl)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    /// `curl` POSTing `body` as JSON to `url` from this namespace; panics unless 2xx.
    #[track_caller]
    pub fn post_json(&self, url: &str, body: &str) {
        run(self.cmd("curl").args([
            "-sS",
            "-f",
            "-m",
            "5",
            "-H",
            "Content-Type: application/json",
            "--data",
            body,
            url,
        ]));
    }

    /// dnsmasq as a DHCP server (no DNS) on `iface` handing out `range`
    /// (`START,END,MASK,LEASE`), in the foreground, stopped on drop. It offers at once
    /// (`--no-ping`: by default it pings an address for ~3 s before offering it).
    pub fn dnsmasq_dhcp(&self, iface: &str, range: &str, dir: &Path, extra: &[&str]) -> Guard {
        let child = self
            .cmd("dnsmasq")
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--port=0",
            ])
            .args([
                "--bind-interfaces",
                "--no-ping",
                "--conf-file=/dev/null",
                "--pid-file=",
            ])
            .arg(format!("--interface={iface}"))
            .arg(format!("--dhcp-range={range}"))
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.join(format!("dnsmasq-{iface}.leases")).display()
            ))
            .args(extra)
            .spawn()
            .expect("dnsmasq (apt-get install dnsmasq-base)");
        Guard(child)
    }

    /// `dhclient -1` on `iface` (its default script configures the address), bounded by
    /// `timeout_s`: the address it was bound to, if any, and a guard that stops the
    /// dhclient it left in the background (by the PID it wrote).
    pub fn dhclient_once(
        &self,
        iface: &str,
        dir: &Path,
        timeout_s: u32,
    ) -> (Option<String>, PidGuard) {
        let pidfile = dir.join(format!("dhclient-{iface}.pid"));
        let out = self
            .cmd("timeout")
            .args([&timeout_s.to_string(), "dhclient", "-1", "-v"])
            .arg("-pf")
            .arg(&pidfile)
            .arg("-lf")
            .arg(dir.join(format!("dhclient-{iface}.leases")))
            .arg(iface)
            .output()
            .expect("dhclient (apt-get install isc-dhcp-client)");
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse().ok());
        let text = String::from_utf8_lossy(&out.stderr);
        let leased = text
            .lines()
            .find_map(|l| {
                l.strip_prefix("bound to ")
                    .and_then(|r| r.split_whitespace().next())
            })
            .map(str::to_owned);
        (leased, PidGuard(pid))
    }

    /// UDP datagrams that reached this namespace's stack: delivered to a socket plus
    /// those for a port nobody listens on (`/proc/net/snmp` InDatagrams + NoPorts).
    /// A frame dropped by XDP never counts here.
    pub fn udp_reached(&self) -> u64 {
        self.udp_counter("InDatagrams") + self.udp_counter("NoPorts")
    }

    /// UDP datagrams dropped because the receiving socket's buffer was full
    /// (`/proc/net/snmp` RcvbufErrors): a receiver that could not keep up.
    pub fn udp_buffer_drops(&self) -> u64 {
        self.udp_counter("RcvbufErrors")
    }

    /// One field of the `Udp:` lines of this namespace's `/proc/net/snmp`.
    #[track_caller]
    fn udp_counter(&self, name: &str) -> u64 {
        let out = run(self.cmd("cat").arg("/proc/net/snmp"));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            panic!("no Udp lines in /proc/net/snmp");
        };
        let i = names
            .split_whitespace()
            .position(|n| n == name)
            .expect("snmp field");
        values
            .split_whitespace()
            .nth(i)
            .and_then(|v| v.parse().ok())
            .expect("snmp value")
    }

    /// Runs `f` on a thread that has entered this namespace; sockets it creates stay in
    /// the namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("namespace thread panicked")
    }

    /// As [`Netns::enter`], without waiting: the thread's handle.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            // SAFETY: setns on a namespace fd we hold, affecting only this thread.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A two-namespace lab: `server` and `client` joined by a veth pair on 198.18.0.0/24.
pub struct Lab {
    pub id: u32,
    /// Where the daemon runs; its end of the veth is `server_if` with `server_ip`.
    pub server: Netns,
    /// Where real clients run; its end is `client_if` with `client_ip` (unless bare).
    pub client: Netns,
    pub server_if: String,
    pub client_if: String,
    pub server_ip: &'static str,
    pub client_ip: &'static str,
    pub prefix: u8,
    /// Whether the client end has `client_ip` (see [`Lab::new`] and [`Lab::bare`]).
    pub client_addressed: bool,
    /// Scratch directory (data_path, logs), removed on Drop.
    pub dir: PathBuf,
}

impl Lab {
    /// Builds the lab with addresses on both ends.
    #[track_caller]
    pub fn new(tag: &str) -> Self {
        let mut lab = Self::bare(tag);
        let addr = format!("{}/24", lab.client_ip);
        lab.client
            .ip(&["addr", "add", &addr, "dev", &lab.client_if]);
        lab.client_addressed = true;
        lab
    }

    /// Builds the lab with the server address only: the client end has none (for DHCP
    /// clients to configure).
    #[track_caller]
    pub fn bare(tag: &str) -> Self {
        let id = unique();
        let server = Netns::new(format!("gb10-{tag}-s{id}"));
        let client = Netns::new(format!("gb10-{tag}-c{id}"));
        let (server_if, client_if) = (format!("gs{id}"), format!("gc{id}"));
        ip(&[
            "link", "add", &server_if, "type", "veth", "peer", "name", &client_if,
        ]);
        ip(&["link", "set", &server_if, "netns", &server.name]);
        ip(&["link", "set", &client_if, "netns", &client.name]);
        let (server_ip, client_ip) = ("198.18.0.1", "198.18.0.2");
        server.ip(&["addr", "add", &format!("{server_ip}/24"), "dev", &server_if]);
        server.ip(&["link", "set", &server_if, "up"]);
        client.ip(&["link", "set", &client_if, "up"]);
        let dir = std::env::temp_dir().join(format!("gb10-lab-{tag}-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating lab dir");
        Self {
            id,
            server,
            client,
            server_if,
            client_if,
            server_ip,
            client_ip,
            prefix: 24,
            client_addressed: false,
            dir,
        }
    }

    /// The client end's MAC address.
    pub fn client_mac(&self) -> [u8; 6] {
        self.client.mac(&self.client_if)
    }

    /// The server end's MAC address.
    pub fn server_mac(&self) -> [u8; 6] {
        self.server.mac(&self.server_if)
    }

    /// Starts the daemon in the server namespace serving the lab interface, with
    /// `extra` arguments after `serve`, and waits until `/healthz` answers.
    #[track_caller]
    pub fn start_daemon(&self, bin: &str, extra: &[&str]) -> Daemon {
        let mut daemon = self.spawn_daemon(bin, extra);
        if let Err(err) = daemon.wait_ready(self, Duration::from_secs(20)) {
            panic!(
                "daemon did not become ready: {err}\n--- log ---\n{}",
                daemon.log()
            );
        }
        daemon
    }

    /// Starts the daemon without waiting for it (for tests that expect it to fail).
    #[track_caller]
    pub fn spawn_daemon(&self, bin: &str, extra: &[&str]) -> Daemon {
        self.spawn_daemon_with(self.server.cmd(bin), extra)
    }

    /// As [`Lab::spawn_daemon`], from a prepared command (e.g. wrapped in setpriv).
    #[track_caller]
    pub fn spawn_daemon_with(&self, cmd: Command, extra: &[&str]) -> Daemon {
        spawn_daemon(
            cmd,
            &self.server_if,
            &format!("{}/{}", self.server_ip, self.prefix),
            &self.dir.join("data"),
            &self.dir,
            extra,
        )
    }

    /// `curl` from the client namespace (from the server's own when the client end has
    /// no address yet); returns (HTTP status, body).
    pub fn http(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}:{HTTP_PORT}{path}", self.server_ip);
        self.lan_side().curl(&url, 5.0)
    }

    /// Where [`Lab::http`] runs curl: the client end once it has an address.
    fn lan_side(&self) -> &Netns {
        if self.client_addressed {
            &self.client
        } else {
            &self.server
        }
    }

    /// As [`Lab::http`], with the admin token (see [`admin_token`]): the routes that
    /// show clients (`/clients`, `/explain`, `/metrics` and `/admin` on the LAN
    /// listener) need it.
    /// GET `path` from the client namespace through `via` (an interface name or a
    /// source address there), as a second machine on the LAN would: (status, body).
    pub fn get_via(&self, via: &str, path: &str) -> (u16, String) {
        self.curl_via(via, path, &[])
    }

    /// POSTs `json` to `path` from the client namespace through `via`, as
    /// [`Lab::get_via`] GETs: (status, body).
    pub fn post_via(&self, via: &str, path: &str, json: &str) -> (u16, String) {
        let headers = ["-H", "Content-Type: application/json", "--data", json];
        self.curl_via(via, path, &headers)
    }

    fn curl_via(&self, via: &str, path: &str, extra: &[&str]) -> (u16, String) {
        let out = self
            .client
            .cmd("curl")
            .args(["-sS", "-m", "10", "--interface", via, "-o", "-"])
            .args(["-w", "\n%{http_code}"])
            .args(extra)
            .arg(format!("http://{}:{HTTP_PORT}{path}", self.server_ip))
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_owned())
    }

    pub fn http_admin(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}:{HTTP_PORT}{path}", self.server_ip);
        self.lan_side()
            .curl_token(&url, 5.0, &admin_token(&self.dir))
    }

    /// The token the daemon takes by default (see [`admin_token`]).
    pub fn admin_token(&self) -> String {
        admin_token(&self.dir)
    }

    /// The file holding [`ADMIN_TOKEN`] (0600, in the lab's directory), for
    /// `--admin-token-file`.
    pub fn token_file(&self) -> String {
        token_file(&self.dir)
    }

    /// A macvlan on the client end in the client namespace with Ethernet address `mac`
    /// and, when given, `addr` (ADDRESS/PREFIX): another machine on the same LAN. The
    /// client namespace then answers ARP only on the interface that holds the address
    /// (`arp_ignore=1`), as separate machines would.
    #[track_caller]
    pub fn macvlan(&self, name: &str, mac: &str, addr: Option<&str>) {
        self.client.ip(&[
            "link",
            "add",
            name,
            "link",
            &self.client_if,
            "address",
            mac,
            "type",
            "macvlan",
            "mode",
            "bridge",
        ]);
        for key in ["all", "default", name, &self.client_if] {
            run(self
                .client
                .cmd("sysctl")
                .args(["-qw", &format!("net.ipv4.conf.{key}.arp_ignore=1")]));
        }
        if let Some(addr) = addr {
            self.client.ip(&["addr", "add", addr, "dev", name]);
        }
        self.client.ip(&["link", "set", name, "up"]);
    }

    /// `curl` of `http://IP:HTTP_PORT/PATH` from the client namespace with a short
    /// timeout; (status, body), status 0 when nothing answered.
    pub fn http_at(&self, ip: &str, path: &str) -> (u16, String) {
        self.client
            .curl(&format!("http://{ip}:{HTTP_PORT}{path}"), 1.0)
    }

    /// The current `/metrics` text, from the loopback health listener in the server
    /// namespace (where Prometheus on the node scrapes it; on the LAN it needs the token).
    #[track_caller]
    pub fn metrics(&self) -> Metrics {
        let (code, body) = self.server.curl(HEALTH_METRICS, 5.0);
        assert_eq!(code, 200, "/metrics: {body}");
        Metrics(body)
    }

    /// A subnet behind the client end, which routes between it and the LAN as a relay
    /// agent's host does: a new namespace holds `far_if` (no address: a DHCP client
    /// configures it), the client end holds `down` with `gateway`/24, and the server
    /// routes `subnet` via the client end. The client end must have its address
    /// ([`Lab::new`]). Dropping the result removes the namespace and the veth.
    #[track_caller]
    pub fn far_subnet(&self, gateway: &str, subnet: &str) -> FarSubnet {
        let ns = Netns::new(format!("gb10-far-{}", self.id));
        let (down, far_if) = (format!("gd{}", self.id), format!("gf{}", self.id));
        self.client.ip(&[
            "link", "add", &down, "type", "veth", "peer", "name", &far_if,
        ]);
        self.client.ip(&["link", "set", &far_if, "netns", &ns.name]);
        self.client
            .ip(&["addr", "add", &format!("{gateway}/24"), "dev", &down]);
        self.client.ip(&["link", "set", &down, "up"]);
        ns.ip(&["link", "set", &far_if, "up"]);
        self.server
            .ip(&["route", "add", subnet, "via", self.client_ip]);
        FarSubnet { ns, far_if, down }
    }

    /// ISC dhcrelay on the client end relaying `far`'s clients to the server, in the
    /// foreground (its log in the lab dir), stopped on drop.
    #[track_caller]
    pub fn dhcrelay(&self, far: &FarSubnet) -> Guard {
        let log = File::create(self.dir.join("dhcrelay.log")).expect("dhcrelay log");
        let child = self
            .client
            .cmd("dhcrelay")
            .args(["-4", "-d", "-id", &far.down, "-iu", &self.client_if, "-pf"])
            .arg(self.dir.join("dhcrelay.pid"))
            .arg(self.server_ip)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("dhcrelay (apt-get install isc-dhcp-relay)");
        Guard(child)
    }

    /// Whether an XDP program is attached to `iface` in namespace `ns` (per `ip link`).
    pub fn xdp_attached(ns: &Netns, iface: &str) -> bool {
        let out = run(ns.cmd("ip").args(["-d", "link", "show", "dev", iface]));
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
}

/// See [`Lab::far_subnet`].
pub struct FarSubnet {
    /// The far side: where the relayed DHCP client runs.
    pub ns: Netns,
    /// The far side's interface.
    pub far_if: String,
    /// The client end's interface towards the far side (dhcrelay's downstream).
    pub down: String,
}

/// A one-namespace LAN for virtual machines: a bridge holding the server address
/// (198.18.0.1/24, no routes, IPv6 off) and one tap device per VM, which QEMU opens by
/// name. The namespace (and with it bridge and taps) goes on Drop.
pub struct Bridge {
    pub ns: Netns,
    /// The bridge: the LAN interface the server side serves.
    pub iface: String,
    pub server_ip: &'static str,
    pub prefix: u8,
    /// Scratch directory (data_path, logs, VM files), removed on Drop unless kept.
    pub dir: PathBuf,
    taps: AtomicU32,
}

impl Bridge {
    #[track_caller]
    pub fn new(tag: &str) -> Self {
        let id = unique();
        let ns = Netns::new(format!("gb10-{tag}-{id}"));
        let iface = format!("br{id}");
        ns.ip(&["link", "add", &iface, "type", "bridge", "stp_state", "0"]);
        // No forward delay: firmware DHCPs within a second of the link coming up.
        ns.ip(&[
            "link",
            "set",
            &iface,
            "type",
            "bridge",
            "forward_delay",
            "0",
        ]);
        let server_ip = "198.18.0.1";
        ns.ip(&["addr", "add", &format!("{server_ip}/24"), "dev", &iface]);
        ns.ip(&["link", "set", &iface, "up"]);
        let dir = std::env::temp_dir().join(format!("gb10-lab-{tag}-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("creating lab dir");
        Self {
            ns,
            iface,
            server_ip,
            prefix: 24,
            dir,
            taps: AtomicU32::new(0),
        }
    }

    /// A new tap device on the bridge, up; its name (for QEMU's `ifname=`).
    #[track_caller]
    pub fn add_tap(&self) -> String {
        let tap = format!("tap{}", self.taps.fetch_add(1, Ordering::Relaxed));
        self.ns.ip(&["tuntap", "add", "dev", &tap, "mode", "tap"]);
        self.ns.ip(&["link", "set", &tap, "master", &self.iface]);
        self.ns.ip(&["link", "set", &tap, "up"]);
        tap
    }

    /// Another host on the LAN, as the site's own DHCP server would be: a namespace
    /// joined to the bridge by a veth, its end `site<id>` holding `ip`/24. Dropping the
    /// namespace removes the veth.
    #[track_caller]
    pub fn add_site(&self, ip: &str) -> (Netns, String) {
        let n = self.taps.fetch_add(1, Ordering::Relaxed);
        let site = Netns::new(format!("{}-site{n}", self.ns.name));
        let (here, there) = (format!("st{n}"), format!("site{n}"));
        self.ns
            .ip(&["link", "add", &here, "type", "veth", "peer", "name", &there]);
        self.ns.ip(&["link", "set", &there, "netns", &site.name]);
        self.ns.ip(&["link", "set", &here, "master", &self.iface]);
        self.ns.ip(&["link", "set", &here, "up"]);
        site.ip(&["addr", "add", &format!("{ip}/24"), "dev", &there]);
        site.ip(&["link", "set", &there, "up"]);
        (site, there)
    }

    /// Starts the daemon in the namespace serving the bridge, with `extra` arguments
    /// after `serve`, and waits until `/healthz` answers.
    pub fn start_daemon(&self, bin: &str, extra: &[&str]) -> Result<Daemon, String> {
        let data = self.dir.join("data");
        let mut daemon = spawn_daemon(
            self.ns.cmd(bin),
            &self.iface,
            &format!("{}/{}", self.server_ip, self.prefix),
            &data,
            &self.dir,
            extra,
        );
        let ready = wait_until(Duration::from_secs(20), || {
            daemon.try_status().is_some() || self.http("/healthz").0 == 200
        });
        match (ready, daemon.try_status()) {
            (Some(_), None) => Ok(daemon),
            (_, Some(status)) => Err(format!("daemon exited: {status}\n{}", daemon.log())),
            (None, None) => Err(format!("/healthz not ready after 20 s\n{}", daemon.log())),
        }
    }

    /// `curl` of `PATH` on the daemon from inside the namespace: (status, body).
    pub fn http(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}:{HTTP_PORT}{path}", self.server_ip);
        curl(self.ns.cmd("curl"), &url)
    }

    /// As [`Bridge::http`], with the admin token (see [`Lab::http_admin`]).
    pub fn http_admin(&self, path: &str) -> (u16, String) {
        let url = format!("http://{}:{HTTP_PORT}{path}", self.server_ip);
        self.ns.curl_token(&url, 5.0, &admin_token(&self.dir))
    }

    /// See [`Lab::token_file`].
    pub fn token_file(&self) -> String {
        token_file(&self.dir)
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("GB10_KEEP_LAB").is_some() {
            eprintln!("lab files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Runs `curl -sS -m 5 URL` from a prepared command: (status, body), 0 when unreachable.
fn curl(mut cmd: Command, url: &str) -> (u16, String) {
    let Ok(out) = cmd
        .args(["-sS", "-m", "5", "-o", "-", "-w", "\n%{http_code}", url])
        .output()
    else {
        return (0, String::new());
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Spawns `cmd serve` on `iface`/`lan_ip` with its data in `data` and its log in `dir`.
#[track_caller]
fn spawn_daemon(
    mut cmd: Command,
    iface: &str,
    lan_ip: &str,
    data: &Path,
    dir: &Path,
    extra: &[&str],
) -> Daemon {
    std::fs::create_dir_all(data).expect("data dir");
    let log_path = dir.join(format!(
        "daemon-{}.log",
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let log = File::create(&log_path).expect("daemon log");
    cmd.arg("serve")
        .args(["--lan-iface", iface])
        .args(["--lan-ip", lan_ip])
        .args(["--http-port", &HTTP_PORT.to_string()])
        .arg("--data-path")
        .arg(data)
        .args(extra)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log fd"))
        .stderr(log);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
    Daemon {
        child: Some(child),
        log_path,
    }
}

/// The daemon's HTTP port in labs (unprivileged ports keep capability tests honest).
pub const HTTP_PORT: u16 = 8080;

/// The admin token of labs (see [`Lab::token_file`]).
pub const ADMIN_TOKEN: &str = "gb10-lab-admin-token-4f1c9b2e";

/// `/metrics` on the daemon's loopback health listener (default port), from inside the
/// daemon's namespace.
pub const HEALTH_METRICS: &str = "http://127.0.0.1:9180/metrics";

/// The admin token of a daemon whose data is `dir/data`: the one it made at first start
/// (its default, `data/state/admin-token`), else [`ADMIN_TOKEN`] (given with
/// `--admin-token-file` [`token_file`]).
pub fn admin_token(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("data/state/admin-token"))
        .map(|t| t.trim().to_owned())
        .unwrap_or_else(|_| ADMIN_TOKEN.to_owned())
}

/// Writes [`ADMIN_TOKEN`] to `dir/admin-token` (0600); its path.
pub fn token_file(dir: &Path) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join("admin-token");
    write_file(&path, &format!("{ADMIN_TOKEN}\n"));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .expect("chmod admin-token");
    path.display().to_string()
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("GB10_KEEP_LAB").is_some() {
            eprintln!("lab files kept in {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// The daemon process; SIGTERM then SIGKILL on Drop, by PID.
pub struct Daemon {
    child: Option<Child>,
    pub log_path: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Polls `/healthz` until it answers 200, or the process exits, or `timeout`.
    pub fn wait_ready(&mut self, lab: &Lab, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Err(format!("daemon exited early: {status}"));
            }
            if lab.http("/healthz").0 == 200 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("/healthz not ready after {timeout:?}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status if the daemon has exited.
    pub fn try_status(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        Some(status)
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: kill on our own child's PID.
        unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
    }

    /// Waits up to `timeout` for the daemon to exit; its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and wait up to 10 s: the exit status.
    #[track_caller]
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("daemon ignored SIGTERM for 10 s\n{}", self.log()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: kill on our own child's PID.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `/metrics` exposition with lookups by name and labels.
pub struct Metrics(pub String);

impl Metrics {
    /// The value of the sample `name{labels}` (labels in any order), if present.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0
            .lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
                if n != name {
                    return None;
                }
                let body = rest.strip_suffix('}')?;
                let all = labels
                    .iter()
                    .all(|(k, v)| body.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
                let count = if body.is_empty() {
                    0
                } else {
                    body.split(',').count()
                };
                (all && count == labels.len()).then(|| value.parse().ok())?
            })
    }

    /// As [`Metrics::get`], 0 when absent.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or(0.0)
    }
}

/// The install token a rendered seed carries (`GB10_TOKEN=<hex>` in user-data,
/// `token=<hex>` in an autoinstall heartbeat, `INSTALL_TOKEN='<hex>'` in an install
/// script): 64 hex digits, else `None`.
pub fn install_token(seed: &str) -> Option<String> {
    ["GB10_TOKEN=", "INSTALL_TOKEN='", "token="]
        .iter()
        .filter_map(|k| seed.find(k).map(|i| &seed[i + k.len()..]))
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_hexdigit)
                .collect::<String>()
        })
        .find(|t| t.len() == 64)
}

/// `curl -X method url` from `ns`, with the bearer `token` and a JSON `body` when given:
/// (status, body), 0 when unanswered. For the admin API.
pub fn request(
    ns: &Netns,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut cmd = ns.cmd("curl");
    cmd.args([
        "-sS",
        "-m",
        "30",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "-X",
        method,
    ]);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data", b]);
    }
    let out = cmd.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Polls `check` every 50 ms until it holds or `timeout` passes; how long it took.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    loop {
        if check() {
            return Some(start.elapsed());
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A process the test started that must not outlive it: SIGTERM, then SIGKILL, by PID.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SAFETY: kill on our own child's PID.
        unsafe { libc::kill(self.0.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU time (user + system, seconds) process `pid` has used so far; 0 when it is gone.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces:
    // utime and stime are fields 14 and 15 of the line, 11 and 12 after ") ".
    let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    ticks as f64 / (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Resident memory of process `pid` in bytes (`VmRSS`); 0 when it is gone.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// As [`cpu_seconds`], for `pid` and its children (nginx's workers under its master).
pub fn cpu_seconds_tree(pid: u32) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    cpu_seconds(pid)
        + children
            .split_whitespace()
            .filter_map(|c| c.parse().ok())
            .map(cpu_seconds_tree)
            .sum::<f64>()
}

/// A process the test did not spawn directly but started (a daemonized client), by the
/// PID it wrote: SIGTERM on drop.
pub struct PidGuard(pub Option<i32>);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill on the process this test started, by the PID it wrote.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for b in &mut mac {
        *b = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// Formats a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An AF_PACKET socket bound to `iface` inside `ns`, for sending hand-made frames.
pub struct RawSender {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawSender {
    #[track_caller]
    pub fn open(ns: &Netns, iface: &str) -> Self {
        let iface = iface.to_owned();
        ns.enter(move || {
            let name = std::ffi::CString::new(iface.clone()).expect("iface");
            // SAFETY: plain libc calls; the fd is owned right away.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
            assert!(ifindex > 0, "no interface {iface} in namespace");
            let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            assert!(
                raw >= 0,
                "AF_PACKET socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: raw is a fresh, valid fd.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            Self { fd, ifindex }
        })
    }

    /// Sends one frame exactly as given, panicking when the kernel refuses it.
    #[track_caller]
    pub fn send(&self, frame: &[u8]) {
        if let Err(err) = self.try_send(frame) {
            panic!("sendto: {err}");
        }
    }

    /// Sends one frame; an egress program that drops it shows as ENOBUFS here.
    pub fn try_send(&self, frame: &[u8]) -> std::io::Result<()> {
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid start.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = self.ifindex;
        addr.sll_halen = 6;
        if frame.len() >= 6 {
            addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        }
        // SAFETY: buffer and address are valid for the lengths given.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// What an attacker's sniffer on one interface saw: every frame that arrived there (not
/// those sent from it), captured by an AF_PACKET socket on a thread of its own until
/// [`Sniffer::finish`].
pub struct Sniffer {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(Vec<Vec<u8>>, u32)>,
}

impl Sniffer {
    /// Starts capturing frames that arrive on `iface` in `ns` and for which `keep` holds.
    #[track_caller]
    pub fn start(ns: &Netns, iface: &str, keep: fn(&[u8]) -> bool) -> Self {
        let iface = iface.to_owned();
        let fd = ns.enter(move || {
            // Wake up every 50 ms to look at the stop flag.
            let fd = packet_socket(&iface, Duration::from_millis(50));
            // Room for bursts: root may go beyond rmem_max.
            let rcvbuf: libc::c_int = 8 << 20;
            set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &rcvbuf)
                .expect("SO_RCVBUFFORCE");
            fd
        });
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let stop = stop.clone();
            move || {
                let mut kept = Vec::new();
                let mut buf = vec![0u8; 65_536];
                // Bounded: the test stops it; 10 minutes at most whatever happens.
                let start = Instant::now();
                while !stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(600) {
                    // SAFETY: zeroed sockaddr_ll is valid; buffer and address sized as given.
                    let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                    let mut len = size_of::<libc::sockaddr_ll>() as u32;
                    let n = unsafe {
                        libc::recvfrom(
                            fd.as_raw_fd(),
                            buf.as_mut_ptr().cast(),
                            buf.len(),
                            0,
                            (&raw mut from).cast(),
                            &mut len,
                        )
                    };
                    if n > 0
                        && from.sll_pkttype != libc::PACKET_OUTGOING
                        && keep(&buf[..n as usize])
                    {
                        kept.push(buf[..n as usize].to_vec());
                    }
                }
                // Frames the kernel dropped for a full socket buffer: a capture that lost
                // some proves nothing about what was not seen.
                let mut stats = libc::tpacket_stats {
                    tp_packets: 0,
                    tp_drops: 0,
                };
                let mut len = size_of::<libc::tpacket_stats>() as u32;
                // SAFETY: getsockopt writes at most `len` bytes into `stats`.
                unsafe {
                    libc::getsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_PACKET,
                        libc::PACKET_STATISTICS,
                        (&raw mut stats).cast(),
                        &mut len,
                    )
                };
                (kept, stats.tp_drops)
            }
        });
        Self { stop, thread }
    }

    /// Stops capturing: the frames kept, after checking that the kernel dropped none.
    #[track_caller]
    pub fn finish(self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::Relaxed);
        let (kept, drops) = self.thread.join().expect("sniffer thread");
        assert_eq!(
            drops, 0,
            "the sniffer lost frames: its capture proves nothing"
        );
        kept
    }
}

/// An AF_PACKET socket bound to `iface` in the calling thread's namespace, receiving
/// every protocol, whose reads give up after `timeout` so a loop can look at its stop
/// flag.
#[track_caller]
pub fn packet_socket(iface: &str, timeout: Duration) -> OwnedFd {
    let name = std::ffi::CString::new(iface).expect("iface");
    // SAFETY: plain libc calls on values we own; the fd is owned at once.
    let (fd, ifindex, proto) = unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        assert!(ifindex > 0, "no interface {iface}");
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let raw = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto.into());
        assert!(raw >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
        (OwnedFd::from_raw_fd(raw), ifindex, proto)
    };
    // SAFETY: zeroed sockaddr_ll is valid; bind reads exactly its size.
    let rc = unsafe {
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = proto;
        addr.sll_ifindex = ifindex;
        libc::bind(
            fd.as_raw_fd(),
            (&raw const addr).cast(),
            size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    assert_eq!(rc, 0, "bind {iface}: {}", std::io::Error::last_os_error());
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    set_option(&fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &tv).expect("SO_RCVTIMEO");
    fd
}

/// `setsockopt(fd, level, name, value)`.
pub fn set_option<T>(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    // SAFETY: setsockopt reads exactly size_of::<T>() bytes of `value`.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as u32,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes `text` to `path`, creating parents.
#[track_caller]
pub fn write_file(path: &Path, text: &str) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("mkdir");
    }
    File::create(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
