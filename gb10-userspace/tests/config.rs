//! Configuration errors at the binary edge: exit status and messages that name the key.
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");

fn check(args: &[&str], toml: Option<&str>) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("gb10-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("check")
        .args(args)
        .env_remove("GB10_LAN_IFACE")
        .env_remove("GB10_CONFIG");
    if let Some(text) = toml {
        let path = dir.join(format!("{}.toml", text.len()));
        std::fs::write(&path, text).unwrap();
        cmd.arg("--config").arg(path);
    }
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn unknown_key_is_named() {
    let (ok, out) = check(
        &[],
        Some("lan_iface = \"eth9\"\nlan_ipp = \"198.18.0.1/24\"\n"),
    );
    assert!(!ok);
    assert!(
        out.contains("unknown field") && out.contains("lan_ipp"),
        "{out}"
    );
    assert!(out.contains("line 2"), "names the line: {out}");
}

#[test]
fn missing_lan_iface_is_named() {
    let (ok, out) = check(&[], Some("mode = \"direct\"\n"));
    assert!(!ok);
    assert!(
        out.contains("lan_iface") && out.contains("--lan-iface") && out.contains("GB10_LAN_IFACE"),
        "{out}"
    );
}

#[test]
fn flag_beats_env_beats_file() {
    let toml = "lan_iface = \"eth9\"\nhttp_port = 1111\n";
    let (ok, out) = check(&[], Some(toml));
    assert!(ok && out.contains("http_port=1111"), "{out}");
    let dir = std::env::temp_dir().join(format!("gb10-config-prec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("c.toml");
    std::fs::write(&path, toml).unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(&path)
            .args(extra)
            .env("GB10_HTTP_PORT", "2222")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(run(&[]).contains("http_port=2222"));
    assert!(run(&["--http-port", "3333"]).contains("http_port=3333"));
}

#[test]
fn bad_values_say_what_to_write() {
    let (ok, out) = check(&["--lan-iface", "eth9", "--lan-ip", "198.18.0.1"], None);
    assert!(
        !ok && out.contains("lan_ip") && out.contains("ADDRESS/PREFIX"),
        "{out}"
    );
    let (ok, out) = check(&["--lan-iface", "eth9", "--xdp", "sometimes"], None);
    assert!(!ok && out.contains("sometimes"), "{out}");
}
