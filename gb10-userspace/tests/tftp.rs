//! TFTP against real clients (tftp-hpa, atftp, curl) and hand-made packets, in a netns
//! lab: byte-identical transfers, options, loss/delay/duplication (a userspace netem:
//! the lab kernel has no sch_netem),
//! timeouts, confinement to the root. The daemon runs with its defaults (XDP attached,
//! guard enforce), as users run it.
mod tftp_support;

use std::{net::UdpSocket, time::Duration};

use gb10_lab::Lab;
use tftp_support::{
    impair::{IMPAIRED_IP, Impaired, Impairment},
    *,
};

#[test]
fn real_clients_fetch_byte_identical() {
    if !setup("real_clients_fetch_byte_identical", &CLIENTS) {
        return;
    }
    let lab = Lab::new("tftp-fetch");
    let small = put_random(&lab, "boot/one.bin", 1 << 20, 1);
    let big = put_random(&lab, "boot/thirty.bin", 30 << 20, 2);
    let text = b"line one\nline two\r\nbare cr\rend\n".repeat(200);
    put(&lab, "notes.txt", &text);
    let _daemon = lab.start_daemon(BIN, &[]);
    let mut expected = 0.0;
    for (name, data) in [("boot/one.bin", &small), ("boot/thirty.bin", &big)] {
        for fetch in [
            Fetch::TftpHpa,
            Fetch::Atftp(&[]),
            Fetch::Atftp(&["blksize 1468"]),
            Fetch::Curl(&[]),
            Fetch::Curl(&["--tftp-blksize", "1468"]),
        ] {
            let got = fetch.get(&lab, name);
            assert_same(&got, data, &format!("{fetch:?} {name}"));
            expected += 1.0;
        }
    }
    // RFC 7440: the OACK grants the window and the file still arrives intact.
    let window = Fetch::Atftp(&["blksize 1468", "windowsize 8"]);
    assert_same(
        &window.get(&lab, "boot/thirty.bin"),
        &big,
        "atftp windowsize 8",
    );
    let (got, trace) = window.get_traced(&lab, "boot/one.bin");
    assert_same(&got, &small, "atftp windowsize 8, traced");
    assert!(
        trace.contains("windowsize=8") || trace.contains("windowsize: 8"),
        "OACK without the window:\n{trace}"
    );
    expected += 2.0;
    // netascii: tftp-hpa turns CR LF back into LF, so the file comes back as it is.
    let got = Fetch::TftpHpaAscii.get(&lab, "notes.txt");
    assert_same(&got, &text, "tftp-hpa netascii");
    expected += 1.0;

    let m = lab.metrics();
    let client = [("client", lab.client_ip)];
    assert_eq!(
        m.value("gb10_tftp_transfers_total", &client),
        expected,
        "{}",
        m.0
    );
    assert_eq!(m.value("gb10_tftp_sessions", &[]), 0.0);
    assert!(m.value("gb10_tftp_bytes_total", &client) >= 5.0 * (31 << 20) as f64);
}

#[test]
fn loss_and_delay_still_complete() {
    if !setup("loss_and_delay_still_complete", &CLIENTS) {
        return;
    }
    let lab = Lab::new("tftp-loss");
    let data = put_random(&lab, "lossy.bin", 24 << 10, 3);
    let _daemon = lab.start_daemon(BIN, &[]);
    // 20 % loss and 200 ms delay each way: DATA and ACKs alike.
    let bad = Impairment {
        loss: 0.2,
        delay: Duration::from_millis(200),
        duplicate: 0.0,
    };
    let imp = Impaired::new(&lab, bad, bad);
    for fetch in [
        Fetch::Curl(&["--tftp-blksize", "1468"]),
        Fetch::Atftp(&["blksize 1468", "windowsize 4"]),
    ] {
        let got = fetch.get_in(&imp.ns, &lab, "lossy.bin");
        assert_same(&got, &data, &format!("{fetch:?} under loss"));
    }
    // A lost final ACK leaves the server retransmitting the last block until it gives
    // up (the client has the file and is gone): wait for the sessions to end, then
    // count at least one transfer the server saw confirmed.
    wait_for(&lab, "gb10_tftp_sessions", &[], 0.0, 60);
    let m = lab.metrics();
    let client = [("client", IMPAIRED_IP)];
    assert!(
        m.value("gb10_tftp_transfers_total", &client) >= 1.0,
        "{}",
        m.0
    );
    assert!(
        m.value("gb10_tftp_retransmits_total", &client) > 0.0,
        "no retransmission under 20 % loss?\n{}",
        m.0
    );
}

