//! The HTTP boot service against real clients: curl from a network namespace for static
//! files, traversal, seeds, owner checks and heartbeats; each built-in seed checked by its
//! ecosystem's own tool (cloud-init, grub-script-check, Python's TOML and YAML parsers).
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use gb10_lab::{HTTP_PORT, Lab, require_root, require_tool, run};
use gb10_provision::{
    hosts::install::{InstallView, Secrets},
    inventory::Inventory,
    mac::Mac,
    seeds::{self, Facts, Server},
    templates::Templates,
};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");
const SAMPLE: &str = include_str!("data/inventory.toml");

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gb10-http-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `cmd`; (success, stdout+stderr).
fn outcome(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[track_caller]
fn must_pass(cmd: &mut Command, what: &str, file: &Path) {
    let (ok, text) = outcome(cmd);
    let content = std::fs::read_to_string(file).unwrap_or_default();
    assert!(
        ok,
        "{what} rejected {}:\n{text}\n--- file ---\n{content}",
        file.display()
    );
}

const PY_TOML: &str = r#"
import sys, tomllib
d = tomllib.load(open(sys.argv[1], "rb"))
g = d["global"]
for k in ("keyboard", "country", "fqdn", "mailto", "timezone"):
    assert isinstance(g[k], str) and g[k], k
assert "root-password-hashed" in g or "root-password" in g
assert d["network"]["source"] in ("from-dhcp", "from-answer")
ds = d["disk-setup"]
assert ds["filesystem"] in ("ext4", "xfs", "zfs", "btrfs")
assert "disk-list" in ds or "filter" in ds
"#;

const PY_TALOS: &str = r#"
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
assert d["version"] == "v1alpha1", d.get("version")
assert set(d) <= {"version", "debug", "persist", "machine", "cluster"}, set(d)
m = d["machine"]
assert m["type"] in ("controlplane", "worker", "init"), m["type"]
assert m["install"]["disk"].startswith("/dev/")
assert m["token"] and m["ca"]["crt"]
c = d["cluster"]
assert c["controlPlane"]["endpoint"].startswith("https://")
assert c["clusterName"] and c["token"] and c["ca"]["crt"]
"#;

/// The autoinstall seed, as subiquity reads it: commands are whole strings that name the
/// server the request came to.
const PY_AUTOINSTALL: &str = r#"
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))["autoinstall"]
assert d["version"] == 1
assert d["identity"]["password"].startswith("$6$"), d["identity"]
late = d["late-commands"]
assert late[0] == "mkdir -p /target/etc/gb10 && echo 198.18.0.1:8080 > /target/etc/gb10/provisioning-server", late[0]
assert any(c.endswith("'http://198.18.0.1:8080/onboard.service?mac=02:00:00:00:01:01'") for c in late), late
# The install's token, when handed out, is written for root only.
assert all(c.startswith("umask 077 && ") for c in late if "GB10_TOKEN=" in c), late
assert any("phase=installed http://198.18.0.1:8080/heartbeat" in c for c in late), late
assert d["storage"]["layout"]["match"]["path"] == "/dev/nvme0n1"
"#;

const PY_YAML: &str = r#"
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
assert d["instance-id"] and d["local-hostname"], d
"#;

