//! The operator's command line (`clients`, `hosts`) against the real daemon in a lab:
//! real clients (dhclient, tftp-hpa, curl) walk a machine through DHCP → TFTP → HTTP →
//! heartbeat while `clients watch` follows it live; tables, JSON, a rebuild with the token
//! from a file or the environment; the daemon stops while a watch is connected. And the
//! logs: no colour off a terminal, JSON lines that carry the client's MAC, `/admin/`.
use std::{
    path::Path,
    process::{Output, Stdio},
    time::Duration,
};

use gb10_lab::{Lab, require_root, require_tool, run, wait_until, write_file};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");
const ADMIN: &str = "127.0.0.1:9190";
const TOKEN: &str = "ctl-canary-token-3e9b71d2";
/// The CLI's environment with the token: every admin call needs it, reads too.
const WITH_TOKEN: &[(&str, &str)] = &[("GB10_ADMIN_TOKEN", TOKEN)];

/// The CLI in the server namespace against the admin listener.
fn ctl(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = lab.server.cmd(BIN);
    cmd.args(args)
        .args(["--server", &format!("http://{ADMIN}")])
        .env_remove("GB10_ADMIN_TOKEN")
        .env_remove("GB10_CONFIG")
        .env_remove("GB10_SERVER");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running the CLI")
}