/// Sorcerer's Apprentice: duplicated ACKs must not duplicate DATA.
#[test]
fn duplicated_acks_do_not_duplicate_data() {
    if !setup("duplicated_acks_do_not_duplicate_data", &CLIENTS) {
        return;
    }
    let lab = Lab::new("tftp-dup");
    let size = 1 << 20;
    let data = put_random(&lab, "dup.bin", size, 4);
    let _daemon = lab.start_daemon(BIN, &[]);
    // Only the client's packets (RRQ, ACKs) are duplicated.
    let dup = Impairment {
        duplicate: 0.2,
        ..Default::default()
    };
    let imp = Impaired::new(&lab, dup, Impairment::default());
    let (before, rx_before) = (
        server_stat(&lab, "tx_bytes"),
        server_stat(&lab, "rx_packets"),
    );
    for fetch in [Fetch::Curl(&["--tftp-blksize", "1468"]), Fetch::TftpHpa] {
        let got = fetch.get_in(&imp.ns, &lab, "dup.bin");
        assert_same(&got, &data, &format!("{fetch:?} with duplicates"));
    }
    let wire = server_stat(&lab, "tx_bytes") - before;
    // The duplication did happen: well over one packet per block came in.
    let acks = (size / 1468 + 1 + size / 512 + 1) as f64;
    let rx = (server_stat(&lab, "rx_packets") - rx_before) as f64;
    assert!(
        rx > 1.1 * acks,
        "{rx} packets in for {acks} ACKs: no duplicates?"
    );
    let m = lab.metrics();
    let client = [("client", IMPAIRED_IP)];
    let sent = m.value("gb10_tftp_bytes_total", &client);
    // The daemon's own count of DATA payload bytes, retransmissions included.
    assert!(
        sent <= 2.0 * 1.05 * size as f64,
        "{sent} payload bytes for 2 x {size}\n{}",
        m.0
    );
    assert_eq!(
        m.value("gb10_tftp_retransmits_total", &client),
        0.0,
        "{}",
        m.0
    );
    // The server veth's tx counter, headers included (46 bytes per block: 3 % at
    // blksize 1468, 9 % at 512).
    let headers = (size / 1468 + size / 512 + 4) as f64 * 46.0;
    assert!(
        (wire as f64) <= 1.05 * (2 * size) as f64 + headers,
        "{wire} bytes on the wire for 2 x {size}"
    );
}

#[test]
fn abandoned_and_aborted_sessions_end() {
    if !setup("abandoned_and_aborted_sessions_end", &[]) {
        return;
    }
    let lab = Lab::new("tftp-abandon");
    put_random(&lab, "f.bin", 100_000, 5);
    let _daemon = lab.start_daemon(
        BIN,
        &[
            "--tftp-timeout",
            "200ms",
            "--tftp-retries",
            "2",
            "--tftp-max-sessions",
            "1",
        ],
    );
    let client = [("client", lab.client_ip)];
    // Abandoned: take block 1, never ACK, keep the port open (a client that hung,
    // not one whose port answers ICMP unreachable).
    let (first, _silent) = lab.client.enter(|| {
        let s = client_socket();
        s.send_to(&rrq(b"f.bin", &[]), SERVER).unwrap();
        (recv(&s).0, s)
    });
    assert_eq!(&first[..4], b"\0\x03\0\x01", "DATA 1");
    assert_eq!(lab.metrics().value("gb10_tftp_sessions", &[]), 1.0);
    // The cap: a second request takes the slot of the first, which was never
    // acknowledged (it ends, counted as a timeout)…
    let (second, _acked) = lab.client.enter(|| {
        let s = client_socket();
        s.send_to(&rrq(b"f.bin", &[]), SERVER).unwrap();
        let (p, from) = recv(&s);
        s.send_to(b"\0\x04\0\x01", from).unwrap();
        (p, s)
    });
    assert_eq!(&second[..4], b"\0\x03\0\x01", "DATA 1 for the second");
    wait_for(
        &lab,
        "gb10_tftp_errors_total",
        &[client[0], ("reason", "timeout")],
        1.0,
        2,
    );
    // …but a transfer under way (acknowledged) is never ended for another: "busy".
    let busy = lab.client.enter(|| {
        let s = client_socket();
        s.send_to(&rrq(b"f.bin", &[]), SERVER).unwrap();
        recv(&s).0
    });
    assert_eq!(&busy[..4], b"\0\x05\0\0", "{busy:?}");
    // The second, abandoned after block 1, times out in turn.
    wait_for(
        &lab,
        "gb10_tftp_errors_total",
        &[client[0], ("reason", "timeout")],
        2.0,
        10,
    );
    assert_eq!(lab.metrics().value("gb10_tftp_sessions", &[]), 0.0);

    // Aborted (EDK2 ends its tsize probe so): the session ends at once, long before
    // the retransmission timeout would.
    let oack = lab.client.enter(|| {
        let s = client_socket();
        s.send_to(&rrq(b"f.bin", &[("tsize", "0")]), SERVER)
            .unwrap();
        let (p, from) = recv(&s);
        s.send_to(b"\0\x05\0\x08tsize probe\0", from).unwrap();
        p
    });
    assert_eq!(oack, b"\0\x06tsize\x00100000\0");
    wait_for(
        &lab,
        "gb10_tftp_errors_total",
        &[client[0], ("reason", "aborted")],
        1.0,
        2,
    );
    assert_eq!(lab.metrics().value("gb10_tftp_sessions", &[]), 0.0);
}

