//! The fleet view in headless Chromium against the real daemon (defaults: XDP attached,
//! guard enforce): a real client (dhclient, tftp-hpa, curl) asks for a boot file that was
//! removed, and the page says why it stopped, live, with the admin token on every request;
//! the rows carry the XDP program's counters (and say when there are none) and an
//! install's progress.
use std::path::Path;

use gb10_lab::{Lab, require_root, require_tool, write_file};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");
const ADMIN: &str = "127.0.0.1:9190";
const TOKEN: &str = "fleet-canary-token-7c2e9a41";
const SHOTS: [&str; 3] = [
    "fleet-stopped.png",
    "fleet-detail.png",
    "fleet-progress.png",
];

/// Root, and the clients both tests run (a visible skip otherwise).
fn can_run(test: &str) -> bool {
    require_root(test)
        && require_tool(test, "curl", "curl")
        && require_tool(test, "dhclient", "isc-dhcp-client")
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A machine whose shim was removed: TFTP `not_found` on the page, then a step forward
/// (GRUB) clears it, then a missing kernel over HTTP; the timeline by keyboard; the
/// screenshots kept in target/artifacts/.
#[test]
fn fleet_view_says_why_a_real_client_stopped() {
    const T: &str = "fleet::why";
    if !can_run(T) || !require_tool(T, "tftp", "tftp-hpa") {
        return;
    }
    let Some(npm_root) = gb10_lab::browser::playwright(T) else {
        return;
    };
    let lab = Lab::bare("fleet");
    let mac = gb10_lab::format_mac(&lab.client_mac());
    let data = lab.dir.join("data");
    std::fs::create_dir_all(data.join("tftp")).unwrap();
    std::fs::create_dir_all(data.join("www")).unwrap();
    // GRUB is there; the shim the firmware asks for first is not.
    std::fs::write(data.join("tftp/grubx64.efi"), vec![7u8; 100_000]).unwrap();
    write_file(
        &data.join("inventory.toml"),
        &format!(
            "[profiles.node]\nkernel = \"amd64/vmlinuz\"\ninitrd = \"amd64/initrd.img\"\n\
             [[hosts]]\nmac = \"{mac}\"\nhostname = \"node-1\"\nprofile = \"node\"\n"
        ),
    );
    let config = lab.dir.join("config.toml");
    write_file(
        &config,
        &format!("[admin]\ntoken = \"{TOKEN}\"\nlisten = \"{ADMIN}\"\n"),
    );
    let mut daemon = lab.start_daemon(BIN, &["--config", config.to_str().unwrap()]);
    let (leased, _dhclient) = lab.client.dhclient_once(&lab.client_if, &lab.dir, 20);
    assert!(leased.is_some(), "no lease\n{}", daemon.log());

    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    for f in SHOTS {
        let _ = std::fs::remove_file(artifacts.join(f));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fleet.cjs");
    let args = [
        format!("http://{ADMIN}/fleet"),
        mac.clone(),
        TOKEN.to_owned(),
        lab.client.name.clone(),
        lab.server_ip.to_owned(),
        gb10_lab::HTTP_PORT.to_string(),
        artifacts.display().to_string(),
    ];
    let out = gb10_lab::browser::node(&lab.server, &npm_root, &lab.dir, 150, &script, &args)
        .output()
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fleet script failed:\n{stdout}\n{}\n--- daemon ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    let r = json(stdout.trim().lines().last().unwrap_or(""));
    println!("{r:#}");
    let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
    assert!(s("before").contains("node-1"), "{r}");
    assert_eq!(r["stored"], true, "token not in sessionStorage: {r}");
    let why = s("tftpWhy");
    assert!(
        why.starts_with("TFTP: shimx64.efi") && why.contains("not found"),
        "{r}"
    );
    assert_eq!(
        r["forward"]["why"], "",
        "a step forward kept the reason: {r}"
    );
    assert_eq!(r["forward"]["state"], "pxe_booted", "{r}");
    let why = s("httpWhy");
    assert!(
        why.starts_with("HTTP: /amd64/vmlinuz") && why.contains("not found"),
        "{r}"
    );
    let timeline = s("timeline");
    for want in [
        "FAILED shimx64.efi: not found",
        "boot file grubx64.efi",
        "FAILED /amd64/vmlinuz: not found",
    ] {
        assert!(timeline.contains(want), "`{want}` not in the timeline: {r}");
    }
    assert_eq!(
        r["detailHidden"], true,
        "Escape did not close the pane: {r}"
    );
    assert_eq!(r["focusBack"], "mac", "focus not back on the row: {r}");
    assert_eq!(r["shownStopped"], true, "{r}");
    assert_eq!(
        r["bare"],
        serde_json::json!([]),
        "requests without the token: {r}"
    );
    assert_eq!(r["loads"], 1, "the page reloaded: {r}");
    // Frames counted by XDP: the row's compact cell (frames · limited · malformed) and the
    // detail pane, and the same in the API (DHCP from dhclient, TFTP from tftp-hpa).
    let cell = s("xdpCell");
    let frames: u64 = cell
        .split(" · ")
        .next()
        .and_then(|f| f.trim().parse().ok())
        .unwrap_or(0);
    assert!(frames > 0 && cell.split(" · ").count() == 3, "{r}");
    assert!(
        s("detailXdp").starts_with("XDP: ") && s("detailXdp").contains("frames"),
        "{r}"
    );
    let (code, body) =
        lab.server
            .curl_token(&format!("http://{ADMIN}/api/clients/{mac}"), 5.0, TOKEN);
    assert_eq!(code, 200, "{body}");
    let one = json(&body);
    assert!(one["xdp"]["dhcp"].as_u64() > Some(0), "{one}");
    assert!(one["xdp"]["tftp"].as_u64() > Some(0), "{one}");
    // The install's progress: 30 of 40 MB, and a rate over the run (20 MB in ~1.5 s).
    let progress = s("progress");
    assert!(
        progress.starts_with("75% · 30.0 of 40.0 MB · ") && progress.ends_with(" MB/s"),
        "{r}"
    );
    assert_eq!(r["bar"], 75, "{r}");
    assert_eq!(one["progress"]["written"], 30_000_000, "{one}");
    assert_eq!(one["progress"]["start"]["written"], 10_000_000, "{one}");
    for f in SHOTS {
        let png = std::fs::read(artifacts.join(f)).expect("screenshot");
        assert!(png.starts_with(b"\x89PNG") && png.len() > 1000, "{f}");
    }
    // Every log line about the failure names the client's MAC (the TFTP span carries it).
    let log = daemon.log();
    assert!(
        log.lines()
            .any(|l| l.contains("request refused") && l.contains(&mac)),
        "no TFTP refusal line with {mac}:\n{log}"
    );
    let status = daemon.stop();
    assert!(status.success(), "{status}");
}

/// Without XDP no counters exist: every row says so (`xdp: null`), in the list, for one
/// client and in the event stream, instead of zeros that would look like a count.
#[test]
fn fleet_rows_say_counters_are_unavailable_without_xdp() {
    const T: &str = "fleet::no_xdp";
    if !can_run(T) {
        return;
    }
    let lab = Lab::bare("fleetnx");
    let mac = gb10_lab::format_mac(&lab.client_mac());
    let config = lab.dir.join("config.toml");
    write_file(
        &config,
        &format!("[admin]\ntoken = \"{TOKEN}\"\nlisten = \"{ADMIN}\"\n"),
    );
    let mut daemon = lab.start_daemon(BIN, &["--config", config.to_str().unwrap(), "--xdp", "off"]);
    let (leased, _dhclient) = lab.client.dhclient_once(&lab.client_if, &lab.dir, 20);
    assert!(leased.is_some(), "no lease\n{}", daemon.log());
    let get = |path: &str| {
        let (code, body) = lab
            .server
            .curl_token(&format!("http://{ADMIN}{path}"), 5.0, TOKEN);
        assert_eq!(code, 200, "{path}: {body}");
        json(&body)
    };
    let list = get("/api/clients");
    let row = list
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["mac"] == mac.as_str()))
        .unwrap_or_else(|| panic!("no row for {mac}: {list}"));
    assert!(row["xdp"].is_null(), "{row}");
    assert!(get(&format!("/api/clients/{mac}"))["xdp"].is_null());
    // The stream says so on every event, and sends no counters ticks (one would come
    // within 2 s with XDP).
    let stream = lab
        .server
        .cmd("curl")
        .args(["-sS", "-N", "-m", "5", "-H"])
        .arg(format!("Authorization: Bearer {TOKEN}"))
        .arg(format!("http://{ADMIN}/api/clients/events"))
        .stdout(std::process::Stdio::piped())
        // Ended by `-m 5` (curl says so, exit 28): the stream never ends by itself.
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("curl");
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (code, _) = gb10_lab::request(
        &lab.client,
        "POST",
        &format!("http://{}:{}/heartbeat", lab.server_ip, gb10_lab::HTTP_PORT),
        None,
        Some(&format!(r#"{{"mac":"{mac}","phase":"booted"}}"#)),
    );
    let out = stream.wait_with_output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("event: client") && text.contains("\"xdp_attached\":false"),
        "heartbeat answered {code}; stream:\n{text}"
    );
    assert!(!text.contains("event: counters"), "{text}");
    let status = daemon.stop();
    assert!(status.success(), "{status}");
}
