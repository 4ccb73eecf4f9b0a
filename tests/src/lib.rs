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
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

pub mod debs;
pub mod flood;
pub mod frames;
pub mod hostile;

/// Deterministic bytes, different per `seed`, that neither repeat nor compress away.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
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
        let out = self
            .cmd("curl")
            .args([
                "-sS",
                "-m",
                &timeout_s.to_string(),
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                url,
            ])
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
        let out = run(self.cmd("cat").arg("/proc/net/snmp"));
        let text = String::from_utf8_lossy(&out.stdout);
        let mut udp = text.lines().filter(|l| l.starts_with("Udp:"));
        let (Some(names), Some(values)) = (udp.next(), udp.next()) else {
            panic!("no Udp lines in /proc/net/snmp");
        };
        let field = |name: &str| -> u64 {
            let i = names
                .split_whitespace()
                .position(|n| n == name)
                .expect("snmp field");
            values
                .split_whitespace()
                .nth(i)
                .and_then(|v| v.parse().ok())
                .expect("snmp value")
        };
        field("InDatagrams") + field("NoPorts")
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
        let out = run(self
            .client
            .cmd("cat")
            .arg(format!("/sys/class/net/{}/address", self.client_if)));
        parse_mac(String::from_utf8_lossy(&out.stdout).trim()).expect("client MAC")
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
        let ns = if self.client_addressed {
            &self.client
        } else {
            &self.server
        };
        ns.curl(&url, 5.0)
    }

    /// `curl` of `http://IP:HTTP_PORT/PATH` from the client namespace with a short
    /// timeout; (status, body), status 0 when nothing answered.
    pub fn http_at(&self, ip: &str, path: &str) -> (u16, String) {
        self.client
            .curl(&format!("http://{ip}:{HTTP_PORT}{path}"), 1.0)
    }

    /// The current `/metrics` text.
    #[track_caller]
    pub fn metrics(&self) -> Metrics {
        let (code, body) = self.http("/metrics");
        assert_eq!(code, 200, "/metrics: {body}");
        Metrics(body)
    }

    /// Whether an XDP program is attached to `iface` in namespace `ns` (per `ip link`).
    pub fn xdp_attached(ns: &Netns, iface: &str) -> bool {
        let out = run(ns.cmd("ip").args(["-d", "link", "show", "dev", iface]));
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    }
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