#[test]
fn option_edge_cases() {
    if !setup("option_edge_cases", &[]) {
        return;
    }
    let lab = Lab::new("tftp-opts");
    put_random(&lab, "f.bin", 5000, 6);
    let _daemon = lab.start_daemon(BIN, &[]);
    // (options, expected first reply): refused options give no OACK, data at once.
    let data1 = b"\0\x03\0\x01".to_vec();
    type Case = (Vec<(&'static str, &'static str)>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (vec![("blksize", "0")], data1.clone()),
        (vec![("blksize", "7")], data1.clone()),
        (vec![("blksize", "abc")], data1.clone()),
        (vec![("timeout", "0")], data1.clone()),
        (vec![("timeout", "256")], data1.clone()),
        (vec![("windowsize", "0")], data1.clone()),
        (vec![("x-unknown", "1")], data1.clone()),
        // Above 65464 and above the veth's MTU − 32: the LAN's largest.
        (vec![("blksize", "65465")], oack(&[("blksize", "1468")])),
        (vec![("blksize", "8")], oack(&[("blksize", "8")])),
        // A repeated option keeps its first value.
        (
            vec![("blksize", "1024"), ("BLKSIZE", "8")],
            oack(&[("blksize", "1024")]),
        ),
        (vec![("timeout", "255")], oack(&[("timeout", "255")])),
        (
            vec![("tsize", "0"), ("windowsize", "500")],
            oack(&[("tsize", "5000"), ("windowsize", "64")]),
        ),
    ];
    for (opts, expected) in cases {
        let label = format!("{opts:?}");
        let packet = rrq(b"f.bin", &opts);
        let reply = lab.client.enter(move || {
            let s = client_socket();
            s.send_to(&packet, SERVER).unwrap();
            let (p, from) = recv(&s);
            s.send_to(b"\0\x05\0\0done\0", from).unwrap();
            p
        });
        let got = &reply[..expected.len().min(reply.len())];
        assert_eq!(got, &expected[..], "{label}: {reply:?}");
        if expected == data1 {
            assert_eq!(reply.len(), 4 + 512, "{label}: default block size");
        }
    }
}