fn out(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn err(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn ok(o: Output) -> String {
    assert!(o.status.success(), "CLI failed:\n{}{}", out(&o), err(&o));
    assert!(
        !out(&o).contains(TOKEN) && !err(&o).contains(TOKEN),
        "the token was printed"
    );
    out(&o)
}

fn heartbeat(lab: &Lab, mac: &str, phase: &str) {
    lab.client.post_json(
        &format!("http://{}:{}/heartbeat", lab.server_ip, gb10_lab::HTTP_PORT),
        &format!(r#"{{"mac":"{mac}","phase":"{phase}"}}"#),
    );
}

/// The lines `clients watch` wrote so far.
fn lines(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn tools(test: &str) -> bool {
    require_root(test)
        && require_tool(test, "curl", "curl")
        && require_tool(test, "dhclient", "isc-dhcp-client")
        && require_tool(test, "tftp", "tftp-hpa")
}

/// A machine's chain live in the terminal, tables and JSON, rebuild with the token, and
/// JSON logs whose client lines carry the MAC.
#[test]
fn clients_watch_follows_a_real_boot_chain() {
    if !tools("ctl::watch") {
        return;
    }
    let lab = Lab::bare("ctl");
    let mac = gb10_lab::format_mac(&lab.client_mac());
    let data = lab.dir.join("data");
    std::fs::create_dir_all(data.join("tftp")).unwrap();
    std::fs::create_dir_all(data.join("www/amd64")).unwrap();
    std::fs::write(data.join("tftp/shimx64.efi"), vec![7u8; 200_000]).unwrap();
    std::fs::write(data.join("www/amd64/vmlinuz"), vec![9u8; 300_000]).unwrap();
    write_file(
        &data.join("inventory.toml"),
        &format!(
            "[profiles.node]\nkernel = \"amd64/vmlinuz\"\ninitrd = \"amd64/initrd.img\"\n\
             [[hosts]]\nmac = \"{mac}\"\nhostname = \"node-1\"\nprofile = \"node\"\n"
        ),
    );
    let token_file = lab.dir.join("token");
    write_file(&token_file, &format!("{TOKEN}\n"));
    let config = lab.dir.join("config.toml");
    write_file(
        &config,
        &format!(
            "[admin]\ntoken_file = \"{}\"\nlisten = \"{ADMIN}\"\n",
            token_file.display()
        ),
    );
    let mut cmd = lab.server.cmd(BIN);
    cmd.env("GB10_LOG_FORMAT", "json");
    let mut daemon = lab.spawn_daemon_with(cmd, &["--config", config.to_str().unwrap()]);
    daemon
        .wait_ready(&lab, Duration::from_secs(20))
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));

    // Reads need the token too: refused without, with the hint.
    let o = ctl(&lab, &["clients"], &[]);
    assert!(
        !o.status.success() && err(&o).contains("401") && err(&o).contains("--token-file"),
        "{}",
        err(&o)
    );
    // Before anything happened: the inventory host, never seen.
    let table = ok(ctl(&lab, &["clients"], WITH_TOKEN));
    assert!(table.starts_with("MAC") && table.contains(&mac), "{table}");
    assert!(
        table.contains("node-1") && table.contains("never seen"),
        "{table}"
    );
    let hosts = ok(ctl(&lab, &["hosts"], WITH_TOKEN));
    assert!(
        hosts.contains(&mac) && hosts.contains("registered") && hosts.contains("inventory"),
        "{hosts}"
    );

    // Follow it from before its first DHCP packet to its heartbeat.
    let watch_out = lab.dir.join("watch.txt");
    let mut watch = gb10_lab::Guard(
        lab.server
            .cmd(BIN)
            .args([
                "clients",
                "watch",
                &mac,
                "--until",
                "onboarded",
                "--timeout",
                "90s",
            ])
            .args(["--server", &format!("http://{ADMIN}")])
            .env("GB10_ADMIN_TOKEN", TOKEN)
            .stdout(std::fs::File::create(&watch_out).unwrap())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert!(
        wait_until(Duration::from_secs(10), || lines(&watch_out)
            .contains("node-1"))
        .is_some(),
        "watch printed no header: {}",
        lines(&watch_out)
    );
    let (leased, _dhclient) = lab.client.dhclient_once(&lab.client_if, &lab.dir, 20);
    let leased = leased.unwrap_or_else(|| panic!("no lease\n{}", daemon.log()));
    let tftp_out = lab.dir.join("got.efi");
    run(lab.client.cmd("tftp").args([
        "-m",
        "binary",
        lab.server_ip,
        "-c",
        "get",
        "shimx64.efi",
        tftp_out.to_str().unwrap(),
    ]));
    let (code, _) = lab.client.curl(
        &format!(
            "http://{}:{}/amd64/vmlinuz",
            lab.server_ip,
            gb10_lab::HTTP_PORT
        ),
        5.0,
    );
    assert_eq!(code, 200);
    heartbeat(&lab, &mac, "onboarded");
    let exited = wait_until(Duration::from_secs(30), || {
        matches!(watch.0.try_wait(), Ok(Some(_)))
    });
    let text = lines(&watch_out);
    assert!(exited.is_some(), "watch did not stop at onboarded:\n{text}");
    assert!(watch.0.try_wait().unwrap().unwrap().success(), "{text}");
    println!("--- clients watch {mac} ---\n{text}");
    // The chain in order, each stage named, with the state it moved to.
    let order = [
        "DHCP  discover".to_owned(),
        format!("DHCP  leased {leased}"),
        "TFTP  boot file shimx64.efi  → pxe_booted".to_owned(),
        "HTTP  kernel/initrd /amd64/vmlinuz".to_owned(),
        "BEAT  heartbeat onboarded".to_owned(),
    ];
    let mut at = 0;
    for want in &order {
        let found = text[at..]
            .find(want.as_str())
            .unwrap_or_else(|| panic!("`{want}` missing or out of order in:\n{text}"));
        at += found + want.len();
    }
    assert!(text.contains("→ onboarded"), "{text}");

    // Tables and JSON after the boot.
    let table = ok(ctl(&lab, &["clients"], WITH_TOKEN));
    assert!(
        table.contains("onboarded") && table.contains(&leased),
        "{table}"
    );
    let rows: serde_json::Value =
        serde_json::from_str(&ok(ctl(&lab, &["clients", "--json"], WITH_TOKEN))).unwrap();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["mac"] == mac.as_str())
        .unwrap();
    assert_eq!(row["state"], "onboarded");
    assert_eq!(row["hostname"], "node-1");
    assert_eq!(row["lease_ip"], leased.as_str());
    assert_eq!(row["last_event"]["phase"], "onboarded");
    let show = ok(ctl(&lab, &["clients", "show", &mac], WITH_TOKEN));
    assert!(
        show.contains("TFTP  boot file shimx64.efi") && show.contains("BEAT  heartbeat onboarded"),
        "{show}"
    );
    let o = ctl(&lab, &["clients", "show", "02:00:00:00:00:99"], WITH_TOKEN);
    assert!(
        !o.status.success() && err(&o).contains("no client 02:00:00:00:00:99"),
        "{}",
        err(&o)
    );

    // Rebuild: refused without the token, done with it from a file, 409 from the env
    // (a rebuild is under way).
    let o = ctl(&lab, &["hosts", "rebuild", &mac], &[]);
    assert!(
        !o.status.success() && err(&o).contains("401") && err(&o).contains("--token-file"),
        "{}",
        err(&o)
    );
    let done = ok(ctl(
        &lab,
        &[
            "hosts",
            "rebuild",
            &mac,
            "--token-file",
            token_file.to_str().unwrap(),
        ],
        &[],
    ));
    assert!(
        done.contains("pxe_ready") && done.contains("no BMC"),
        "{done}"
    );
    let o = ctl(
        &lab,
        &["hosts", "rebuild", &mac],
        &[("GB10_ADMIN_TOKEN", TOKEN)],
    );
    assert!(
        !o.status.success() && err(&o).contains("409"),
        "{}{}",
        out(&o),
        err(&o)
    );
    let host: serde_json::Value = serde_json::from_str(&ok(ctl(
        &lab,
        &["hosts", "show", &mac, "--json"],
        WITH_TOKEN,
    )))
    .unwrap();
    assert_eq!(host["state"], "pxe_ready");
    // The token can come from the config file too (its `token_file`).
    let o = ctl(
        &lab,
        &[
            "hosts",
            "rebuild",
            &mac,
            "--config",
            config.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err(&o).contains("409"), "{}", err(&o));

    // Every client's events as JSON lines, for a bounded time.
    let all = lab
        .server
        .cmd(BIN)
        .args([
            "clients",
            "watch",
            "--json",
            "--timeout",
            "4s",
            "--server",
            &format!("http://{ADMIN}"),
        ])
        .env("GB10_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // Since the rebuild the host has an install: a heartbeat without its token is refused
    // (403) and moves nothing, but the stream still shows it.
    let o = lab
        .client
        .cmd("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-m", "5"])
        .args(["-H", "Content-Type: application/json", "--data"])
        .arg(format!(r#"{{"mac":"{mac}","phase":"installing"}}"#))
        .arg(format!(
            "http://{}:{}/heartbeat",
            lab.server_ip,
            gb10_lab::HTTP_PORT
        ))
        .output()
        .unwrap();
    assert_eq!(out(&o), "403", "an unproven heartbeat after the rebuild");
    let o = all.wait_with_output().unwrap();
    assert!(
        !o.status.success() && err(&o).contains("gave up after 4s"),
        "{}",
        err(&o)
    );
    let event: serde_json::Value =
        serde_json::from_str(out(&o).lines().next().unwrap_or("")).unwrap();
    assert_eq!(
        (event["mac"].as_str(), event["phase"].as_str()),
        (Some(mac.as_str()), Some("installing"))
    );

    // The daemon stops while a watch is connected, and the watch says so.
    let mut held = lab
        .server
        .cmd(BIN)
        .args([
            "clients",
            "watch",
            &mac,
            "--server",
            &format!("http://{ADMIN}"),
        ])
        .env("GB10_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let status = daemon.stop();
    assert!(status.success(), "{status}\n{}", daemon.log());
    assert!(
        wait_until(Duration::from_secs(10), || matches!(
            held.try_wait(),
            Ok(Some(_))
        ))
        .is_some(),
        "watch outlived the daemon"
    );
    let o = held.wait_with_output().unwrap();
    assert!(
        !o.status.success() && err(&o).contains("closed the event stream"),
        "{}",
        err(&o)
    );

    // JSON logs: every line an object; client lines carry the MAC (field or span).
    let log = daemon.log();
    assert!(!log.contains(TOKEN), "the token is in the log");
    let mut beats = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            v["timestamp"].is_string() && v["level"].is_string(),
            "{line}"
        );
        if v["message"] == "heartbeat" || v["message"] == "host state" {
            beats += 1;
            let has_mac = v["mac"] == mac.as_str()
                || v["spans"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|s| s["mac"] == mac.as_str()));
            assert!(has_mac, "a client line without its MAC: {line}");
        }
    }
    assert!(beats >= 3, "no heartbeat lines in the log:\n{log}");
}

/// Logs written to a file carry no ANSI colour even without NO_COLOR; `/admin/` answers
/// like `/admin`; the CLI works through `/admin` on the LAN listener.
#[test]
fn no_colour_off_a_terminal_and_admin_slash() {
    if !require_root("ctl::plain") || !require_tool("ctl::plain", "curl", "curl") {
        return;
    }
    let lab = Lab::new("ctlplain");
    let data = lab.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let log = lab.dir.join("plain.log");
    let token = lab.token_file();
    // By hand rather than through the harness, which sets NO_COLOR.
    let child = lab
        .server
        .cmd(BIN)
        .args([
            "serve",
            "--lan-iface",
            &lab.server_if,
            "--lan-ip",
            "198.18.0.1/24",
        ])
        .args([
            "--http-port",
            &gb10_lab::HTTP_PORT.to_string(),
            "--admin-token-file",
            &token,
            "--data-path",
        ])
        .arg(&data)
        .env_remove("NO_COLOR")
        .env_remove("GB10_LOG_FORMAT")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let _daemon = gb10_lab::Guard(child);
    assert!(
        wait_until(Duration::from_secs(20), || lab.http("/healthz").0 == 200).is_some(),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let (code, page) = lab.http("/admin/");
    assert_eq!(code, 200, "{page}");
    assert_eq!(page, lab.http("/admin").1);
    // The CLI from the client's side of the LAN, through /admin.
    let o = lab
        .client
        .cmd(BIN)
        .args([
            "hosts",
            "--server",
            &format!("http://{}:{}/admin", lab.server_ip, gb10_lab::HTTP_PORT),
        ])
        .env_remove("GB10_CONFIG")
        .env("GB10_ADMIN_TOKEN", gb10_lab::ADMIN_TOKEN)
        .output()
        .unwrap();
    assert!(
        o.status.success() && out(&o).contains("no hosts"),
        "{}{}",
        out(&o),
        err(&o)
    );
    // Event streams are capped (32 per listener), so even token holders cannot open
    // them without bound; one closing frees its place.
    let bearer = format!("Authorization: Bearer {}", gb10_lab::ADMIN_TOKEN);
    let events = format!(
        "http://{}:{}/admin/api/clients/events",
        lab.server_ip,
        gb10_lab::HTTP_PORT
    );
    let status = |timeout: &str| {
        let o = lab
            .client
            .cmd("curl")
            .args([
                "-s",
                "-N",
                "-m",
                timeout,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "-H",
                &bearer,
                &events,
            ])
            .output()
            .unwrap();
        out(&o)
    };
    let mut streams: Vec<gb10_lab::Guard> = (0..32)
        .map(|_| {
            gb10_lab::Guard(
                lab.client
                    .cmd("curl")
                    .args(["-s", "-N", "-m", "60", "-o", "/dev/null", "-H", &bearer])
                    .arg(&events)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    // Probe only once the 32 are in: a probe that came first would take a place, leave
    // one of the 32 refused, and then every later probe would find a free place. 32 `ip
    // netns exec curl` take a while to start on a loaded machine.
    let established = || {
        let o = lab
            .server
            .cmd("ss")
            .args(["-Htn", "state", "established", "( sport = :8080 )"])
            .output()
            .unwrap();
        out(&o).lines().count()
    };
    assert!(
        wait_until(Duration::from_secs(60), || established() >= 32).is_some(),
        "the 32 event streams did not connect: {} established",
        established()
    );
    // Connected is not yet served: give each its place.
    std::thread::sleep(Duration::from_secs(2));
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(60), || {
            last = status("2");
            last == "503"
        })
        .is_some(),
        "a 33rd event stream was not refused: HTTP {last}"
    );
    streams.pop();
    assert!(
        wait_until(Duration::from_secs(10), || status("1") == "200").is_some(),
        "a closed stream did not free its place"
    );
    drop(streams);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("gb10-provision starting"), "{text}");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in a log file:\n{text}"
    );
}