/// Every built-in seed, rendered for every host of the sample inventory (installing and
/// installed), passes the checker of the system that reads it.
#[test]
fn builtin_seeds_pass_their_checkers() {
    let name = "builtin_seeds_pass_their_checkers";
    if !require_tool(name, "cloud-init", "cloud-init")
        || !require_tool(name, "grub-script-check", "grub-common")
        || !require_tool(name, "python3", "python3-yaml")
    {
        return;
    }
    let dir = scratch("checkers");
    // The sample and an image install.
    let inv = Inventory::parse(
        Path::new("tests/data/inventory.toml"),
        &format!(
            "{SAMPLE}\n[profiles.img]\nkernel = \"i/vmlinuz\"\nseed = \"image\"\n\
             vars = {{ image = \"images/d.raw.zst\", image_sha256 = \"{}\" }}\n\
             [[hosts]]\nmac = \"02:00:00:00:01:06\"\nhostname = \"img-1\"\nprofile = \"img\"\n",
            "ab".repeat(32)
        ),
    )
    .expect("sample inventory with an image host");
    let t = Templates::builtin(seeds::BUILTIN);
    // An install under way hands out its secrets (token, SSH host key); a later boot of
    // the installed system reads its seed without them.
    let install = |secrets| InstallView {
        instance_id: "gb10-0123456789abcdef".into(),
        overwrite: false,
        host_key: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHostKeyOfTheTest gb10-host".into(),
        secrets,
    };
    let (first, later) = (
        install(Some(Secrets {
            token: "0f".repeat(32),
            host_key_private: Some(
                "-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\n"
                    .into(),
            ),
        })),
        install(None),
    );
    let server = Server {
        host: "198.18.0.1".into(),
        port: 8080,
    };
    let mut checked = std::collections::BTreeMap::<&str, usize>::new();
    let mut contexts = vec![(
        "unknown".to_owned(),
        seeds::host_context(
            &t,
            &inv,
            Mac([2, 0, 0, 0, 0, 0x99]),
            None,
            &server,
            Facts::default(),
        )
        .unwrap(),
        vec![
            "boot.ipxe.j2",
            "grub.cfg.j2",
            "ipxe-host.j2",
            "grub-host.j2",
        ],
    )];
    for host in &inv.hosts {
        let seed = inv.profile_for(Some(host)).and_then(|(_, p)| p.seed);
        for (installed, install) in [(false, &first), (true, &later)] {
            let facts = Facts {
                installed,
                install: Some(install),
                local_size: Some(&|_: &str| Some(123_456_789)),
            };
            let ctx = seeds::host_context(&t, &inv, host.mac, Some(host), &server, facts).unwrap();
            contexts.push((
                format!("{}-{installed}", host.hostname.as_deref().unwrap()),
                ctx,
                // The install script goes out once, with its secrets: never rendered
                // without them.
                seeds::templates_for(seed)
                    .into_iter()
                    .filter(|n| !installed || *n != "install.sh.j2")
                    .collect(),
            ));
        }
    }
    for (who, ctx, names) in &contexts {
        for name in names {
            let text = t
                .render(name, ctx)
                .unwrap_or_else(|e| panic!("{name} for {who}: {e}"));
            let file = dir.join(format!("{who}-{name}"));
            std::fs::write(&file, &text).unwrap();
            match *name {
                "user-data.j2" | "autoinstall.j2" | "vendor-data.j2" => {
                    assert!(text.starts_with("#cloud-config\n"), "{name}: {text}");
                    if *name == "autoinstall.j2" {
                        must_pass(
                            Command::new("python3")
                                .args(["-c", PY_AUTOINSTALL])
                                .arg(&file),
                            "autoinstall shape",
                            &file,
                        );
                    }
                    must_pass(
                        Command::new("cloud-init")
                            .args(["schema", "--config-file"])
                            .arg(&file),
                        "cloud-init schema",
                        &file,
                    );
                }
                "meta-data.j2" => must_pass(
                    Command::new("python3").args(["-c", PY_YAML]).arg(&file),
                    "YAML",
                    &file,
                ),
                "grub.cfg.j2" | "grub-host.j2" => must_pass(
                    Command::new("grub-script-check").arg(&file),
                    "grub-script-check",
                    &file,
                ),
                "proxmox-answer.toml.j2" => must_pass(
                    Command::new("python3").args(["-c", PY_TOML]).arg(&file),
                    "Proxmox answer keys",
                    &file,
                ),
                "talos.yaml.j2" => {
                    // Printed as is: no escaping by file name.
                    assert!(text.contains(" for talos-"), "{text}");
                    must_pass(
                        Command::new("python3").args(["-c", PY_TALOS]).arg(&file),
                        "Talos config keys",
                        &file,
                    )
                }
                "boot.ipxe.j2" | "ipxe-host.j2" => {
                    assert!(text.starts_with("#!ipxe\n"), "{name}: {text}");
                    assert!(text.contains("exit"), "{name} has no local-disk exit");
                }
                "onboard.service.j2" => {
                    for needle in ["[Unit]", "[Service]", "[Install]", "/heartbeat"] {
                        assert!(text.contains(needle), "{name} lacks {needle}");
                    }
                }
                "install.sh.j2" => {
                    assert!(text.contains("IMAGE_SIZE='123456789'"), "{text}");
                    must_pass(Command::new("sh").arg("-n").arg(&file), "sh -n", &file);
                }
                other => panic!("no checker for {other}"),
            }
            *checked.entry(name).or_default() += 1;
        }
    }
    // Every built-in was checked at least once (an included one through its includer).
    for (name, _) in seeds::BUILTIN.iter().filter(|(n, _)| *n != "ipxe-local.j2") {
        assert!(
            checked.contains_key(name),
            "{name} never checked: {checked:?}"
        );
    }
    // The checkers can fail: broken inputs are rejected.
    let bad = dir.join("bad-grub.cfg");
    std::fs::write(&bad, "if [ x ]; then\n  echo\n").unwrap();
    assert!(!outcome(Command::new("grub-script-check").arg(&bad)).0);
    let bad = dir.join("bad-user-data");
    std::fs::write(&bad, "#cloud-config\nusers: 3\n").unwrap();
    assert!(
        !outcome(
            Command::new("cloud-init")
                .args(["schema", "--config-file"])
                .arg(&bad)
        )
        .0
    );
    // An installed host's iPXE script exits to local disk; an installing one boots.
    let spark = inv.hosts[0].mac;
    let boot = t
        .render(
            "ipxe-host.j2",
            &seeds::host_context(&t, &inv, spark, inv.host(spark), &server, Facts::default())
                .unwrap(),
        )
        .unwrap();
    assert!(
        boot.contains("kernel http://198.18.0.1:8080/casper/vmlinuz"),
        "{boot}"
    );
    assert!(
        boot.contains("s=http://198.18.0.1:8080/cloud-init/02:00:00:00:01:01/"),
        "{boot}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `check` renders every template for every host and names template, file, line and
/// variable when one is missing.
#[test]
fn check_names_template_and_variable() {
    let dir = scratch("check");
    let broken = SAMPLE.replace("password_hash = \"$6$rounds", "pw_hash = \"$6$rounds");
    std::fs::write(dir.join("inventory.toml"), &broken).unwrap();
    let check = |dir: &Path| {
        outcome(
            Command::new(BIN)
                .args(["check", "--lan-iface", "lo", "--data-path"])
                .arg(dir)
                .env("NO_COLOR", "1"),
        )
    };
    let (ok, text) = check(&dir);
    assert!(!ok, "check passed a missing variable:\n{text}");
    assert!(text.contains("autoinstall.j2"), "{text}");
    assert!(text.contains("`password_hash`"), "{text}");
    assert!(
        text.contains("gb10-userspace/templates/autoinstall.j2:"),
        "{text}"
    );

    // An override template with a missing variable names the override file and line.
    std::fs::write(dir.join("inventory.toml"), SAMPLE).unwrap();
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    let over = dir.join("templates/meta-data.j2");
    std::fs::write(&over, "instance-id: x\nlocal-hostname: {{ no_such_var }}\n").unwrap();
    let (ok, text) = check(&dir);
    assert!(!ok, "{text}");
    assert!(
        text.contains(&format!("{}:2", over.display())) && text.contains("`no_such_var`"),
        "{text}"
    );

    // A broken inventory names its line.
    std::fs::remove_file(&over).unwrap();
    std::fs::write(
        dir.join("inventory.toml"),
        format!("{SAMPLE}\n[[hosts]]\nmac = \"02:00:00:00:01:01\"\nhostname = \"dup\"\n"),
    )
    .unwrap();
    let (ok, text) = check(&dir);
    assert!(!ok, "{text}");
    let line = SAMPLE.lines().count() + 2;
    assert!(text.contains(&format!("inventory.toml:{line}")), "{text}");

    std::fs::write(dir.join("inventory.toml"), SAMPLE).unwrap();
    let (ok, text) = check(&dir);
    assert!(ok, "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `curl` from the client namespace with extra flags: (status, body, Content-Type).
fn curl(lab: &Lab, extra: &[&str], path: &str) -> (u16, Vec<u8>, String) {
    let out_file = lab.dir.join(format!("curl-{}", std::process::id()));
    let _ = std::fs::remove_file(&out_file);
    let url = format!("http://{}:{HTTP_PORT}{path}", lab.server_ip);
    let out = lab
        .client
        .cmd("curl")
        .args(["-sS", "-m", "20", "--path-as-is", "-o"])
        .arg(&out_file)
        .args(["-w", "%{http_code} %{content_type}"])
        .args(extra)
        .arg(&url)
        .output()
        .expect("curl");
    let meta = String::from_utf8_lossy(&out.stdout).into_owned();
    let (code, ctype) = meta.split_once(' ').unwrap_or((&meta, ""));
    let body = std::fs::read(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    (code.trim().parse().unwrap_or(0), body, ctype.to_owned())
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// Deterministic bytes that are not a repeating pattern.
fn pseudo_random(len: usize) -> Vec<u8> {
    gb10_lab::pseudo_random(1, len)
}

#[test]
fn static_files_listing_ranges_conditionals_and_no_escape() {
    let name = "static_files_listing_ranges_conditionals_and_no_escape";
    if !require_root(name) || !require_tool(name, "curl", "curl") {
        return;
    }
    let lab = Lab::new("hst");
    let data = lab.dir.join("data");
    let www = data.join("www");
    let repos = lab.dir.join("repos");
    std::fs::create_dir_all(www.join("sub dir")).unwrap();
    std::fs::create_dir_all(repos.join("pool")).unwrap();
    std::fs::write(www.join("hello.txt"), "hello, gb10\n").unwrap();
    std::fs::write(www.join("sub dir/a<b>.txt"), "x").unwrap();
    std::fs::write(www.join("grubx64.efi"), "MZ-not-really").unwrap();
    std::fs::write(repos.join("pool/pkg.deb"), "deb").unwrap();
    let big = pseudo_random(30 * 1024 * 1024);
    std::fs::write(www.join("big.img"), &big).unwrap();
    // Secrets outside every root, and a symlink pointing at one.
    const SECRET: &str = "TOP-SECRET-OUTSIDE-ROOT";
    std::fs::write(lab.dir.join("secret.txt"), SECRET).unwrap();
    std::fs::write(data.join("secret.txt"), SECRET).unwrap();
    std::os::unix::fs::symlink(lab.dir.join("secret.txt"), www.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink(&lab.dir, www.join("escape-dir")).unwrap();
    // A relative symlink that stays inside the root is followed.
    std::os::unix::fs::symlink("hello.txt", www.join("alias.txt")).unwrap();

    let mount = format!("/repos/={}", repos.display());
    let _daemon = lab.start_daemon(BIN, &["--http-mount", &mount]);

    // Listing.
    let (code, body, ctype) = curl(&lab, &[], "/");
    let listing = String::from_utf8_lossy(&body);
    assert_eq!(code, 200);
    assert!(ctype.starts_with("text/html"), "{ctype}");
    for needle in [
        "href=\"hello.txt\"",
        "href=\"sub%20dir/\"",
        "href=\"big.img\"",
    ] {
        assert!(listing.contains(needle), "{needle} missing:\n{listing}");
    }
    // Symlinks that lead out of the root are left out: nothing outside is looked at,
    // not even its size or date. One that stays inside is listed like its target.
    assert!(!listing.contains("escape"), "{listing}");
    let alias = listing
        .lines()
        .find(|l| l.contains("href=\"alias.txt\""))
        .unwrap_or_else(|| panic!("alias.txt not listed:\n{listing}"));
    assert!(alias.trim_end().ends_with(" 12"), "{alias}");
    let (_, body, _) = curl(&lab, &[], "/sub%20dir/");
    assert!(
        String::from_utf8_lossy(&body).contains("a&lt;b&gt;.txt"),
        "names are escaped"
    );
    let (code, body, _) = curl(&lab, &[], "/repos/pool/pkg.deb");
    assert_eq!((code, body.as_slice()), (200, b"deb".as_slice()));
    let (code, _, _) = curl(&lab, &[], "/repos");
    assert_eq!(code, 301);
    let (code, body, _) = curl(&lab, &[], "/alias.txt");
    assert_eq!((code, body.as_slice()), (200, b"hello, gb10\n".as_slice()));

    // HEAD: the GET headers, no body.
    let out = run(lab.client.cmd("curl").args([
        "-sS",
        "-I",
        &format!("http://{}:{HTTP_PORT}/hello.txt", lab.server_ip),
    ]));
    let head = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(header(&head, "content-length"), Some("12"), "{head}");
    assert_eq!(header(&head, "accept-ranges"), Some("bytes"));
    // Header names go out in Title-Case: GRUB's http module matches `Content-Length: `
    // byte for byte (lower case made it wait 30 s per file).
    assert!(head.contains("\r\nContent-Length: 12\r\n"), "{head}");
    // A missing file: a body and a closed connection. EDK2 waits forever on a bodiless
    // 404 (seen in the arm64 HTTP boot e2e scenario).
    let out = run(lab.client.cmd("curl").args([
        "-sS",
        "-i",
        &format!("http://{}:{HTTP_PORT}/revocations_sbat.efi", lab.server_ip),
    ]));
    let missing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert!(missing.contains("\r\nConnection: close\r\n"), "{missing}");
    assert!(missing.ends_with("\r\n\r\n404 Not Found\n"), "{missing}");
    let etag = header(&head, "etag").expect("ETag").to_owned();
    let last_modified = header(&head, "last-modified")
        .expect("Last-Modified")
        .to_owned();

    // A byte range.
    let (code, body, _) = curl(&lab, &["-r", "7-10"], "/hello.txt");
    assert_eq!((code, body.as_slice()), (206, b"gb10".as_slice()));
    let (code, body, _) = curl(&lab, &["-H", "Range: bytes=-5"], "/hello.txt");
    assert_eq!((code, body.as_slice()), (206, b"gb10\n".as_slice()));
    let (code, body, _) = curl(&lab, &["-H", "Range: bytes=100-"], "/hello.txt");
    assert_eq!((code, body.len()), (416, 0));
    // Many parts or absurd numbers: the whole file once, nothing more.
    let many = format!(
        "Range: bytes={}",
        (0..200)
            .map(|i| format!("{i}-{i}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let (code, body, _) = curl(&lab, &["-H", &many], "/hello.txt");
    assert_eq!((code, body.len()), (200, 12));
    let (code, body, _) = curl(
        &lab,
        &["-H", "Range: bytes=0-99999999999999999999999999"],
        "/hello.txt",
    );
    assert_eq!((code, body.len()), (200, 12));
    let (code, body, _) = curl(&lab, &["-H", "Range: bytes=1-99999999999"], "/hello.txt");
    assert_eq!((code, body.len()), (206, 11));

    // Conditionals.
    let inm = format!("If-None-Match: {etag}");
    let (code, body, _) = curl(&lab, &["-H", &inm], "/hello.txt");
    assert_eq!((code, body.len()), (304, 0));
    let ims = format!("If-Modified-Since: {last_modified}");
    let (code, _, _) = curl(&lab, &["-H", &ims], "/hello.txt");
    assert_eq!(code, 304);
    let (code, _, _) = curl(&lab, &["-H", "If-None-Match: \"other\""], "/hello.txt");
    assert_eq!(code, 200);
    let (code, body, _) = curl(
        &lab,
        &["-H", "If-Range: \"stale\"", "-r", "0-1"],
        "/hello.txt",
    );
    assert_eq!(
        (code, body.len()),
        (200, 12),
        "If-Range mismatch sends it all"
    );

    // Small files' bytes are kept between requests: a change in place is served at
    // once (the kept bytes are checked against the open file each time), a file renamed
    // over or removed within a second.
    std::fs::create_dir_all(www.join("site")).unwrap();
    let changing = www.join("site/changing.cfg");
    std::fs::write(&changing, "#!ipxe\nchain one\n").unwrap();
    let (code, body, _) = curl(&lab, &[], "/site/changing.cfg");
    assert_eq!(
        (code, body.as_slice()),
        (200, b"#!ipxe\nchain one\n".as_slice())
    );
    // Another size and later times (file times move in clock ticks of a few ms).
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&changing, "#!ipxe\nchain two!\n").unwrap();
    let (code, body, _) = curl(&lab, &[], "/site/changing.cfg");
    assert_eq!(
        (code, body.as_slice()),
        (200, b"#!ipxe\nchain two!\n".as_slice())
    );
    let fresh = www.join("site/changing.cfg.new");
    std::fs::write(&fresh, "#!ipxe\nchain three\n").unwrap();
    std::fs::rename(&fresh, &changing).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let (code, body, _) = curl(&lab, &[], "/site/changing.cfg");
    assert_eq!(
        (code, body.as_slice()),
        (200, b"#!ipxe\nchain three\n".as_slice())
    );
    std::fs::remove_file(&changing).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let (code, _, _) = curl(&lab, &[], "/site/changing.cfg");
    assert_eq!(code, 404, "a removed file is gone within a second");

    // Content types.
    let (_, _, ctype) = curl(&lab, &[], "/grubx64.efi");
    assert_eq!(ctype, "application/efi");

    // 30 MiB, byte-identical, and a range deep inside it.
    let t0 = Instant::now();
    let (code, body, _) = curl(&lab, &[], "/big.img");
    assert_eq!(code, 200);
    assert!(
        body == big,
        "30 MiB download differs ({} bytes)",
        body.len()
    );
    eprintln!("30 MiB in {:?}", t0.elapsed());
    let (code, body, _) = curl(&lab, &["-r", "20000000-20000099"], "/big.img");
    assert_eq!(code, 206);
    assert_eq!(body, big[20_000_000..20_000_100]);

    // No escape: every vector is refused with an empty body.
    for vector in [
        "/../secret.txt",
        "/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/%2e%2e/secret.txt",
        "/%252e%252e/secret.txt",
        "/%252e%252e/%252e%252e/secret.txt",
        "/..%2fsecret.txt",
        "/..%5csecret.txt",
        "/..\\secret.txt",
        "/secret.txt%00.txt",
        "/%00",
        "/escape.txt",
        "/escape-dir/secret.txt",
        "/repos/../secret.txt",
        "/repos/%2e%2e/%2e%2e/secret.txt",
        "/repos/..%2f..%2fsecret.txt",
        "/sub%20dir/../../secret.txt",
    ] {
        let (code, body, _) = curl(&lab, &[], vector);
        assert!(
            (400..500).contains(&code),
            "{vector}: status {code}, body {:?}",
            String::from_utf8_lossy(&body)
        );
        // Only the one-line status page, nothing of any file.
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.starts_with(&format!("{code} ")) && text.lines().count() == 1,
            "{vector}: served {} bytes: {text:?}",
            body.len(),
        );
        assert!(!text.contains(SECRET), "{vector}: {text:?}");
    }
    // Methods other than GET/HEAD are refused.
    let (code, _, _) = curl(&lab, &["-X", "DELETE"], "/hello.txt");
    assert_eq!(code, 405);
}

/// Seeds: rendered from the request's Host, only to their owner, 500 without any seed
/// text when a variable is missing, and inventory edits applied without a restart.
#[test]
fn seeds_owner_check_missing_variable_and_reload() {
    let name = "seeds_owner_check_missing_variable_and_reload";
    if !require_root(name) || !require_tool(name, "curl", "curl") {
        return;
    }
    let lab = Lab::new("hsd");
    // Three machines on the client side, each with its MAC and its fixed address: the
    // client end is spark-1 (198.18.0.2), macvlans are deb-1 (.3) and pve-1 (.4). The
    // owner check wants the neighbour entry of the address to name the host.
    lab.client.ip(&[
        "link",
        "set",
        "dev",
        &lab.client_if,
        "address",
        "02:00:00:00:01:01",
    ]);
    lab.macvlan("h3", "02:00:00:00:01:02", Some("198.18.0.3/24"));
    lab.macvlan("h4", "02:00:00:00:01:03", Some("198.18.0.4/24"));
    let data = lab.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // pve-1 lacks its password hash: its answer file cannot render.
    let inv = SAMPLE.replace(
        "vars = { password_hash = \"$6$saltsalt$abc\", ",
        "vars = { ",
    );
    assert_ne!(inv, SAMPLE);
    std::fs::write(data.join("inventory.toml"), &inv).unwrap();
    let daemon = lab.start_daemon(BIN, &[]);

    // spark-1 (198.18.0.2) gets its autoinstall seed, naming the address it used.
    let (code, body, _) = curl(&lab, &[], "/cloud-init/02:00:00:00:01:01/user-data");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(code, 200, "{text}");
    assert!(text.starts_with("#cloud-config\n"), "{text}");
    assert!(text.contains("autoinstall:"), "{text}");
    assert!(text.contains("http://198.18.0.1:8080/heartbeat"), "{text}");
    // The Host header decides the server address in the seed.
    let (code, body, _) = curl(
        &lab,
        &["-H", "Host: pxe.lab:8080"],
        "/cloud-init/02-00-00-00-01-01/meta-data",
    );
    assert_eq!(code, 200);
    let (_, body2, _) = curl(
        &lab,
        &["-H", "Host: pxe.lab:8080"],
        "/cloud-init/02:00:00:00:01:01/vendor-data",
    );
    assert!(String::from_utf8_lossy(&body).contains("local-hostname: spark-1"));
    assert!(String::from_utf8_lossy(&body2).contains("pxe.lab:8080"));

    // spark-1's seed asked from deb-1's address: 403, nothing of the seed.
    let (code, body, _) = curl(
        &lab,
        &["--interface", "h3"],
        "/cloud-init/02:00:00:00:01:01/user-data",
    );
    assert_eq!(code, 403);
    assert!(!String::from_utf8_lossy(&body).contains("autoinstall"));
    // deb-1 from its own address is fine.
    let (code, body, _) = curl(
        &lab,
        &["--interface", "h3"],
        "/cloud-init/02:00:00:00:01:02/user-data",
    );
    assert_eq!(code, 200, "{}", String::from_utf8_lossy(&body));

    // pve-1's answer misses a variable: 5xx, no fragment, and the log names both.
    let (code, body, _) = curl(
        &lab,
        &["--interface", "h4"],
        "/proxmox/02:00:00:00:01:03/answer.toml",
    );
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!((500..600).contains(&code), "{code}: {text}");
    for fragment in ["[global]", "keyboard", "pve-1", "from-dhcp"] {
        assert!(
            !text.contains(fragment),
            "seed fragment {fragment} in {text}"
        );
    }
    let log = daemon.log();
    assert!(
        log.contains("proxmox-answer.toml.j2") && log.contains("`password_hash`"),
        "{log}"
    );

    // iPXE scripts: entry and per host.
    let (code, body, _) = curl(&lab, &[], "/boot.ipxe");
    assert_eq!(code, 200);
    assert!(body.starts_with(b"#!ipxe\n"));
    let (_, body, _) = curl(&lab, &[], "/ipxe/02:00:00:00:01:01");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        text.contains("kernel http://198.18.0.1:8080/casper/vmlinuz"),
        "{text}"
    );
    // iPXE escapes the colons of `${netX/mac}`: the same script.
    let (code, escaped, _) = curl(&lab, &[], "/ipxe/02%3A00%3A00%3A00%3A01%3A01");
    assert_eq!((code, escaped), (200, body));
    let (_, body, _) = curl(&lab, &[], "/ipxe/02:00:00:00:0f:0f");
    let text = String::from_utf8_lossy(&body).into_owned();
    assert!(
        text.contains("choose --timeout") && text.contains("console=ttyS0"),
        "{text}"
    );
    let (code, body, _) = curl(&lab, &[], "/grub/grub.cfg");
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("grub_cpu"));

    // Fix the inventory on disk: served without a restart. The Proxmox installer's
    // single URL: the host is told by the MACs it posts.
    std::fs::write(data.join("inventory.toml"), SAMPLE).unwrap();
    let sysinfo = r#"{"product":{"product":"pve"},"network_interfaces":[{"link":"eno1","mac":"02:00:00:00:01:03"}]}"#;
    let post = ["-H", "Content-Type: application/json", "-d", sysinfo];
    let mut answer = (0, Vec::new(), String::new());
    let ok = wait_for(Duration::from_secs(10), || {
        answer = curl(
            &lab,
            &[&["--interface", "h4"], &post[..]].concat(),
            "/proxmox/answer",
        );
        answer.0 == 200
    });
    assert!(ok, "fixed inventory not picked up\n{}", daemon.log());
    let (_, body, ctype) = answer;
    let text = String::from_utf8_lossy(&body).into_owned();
    assert_eq!(ctype.as_str(), "application/toml", "{text}");
    assert!(text.contains("fqdn = \"pve-1.lan\""), "{text}");
    let (code, _, _) = curl(
        &lab,
        &[&["--interface", "h3"], &post[..]].concat(),
        "/proxmox/answer",
    );
    assert_eq!(code, 403, "pve-1's answer from deb-1's address");
    // The answer (with the root password hash) went out once: a second read is refused.
    let (code, body, _) = curl(
        &lab,
        &["--interface", "198.18.0.4"],
        "/proxmox/02:00:00:00:01:03/answer.toml",
    );
    assert_eq!(code, 403, "a second read of the answer file");
    assert!(!String::from_utf8_lossy(&body).contains("pve-1.lan"));
    // A broken edit keeps the previous inventory and logs file:line.
    std::fs::write(
        data.join("inventory.toml"),
        format!("{SAMPLE}\n[[hosts]]\nmac = \"nonsense\"\n"),
    )
    .unwrap();
    let line = SAMPLE.lines().count() + 3;
    let logged = wait_for(Duration::from_secs(10), || {
        daemon.log().contains(&format!("inventory.toml:{line}"))
    });
    assert!(
        logged,
        "broken edit not logged with its line\n{}",
        daemon.log()
    );
    let (code, _, _) = curl(
        &lab,
        &["--interface", "h3"],
        "/cloud-init/02:00:00:00:01:02/meta-data",
    );
    assert_eq!(code, 200, "the previous inventory keeps serving");
}

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    for _ in 0..1000 {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn client_state(lab: &Lab, mac: &str) -> (String, usize) {
    let (code, body) = lab.http_admin(&format!("/clients/{mac}"));
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("client JSON");
    (
        v["state"].as_str().unwrap_or_default().to_owned(),
        v["timeline"].as_array().map_or(0, Vec::len),
    )
}

/// A heartbeat sequence moves a client through its states; a restart keeps them.
#[test]
fn heartbeats_move_client_state_and_survive_restart() {
    let name = "heartbeats_move_client_state_and_survive_restart";
    if !require_root(name) || !require_tool(name, "curl", "curl") {
        return;
    }
    let lab = Lab::new("hhb");
    let data = lab.dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("inventory.toml"), SAMPLE).unwrap();
    std::fs::create_dir_all(data.join("www/casper")).unwrap();
    std::fs::write(data.join("www/casper/vmlinuz"), "kernel").unwrap();
    let mac = "02:00:00:00:01:01";
    // The client end is spark-1: its MAC at its fixed address.
    lab.client
        .ip(&["link", "set", "dev", &lab.client_if, "address", mac]);
    let token = lab.token_file();
    let args = ["--admin-token-file", &token];
    let mut daemon = lab.start_daemon(BIN, &args);

    // Fetching the profile's kernel, the boot script and the seed are events too.
    assert_eq!(lab.http("/casper/vmlinuz").0, 200);
    let (_, record) = lab.http_admin(&format!("/clients/{mac}"));
    assert!(record.contains(r#""event":"kernel""#), "{record}");
    assert_eq!(client_state(&lab, mac).0, "pxe_booted");
    assert_eq!(lab.http(&format!("/ipxe/{mac}")).0, 200);
    assert_eq!(client_state(&lab, mac).0, "pxe_booted");
    let (code, seed) = lab.http(&format!("/cloud-init/{mac}/user-data"));
    assert_eq!(code, 200, "{seed}");
    assert_eq!(client_state(&lab, mac).0, "installing");
    // The host's install token, which its seed alone carries.
    let token = gb10_lab::install_token(&seed).expect("the seed carries the install token");

    let post = |args: &[&str]| {
        let (code, _, _) = curl(&lab, args, "/heartbeat");
        code
    };
    // Without the token (anyone on the LAN can name the MAC): refused, no move.
    let json = format!(r#"{{"mac":"{mac}","phase":"installed","message":"curtin done"}}"#);
    assert_eq!(
        post(&["-H", "Content-Type: application/json", "-d", &json]),
        403
    );
    assert_eq!(client_state(&lab, mac).0, "installing");
    let json = format!(
        r#"{{"mac":"{mac}","phase":"installed","message":"curtin done","token":"{token}"}}"#
    );
    assert_eq!(
        post(&["-H", "Content-Type: application/json", "-d", &json]),
        200
    );
    assert_eq!(client_state(&lab, mac).0, "installed");
    // The installed host's iPXE script now exits to the local disk.
    let (_, script) = lab.http(&format!("/ipxe/{mac}"));
    assert!(
        script.contains("installed") && script.contains("\nexit"),
        "{script}"
    );
    // What the onboard unit sends (form-encoded curl -d).
    let unit = lab.http(&format!("/onboard.service?mac={mac}")).1;
    assert!(unit.contains(&format!("GB10_MAC={mac}")), "{unit}");
    assert_eq!(
        post(&[
            "-d",
            &format!("mac={mac}"),
            "-d",
            "phase=onboarded",
            "-d",
            &format!("token={token}")
        ]),
        200
    );
    assert_eq!(client_state(&lab, mac).0, "onboarded");
    // Garbage is refused and changes nothing.
    assert_eq!(post(&["-d", "mac=zz&phase=onboarded"]), 400);
    assert_eq!(
        post(&["-H", "Content-Type: application/json", "-d", "{\"mac\":1}"]),
        400
    );

    let metrics = lab.metrics();
    assert_eq!(
        metrics.value("gb10_clients", &[("state", "onboarded")]),
        1.0
    );
    assert_eq!(
        metrics.value("gb10_clients", &[("state", "installing")]),
        0.0
    );
    let (_, before) = client_state(&lab, mac);
    assert!(before >= 4, "timeline has {before} entries");

    assert!(daemon.stop().success(), "{}", daemon.log());
    let _daemon = lab.start_daemon(BIN, &args);
    let (state, after) = client_state(&lab, mac);
    assert_eq!(state, "onboarded", "state lost across restart");
    assert_eq!(after, before, "timeline lost across restart");
    let (code, list) = lab.http_admin("/clients");
    assert_eq!(code, 200);
    assert!(list.contains(mac), "{list}");
    assert_eq!(
        lab.metrics()
            .value("gb10_clients", &[("state", "onboarded")]),
        1.0
    );
}

/// `[http] max_connections`: with two idle connections open and a limit of two, a third
/// client waits in the accept queue; when one idle connection goes, it is served.
#[test]
fn connections_beyond_the_limit_wait_their_turn() {
    let name = "connections_beyond_the_limit_wait_their_turn";
    if !require_root(name) || !require_tool(name, "curl", "curl") {
        return;
    }
    let lab = Lab::new("hcap");
    let www = lab.dir.join("data/www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("hello.txt"), "hello, gb10\n").unwrap();
    let _daemon = lab.start_daemon(BIN, &["--http-max-connections", "2"]);
    assert_eq!(
        curl(&lab, &[], "/hello.txt").0,
        200,
        "served below the limit"
    );
    // Two clients that connect and send nothing (bash holds each socket open).
    let hold = || {
        gb10_lab::Guard(
            lab.client
                .cmd("bash")
                .arg("-c")
                .arg(format!(
                    "exec 3<>/dev/tcp/{}/{HTTP_PORT}; sleep 30",
                    lab.server_ip
                ))
                .spawn()
                .expect("bash"),
        )
    };
    let first = hold();
    let _second = hold();
    std::thread::sleep(Duration::from_millis(500));
    let (code, _, _) = curl(&lab, &["-m", "1.5"], "/hello.txt");
    assert_eq!(
        code, 0,
        "a third connection is not served while two are open"
    );
    drop(first);
    let (code, body, _) = curl(&lab, &["-m", "5"], "/hello.txt");
    assert_eq!((code, body.as_slice()), (200, b"hello, gb10\n".as_slice()));
}

/// One hostile connection from `src` to `dst`: it sends `head`, then one byte of
/// `trickle` every 300 ms (nothing when empty) and never reads; `closed()` says how long
/// after the connect the server ended it, and what it answered before.
struct Trickler {
    ended: std::sync::mpsc::Receiver<(Duration, String)>,
    seen: std::cell::RefCell<Option<(Duration, String)>>,
}

impl Trickler {
    /// Connects (in the client namespace) and starts sending.
    fn start(lab: &Lab, src: &str, dst: &str, head: &str, trickle: bool) -> Self {
        use std::io::{Read as _, Write as _};
        let (src, dst): (std::net::SocketAddr, std::net::SocketAddr) =
            (format!("{src}:0").parse().unwrap(), dst.parse().unwrap());
        // A socket keeps the namespace it was made in.
        let mut tcp = lab.client.enter(move || {
            let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            sock.bind(&src.into()).expect("bind");
            sock.connect_timeout(&dst.into(), Duration::from_secs(2))
                .expect("connect");
            std::net::TcpStream::from(sock)
        });
        tcp.write_all(head.as_bytes()).expect("head");
        tcp.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let (tx, ended) = std::sync::mpsc::channel();
        let started = Instant::now();
        std::thread::spawn(move || {
            let mut answer = Vec::new();
            // Bounded: 40 s, far beyond every limit the test sets.
            while started.elapsed() < Duration::from_secs(40) {
                if trickle && tcp.write_all(b" ").is_err() {
                    break;
                }
                let mut buf = [0u8; 4096];
                match tcp.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => answer.extend_from_slice(&buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                        ) => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send((
                started.elapsed(),
                String::from_utf8_lossy(&answer).into_owned(),
            ));
        });
        Self {
            ended,
            seen: None.into(),
        }
    }

    /// When the server ended the connection and what it answered, waiting up to `wait`
    /// for it.
    fn closed(&self, wait: Duration) -> Option<(Duration, String)> {
        let mut seen = self.seen.borrow_mut();
        if seen.is_none() {
            *seen = self.ended.recv_timeout(wait).ok();
        }
        seen.clone()
    }
}

/// Issue 16's slow-request attack on both listeners: trickled requests from two
/// addresses cannot hold the slots past `request_timeout`, one address cannot take more
/// than its share (the next connection gets 503 at once), idle connections go after
/// `idle_timeout`, a client that stops reading is dropped after `write_timeout`, and
/// meanwhile a legitimate client gets `GET /boot.ipxe` and the admin API; a slow reader
/// that keeps moving still gets a whole file.
#[test]
fn slow_clients_cannot_hold_every_http_slot() {
    let name = "slow_clients_cannot_hold_every_http_slot";
    if !require_root(name) || !require_tool(name, "curl", "curl") {
        return;
    }
    let lab = Lab::new("hslow");
    // Two attacker addresses beside the legitimate client's.
    for ip in ["198.18.0.3/24", "198.18.0.4/24"] {
        lab.client.ip(&["addr", "add", ip, "dev", &lab.client_if]);
    }
    let www = lab.dir.join("data/www");
    std::fs::create_dir_all(&www).unwrap();
    let big = gb10_lab::pseudo_random(7, 64 << 20);
    std::fs::write(www.join("big.img"), &big).unwrap();
    let admin = format!("{}:9190", lab.server_ip);
    let mut daemon = lab.start_daemon(
        BIN,
        &[
            "--http-max-connections",
            "4",
            "--http-max-connections-per-address",
            "2",
            "--http-request-timeout",
            "3s",
            "--http-idle-timeout",
            "3s",
            "--http-write-timeout",
            "2s",
            "--admin-listen",
            &admin,
        ],
    );
    let lan = format!("{}:{HTTP_PORT}", lab.server_ip);
    let post = "POST /heartbeat HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2000\r\n\r\n{";

    // Four trickled POSTs from one address and two from another fill the four slots
    // (the first address gets two: its third and fourth are refused at once).
    let t0 = Instant::now();
    let a: Vec<_> = (0..4)
        .map(|_| Trickler::start(&lab, "198.18.0.3", &lan, post, true))
        .collect();
    let b: Vec<_> = (0..2)
        .map(|_| Trickler::start(&lab, "198.18.0.4", &lan, post, true))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let refused: Vec<_> = a.iter().filter_map(|t| t.closed(Duration::ZERO)).collect();
    assert_eq!(
        refused.len(),
        2,
        "two of one address's four refused at once: {refused:?}\n{}",
        daemon.log()
    );
    for (after, answer) in &refused {
        assert!(answer.starts_with("HTTP/1.1 503"), "{refused:?}");
        assert!(*after < Duration::from_secs(1), "refused after {after:?}");
    }
    // The legitimate client waits no longer than the request deadline.
    let asked = Instant::now();
    let out = lab
        .client
        .cmd("curl")
        .args(["-sS", "-m", "15", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("http://{lan}/boot.ipxe"))
        .output()
        .expect("curl");
    let waited = asked.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "GET /boot.ipxe during the attack\n{}",
        daemon.log()
    );
    assert!(
        waited < Duration::from_secs(6),
        "GET /boot.ipxe waited {waited:?}"
    );
    // Every held POST was cut at its deadline, not left to trickle on.
    let held = a.iter().chain(&b).filter_map(|t| {
        let (after, _) = t
            .closed(Duration::from_secs(8))
            .unwrap_or_else(|| panic!("a trickled POST still open\n{}", daemon.log()));
        (after >= Duration::from_secs(1)).then_some(after)
    });
    for after in held.collect::<Vec<_>>() {
        assert!(
            after >= Duration::from_millis(2500),
            "cut at {after:?}, before the deadline"
        );
    }
    assert!(t0.elapsed() < Duration::from_secs(15));

    // The admin listener alike: one address's third connection is refused, idle and
    // trickled heads go at their deadlines, and the API answers meanwhile.
    let idle: Vec<_> = (0..3)
        .map(|_| Trickler::start(&lab, "198.18.0.3", &admin, "", false))
        .collect();
    let head = Trickler::start(
        &lab,
        "198.18.0.4",
        &admin,
        "GET /api/hosts HTTP/1.1\r\nX-Slow: ",
        true,
    );
    std::thread::sleep(Duration::from_secs(1));
    let refused = idle.iter().filter_map(|t| t.closed(Duration::ZERO)).count();
    assert_eq!(refused, 1, "one address's third admin connection refused");
    let out = lab
        .client
        .cmd("curl")
        .args(["-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}"])
        .args([
            "-H",
            &format!("Authorization: Bearer {}", lab.admin_token()),
        ])
        .arg(format!("http://{admin}/api/hosts"))
        .output()
        .expect("curl");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "admin API during the attack"
    );
    let cut = |t: &Trickler, what: &str| {
        let (after, _) = t
            .closed(Duration::from_secs(8))
            .unwrap_or_else(|| panic!("{what} still open\n{}", daemon.log()));
        assert!(
            after >= Duration::from_millis(2500),
            "{what} cut at {after:?}"
        );
    };
    for t in &idle {
        if t.closed(Duration::ZERO)
            .is_none_or(|(after, _)| after >= Duration::from_secs(1))
        {
            cut(t, "an idle admin connection");
        }
    }
    cut(&head, "a trickled admin request head");

    // A client that asks for 64 MiB and reads nothing is dropped after the write
    // timeout: what it finds later is cut short.
    let reader = lab.client.enter({
        let lan = lan.clone();
        move || {
            let tcp = std::net::TcpStream::connect(&lan).expect("connect");
            std::io::Write::write_all(&mut &tcp, b"GET /big.img HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            tcp
        }
    });
    std::thread::sleep(Duration::from_secs(5));
    let mut got = Vec::new();
    let _ = std::io::Read::read_to_end(&mut &reader, &mut got);
    assert!(
        got.len() < big.len(),
        "a reader that stalled 5 s still got all {} bytes",
        got.len()
    );
    // A slow reader that keeps moving gets every byte, for longer than the write
    // timeout: 64 KiB every 20 ms (about 3 MB/s), 16 MiB in about 5 s.
    let slow = lab.client.enter({
        let lan = lan.clone();
        move || {
            let tcp = std::net::TcpStream::connect(&lan).expect("connect");
            std::io::Write::write_all(
                &mut &tcp,
                b"GET /big.img HTTP/1.1\r\nHost: x\r\nRange: bytes=0-16777215\r\n\r\n",
            )
            .unwrap();
            tcp
        }
    });
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    while started.elapsed() < Duration::from_secs(30) {
        match std::io::Read::read(&mut &slow, &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.len() >= (16 << 20) {
            // The head is in front; the body may be whole now.
            let head = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
            if got.len() - head >= 16 << 20 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let head = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a head")
        + 4;
    assert!(
        got.starts_with(b"HTTP/1.1 206"),
        "{:?}",
        String::from_utf8_lossy(&got[..head])
    );
    assert!(
        got[head..] == big[..16 << 20],
        "slow download differs: {} body bytes after {:?}\n{}",
        got.len() - head,
        started.elapsed(),
        daemon.log()
    );
    assert!(
        started.elapsed() > Duration::from_secs(3),
        "not slow: {:?}",
        started.elapsed()
    );
    let _ = daemon.stop();
}