#[test]
fn confined_to_the_root() {
    if !setup("confined_to_the_root", &[]) {
        return;
    }
    let lab = Lab::new("tftp-confine");
    let root = lab.dir.join("data/tftp");
    put(&lab, "sub/ok.txt", b"inside");
    let secret = lab.dir.join("secret.txt");
    std::fs::write(&secret, b"outside the root").unwrap();
    let link = |target: &std::path::Path, name: &str| {
        std::os::unix::fs::symlink(target, root.join(name)).unwrap()
    };
    link(&secret, "abs");
    link(std::path::Path::new("../../secret.txt"), "rel");
    link(&lab.dir, "dirlink");
    link(std::path::Path::new("sub/ok.txt"), "inside");
    let _daemon = lab.start_daemon(BIN, &[]);
    let watch = OpenWatch::new(&lab.dir);

    let vectors: Vec<Vec<u8>> = vec![
        b"../secret.txt".to_vec(),
        b"../../secret.txt".to_vec(),
        b"sub/../../../secret.txt".to_vec(),
        b"/../../secret.txt".to_vec(),
        b"..\\..\\secret.txt".to_vec(),
        b"sub\\..\\ok.txt".to_vec(),
        b"abs".to_vec(),
        b"rel".to_vec(),
        b"dirlink/secret.txt".to_vec(),
        b"/etc/passwd".to_vec(),
        b"\xff\xfe/secret.txt".to_vec(),
        vec![b'a'; 300],
        b"".to_vec(),
        b"sub".to_vec(),
    ];
    for name in vectors {
        let label = String::from_utf8_lossy(&name).into_owned();
        let reply = lab.client.enter(move || {
            let s = client_socket();
            s.send_to(&rrq(&name, &[]), SERVER).unwrap();
            recv(&s).0
        });
        assert_eq!(&reply[..2], b"\0\x05", "{label:?} got {reply:?}");
    }
    // A NUL inside the name ends it early: "a" with mode "b" is refused too.
    let reply = lab.client.enter(|| {
        let s = client_socket();
        s.send_to(b"\0\x01a\0b\0octet\0", SERVER).unwrap();
        recv(&s).0
    });
    assert_eq!(&reply[..4], b"\0\x05\0\x04", "{reply:?}");
    // WRQ: error 2.
    let reply = lab.client.enter(|| {
        let s = client_socket();
        let mut wrq = rrq(b"upload.bin", &[]);
        wrq[1] = 2;
        s.send_to(&wrq, SERVER).unwrap();
        recv(&s).0
    });
    assert_eq!(&reply[..4], b"\0\x05\0\x02", "{reply:?}");

    assert_eq!(
        watch.opened("secret.txt"),
        0,
        "a file outside the root was opened"
    );
    // The server keeps serving, symlinks inside the root included.
    for name in ["sub/ok.txt", "/sub/ok.txt", "inside"] {
        assert_eq!(Fetch::Curl(&[]).get(&lab, name), b"inside", "{name}");
    }
    // The watch does see opens (so the zero above means something).
    std::fs::read(&secret).unwrap();
    assert_eq!(watch.opened("secret.txt"), 1);
    let m = lab.metrics();
    let client = [("client", lab.client_ip)];
    assert!(
        m.value("gb10_tftp_errors_total", &[client[0], ("reason", "denied")]) >= 8.0,
        "{}",
        m.0
    );
    assert_eq!(
        m.value(
            "gb10_tftp_errors_total",
            &[client[0], ("reason", "write_refused")]
        ),
        1.0
    );
}

#[test]
fn single_port_mode() {
    if !setup("single_port_mode", &CLIENTS) {
        return;
    }
    let lab = Lab::new("tftp-single");
    let data = put_random(&lab, "one.bin", 1 << 20, 7);
    let _daemon = lab.start_daemon(BIN, &["--tftp-single-port"]);
    for fetch in [Fetch::Curl(&["--tftp-blksize", "1468"]), Fetch::TftpHpa] {
        assert_same(&fetch.get(&lab, "one.bin"), &data, &format!("{fetch:?}"));
    }
    let from = lab.client.enter(|| {
        let s = client_socket();
        s.send_to(&rrq(b"one.bin", &[]), SERVER).unwrap();
        let (_, from) = recv(&s);
        s.send_to(b"\0\x05\0\0done\0", from).unwrap();
        from
    });
    assert_eq!(from, SERVER, "replies come from port 69");
}

/// EDK2's pattern: a tsize probe it aborts, then blksize 1468 windowsize 4 from the
/// same port, received by a windowed client written here.
#[test]
fn edk2_probe_then_windowed_fetch() {
    if !setup("edk2_probe_then_windowed_fetch", &[]) {
        return;
    }
    let lab = Lab::new("tftp-edk2");
    let data = put_random(&lab, "efi/shimx64.efi", 300_001, 8);
    let _daemon = lab.start_daemon(BIN, &[]);
    let got = lab.client.enter(|| {
        let s: UdpSocket = client_socket();
        s.send_to(&rrq(b"efi/shimx64.efi", &[("tsize", "0")]), SERVER)
            .unwrap();
        let (p, from) = recv(&s);
        assert_eq!(p, b"\0\x06tsize\x00300001\0");
        s.send_to(b"\0\x05\0\x08abort\0", from).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        windowed_get(&s, "efi/shimx64.efi", 1468, 4)
    });
    assert_same(&got, &data, "EDK2-style windowed fetch");
}

/// With XDP attached, ACKs to a transfer's ephemeral port count as TFTP for the
/// client's MAC: the session registers its port with the program.
#[test]
fn xdp_counts_transfer_acks_as_tftp() {
    if !setup("xdp_counts_transfer_acks_as_tftp", &CLIENTS) {
        return;
    }
    let lab = Lab::new("tftp-xdp");
    let data = put_random(&lab, "one.bin", 1 << 20, 9);
    let _daemon = lab.start_daemon(BIN, &[]);
    if lab.metrics().value("gb10_xdp_attached", &[]) != 1.0 {
        gb10_lab::skip(
            "xdp_counts_transfer_acks_as_tftp",
            "XDP not attached (AYA_BUILD_SKIP build?)",
        );
        return;
    }
    let got = Fetch::Curl(&["--tftp-blksize", "1468"]).get(&lab, "one.bin");
    assert_same(&got, &data, "curl with XDP");
    let mac = gb10_lab::format_mac(&lab.client_mac());
    let acks = ((1 << 20) / 1468 + 1) as f64;
    let m = lab.metrics();
    let tftp = m.value(
        "gb10_client_packets_total",
        &[("mac", &mac), ("kind", "tftp")],
    );
    assert!(
        tftp >= acks,
        "{tftp} TFTP packets counted for {acks} ACKs\n{}",
        m.0
    );
}

#[test]
fn grub_configs_are_rendered_over_tftp() {
    let name = "grub_configs_are_rendered_over_tftp";
    if !setup(name, &[("grub-script-check", "grub-common")]) {
        return;
    }
    let lab = Lab::new("tftp-grub");
    gb10_lab::write_file(
        &lab.dir.join("data/inventory.toml"),
        include_str!("data/inventory.toml"),
    );
    let daemon = lab.start_daemon(BIN, &[]);
    // Debian's network GRUB asks for these with a leading slash under its prefix.
    for path in ["/grub/grub.cfg", "/grub/hosts/02:00:00:00:01:02.cfg"] {
        // Sent verbatim, as GRUB does (tftp-hpa's client would read `host:file` in it).
        let name = path.to_owned();
        let got = lab
            .client
            .enter(move || windowed_get(&client_socket(), &name, 512, 1));
        let text = String::from_utf8(got).expect("UTF-8 config");
        // The global config sources the host's by MAC under GRUB's own prefix; the host's
        // config fetches the kernel from the address the request reached.
        let want = if path.ends_with("grub.cfg") {
            "hosts/${net_default_mac}.cfg"
        } else {
            lab.server_ip
        };
        assert!(text.contains(want), "{path} lacks {want}:\n{text}");
        let file = lab.dir.join("fetched.cfg");
        std::fs::write(&file, &text).unwrap();
        let check = std::process::Command::new("grub-script-check")
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{path}: {}\n{text}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
    // The per-host fetch is an onboarding event of that host.
    let (_, record) = lab.http_admin("/clients/02:00:00:00:01:02");
    assert!(
        record.contains("\"path\":\"grub/hosts/02:00:00:00:01:02.cfg\""),
        "{record}\n{}",
        daemon.log()
    );
}

/// `[boot] installed = "not_found"` (the default) offers an installed host
/// `gb10-local-boot`: TFTP and HTTP answer it "not found" at once, even when a root holds
/// a file of that name, and it is no failure on the client's timeline (the host is on
/// its way to its disk); a file that is really missing still is one.
#[test]
fn local_boot_file_is_not_found_and_no_failure() {
    const NAME: &str = "local_boot_file_is_not_found_and_no_failure";
    if !setup(NAME, &[("curl", "curl"), ("dhclient", "isc-dhcp-client")]) {
        return;
    }
    let lab = Lab::new("tftp-local");
    put_random(&lab, "gb10-local-boot", 1024, 3);
    let daemon = lab.start_daemon(BIN, &[]);
    let (leased, _dhclient) = lab.client.dhclient_once(&lab.client_if, &lab.dir, 20);
    assert!(leased.is_some(), "no lease\n{}", daemon.log());
    let tftp = |name: &str| {
        let out = lab
            .client
            .cmd("curl")
            .args(["-sS", "-m", "5"])
            .arg(format!("tftp://{}/{name}", lab.server_ip))
            .output()
            .expect("curl");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // curl's exit code 68: the TFTP server said "file not found".
    let (code, err) = tftp("gb10-local-boot");
    assert_eq!(code, Some(68), "{err}");
    let (code, _) = lab.http("/gb10-local-boot");
    assert_eq!(code, 404);
    let (code, err) = tftp("missing.efi");
    assert_eq!(code, Some(68), "{err}");
    let mac = gb10_lab::format_mac(&lab.client_mac());
    let (code, body) = lab.http_admin(&format!("/clients/{mac}"));
    assert_eq!(code, 200, "{body}");
    let record: serde_json::Value = serde_json::from_str(&body).unwrap();
    let failures: Vec<&str> = record["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "failure")
        .filter_map(|e| e["what"].as_str())
        .collect();
    assert_eq!(failures, ["missing.efi"], "{record:#}\n{}", daemon.log());
}
