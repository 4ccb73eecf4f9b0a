//! Configuration tests: layering, defaults and the message of every refusal.
use std::{net::Ipv4Addr, time::Duration};

use ipnet::Ipv4Net;

use super::*;

fn raw(toml_text: &str) -> Result<RawConfig, toml::de::Error> {
    toml::from_str(toml_text)
}

#[test]
fn unknown_key_is_named() {
    let err = raw("lan_iface = \"eth1\"\nlan_ipp = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("lan_ipp"), "{err}");
    let err = raw("[dhcp]\nrang = \"x\"\n").unwrap_err().to_string();
    assert!(err.contains("rang"), "{err}");
}

#[test]
fn missing_lan_iface_is_named() {
    let err = Config::try_from(RawConfig::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("lan_iface") && err.contains("--lan-iface"),
        "{err}"
    );
}

#[test]
fn defaults_and_overlay() {
    let file =
        raw("lan_iface = \"eth1\"\nhttp_port = 8080\n[dhcp]\nlease_time = \"1h\"\n").unwrap();
    let flags = RawConfig {
        http_port: Some(8081),
        ..Default::default()
    };
    let cfg = Config::try_from(file.overlay(flags)).unwrap();
    assert_eq!(cfg.http_port, 8081);
    assert_eq!(cfg.lan_ip, "10.88.0.1/24".parse().unwrap());
    assert_eq!(cfg.dhcp.lease_time, Duration::from_secs(3600));
    assert_eq!(
        cfg.dhcp.range,
        (
            "10.88.0.100".parse().unwrap(),
            "10.88.0.200".parse().unwrap()
        )
    );
    assert_eq!(cfg.xdp, XdpMode::Auto);
    assert_eq!(cfg.mode, Mode::Direct);
}

#[test]
fn overlay_is_per_key_within_a_section() {
    let file = raw(
        "lan_iface = \"eth1\"\n[guard]\nclient_rate = 5\nclient_burst = 7\n[tftp]\nport = 6969\n",
    )
    .unwrap();
    let flags = RawConfig {
        guard: RawGuard {
            client_rate: Some(9),
            ..Default::default()
        },
        ..Default::default()
    };
    let cfg = Config::try_from(file.overlay(flags)).unwrap();
    assert_eq!(cfg.guard.client, (9, 7));
    assert_eq!(cfg.tftp.port, 6969);
    assert_eq!(cfg.lan_iface, "eth1");
}

#[test]
fn range_must_sit_in_the_subnet() {
    let mut r = raw("lan_iface = \"eth1\"\nlan_ip = \"198.18.0.1/24\"\n").unwrap();
    r.dhcp.range = Some("198.18.1.10-198.18.1.20".into());
    let err = Config::try_from(r.clone()).unwrap_err().to_string();
    assert!(err.contains("dhcp.range"), "{err}");
    r.dhcp.range = Some("198.18.0.20-198.18.0.10".into());
    assert!(Config::try_from(r.clone()).is_err());
    r.dhcp.range = Some("198.18.0.10-198.18.0.20".into());
    assert!(Config::try_from(r).is_ok());
}

#[test]
fn dhcp_options_relay_ranges_and_boot_section() {
    let r = raw(r#"
        lan_iface = "eth1"
        lan_ip = "198.18.0.1/24"
        [dhcp]
        router = "198.18.0.254"
        dns = ["198.18.0.53"]
        relay_ranges = ["198.19.1.0/24=198.19.1.100-198.19.1.200,198.19.1.1"]
        [boot]
        uefi_x86 = "shimx64.efi"
        unknown_clients = "ignore"
        "#)
    .unwrap();
    let cfg = Config::try_from(r.clone()).unwrap();
    assert_eq!(cfg.dhcp.router, Some(Ipv4Addr::new(198, 18, 0, 254)));
    assert_eq!(cfg.dhcp.dns, vec![Ipv4Addr::new(198, 18, 0, 53)]);
    let relay = &cfg.dhcp.relay_ranges[0];
    assert_eq!(relay.subnet, "198.19.1.0/24".parse::<Ipv4Net>().unwrap());
    assert_eq!(relay.router, Some(Ipv4Addr::new(198, 19, 1, 1)));
    assert_eq!(cfg.boot.uefi_x86, "shimx64.efi");
    assert_eq!(cfg.boot.bios, "undionly.kpxe");
    assert_eq!(cfg.boot.unknown_clients, UnknownClients::Ignore);

    let mut bad = r.clone();
    bad.dhcp.relay_ranges = Some(vec!["198.19.1.0/24=198.19.2.5-198.19.2.9".into()]);
    let err = Config::try_from(bad).unwrap_err().to_string();
    assert!(err.contains("dhcp.relay_ranges"), "{err}");
    let mut bad = r;
    bad.boot.bios = Some("x".repeat(200));
    let err = Config::try_from(bad).unwrap_err().to_string();
    assert!(err.contains("boot.bios"), "{err}");
}

#[test]
fn http_mounts_from_file_and_flags() {
    let file = raw(
        "lan_iface = \"eth1\"\n[http]\nseed_owner_check = false\nmounts = { \"/repos/\" = \"/srv/repos\", \"/repos/deb/\" = \"/srv/deb\" }\n",
    )
    .unwrap();
    let cfg = Config::try_from(file.clone().overlay(RawConfig::default())).unwrap();
    assert!(!cfg.http.seed_owner_check);
    assert_eq!(cfg.http.limits, HttpLimits::default());
    assert_eq!(
        cfg.http.mounts[0],
        ("/repos/deb/".into(), "/srv/deb".into())
    );
    let flags = RawConfig {
        http: RawHttp {
            mounts: Some(vec!["/hf/=/srv/hf".parse().unwrap()]),
            seed_owner_check: None,
            max_connections: Some(64),
            request_timeout: Some("5s".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let cfg = Config::try_from(file.overlay(flags)).unwrap();
    assert_eq!(cfg.http.mounts, vec![("/hf/".into(), "/srv/hf".into())]);
    assert_eq!(cfg.http.limits.max_connections, 64);
    assert_eq!(cfg.http.limits.request_timeout, Duration::from_secs(5));
    assert_eq!(cfg.http.limits.write_timeout, Duration::from_secs(60));
    let bad = raw("lan_iface = \"eth1\"\n[http]\nmounts = { \"/../\" = \"/x\" }\n").unwrap();
    let err = Config::try_from(bad).unwrap_err().to_string();
    assert!(err.contains("http.mounts"), "{err}");
    let none = raw("lan_iface = \"eth1\"\n[http]\nmax_connections = 0\n").unwrap();
    let err = Config::try_from(none).unwrap_err().to_string();
    assert!(err.contains("http.max_connections"), "{err}");
    let short = raw("lan_iface = \"eth1\"\n[http]\nwrite_timeout = \"10ms\"\n").unwrap();
    let err = Config::try_from(short).unwrap_err().to_string();
    assert!(err.contains("http.write_timeout"), "{err}");
}

#[test]
fn tftp_section() {
    let cfg = Config::try_from(raw("lan_iface = \"eth1\"\n").unwrap()).unwrap();
    assert_eq!(cfg.tftp.port, 69);
    assert_eq!(cfg.tftp.timeout, Duration::from_secs(1));
    assert!(!cfg.tftp.single_port);
    let r =
        raw("lan_iface = \"eth1\"\n[tftp]\nport = 6969\ntimeout = \"500ms\"\nsingle_port = true\n")
            .unwrap();
    let cfg = Config::try_from(r).unwrap();
    assert_eq!((cfg.tftp.port, cfg.tftp.single_port), (6969, true));
    assert_eq!(cfg.tftp.timeout, Duration::from_millis(500));
    let err = Config::try_from(raw("lan_iface = \"eth1\"\n[tftp]\ntimeout = \"0s\"\n").unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("tftp.timeout"), "{err}");
    assert!(raw("[tftp]\nprot = 1\n").is_err());
}

#[test]
fn small_subnet_default_range_avoids_own_address() {
    let lan: Ipv4Net = "198.18.0.129/26".parse().unwrap();
    let (s, e) = dhcp::default_range(lan);
    assert!(s <= e && lan.contains(&s) && lan.contains(&e));
    assert!(!(s..=e).contains(&lan.addr()));
}

#[test]
fn secrets_print_as_stars_and_admin_is_validated() {
    let token: Secret = "a-token-of-enough-length".parse().unwrap();
    assert_eq!(format!("{token} {token:?}"), "*** ***");
    let raw = |admin| RawConfig {
        lan_iface: Some("lo".into()),
        admin,
        ..Default::default()
    };
    let config = Config::try_from(raw(RawAdmin {
        token: Some(token.clone()),
        ..Default::default()
    }))
    .unwrap();
    assert!(!format!("{config:?}").contains("a-token"));
    let short = Config::try_from(raw(RawAdmin {
        token: Some("short".parse().unwrap()),
        ..Default::default()
    }));
    assert!(short.unwrap_err().to_string().contains("admin.token"));
    let wild = Config::try_from(raw(RawAdmin {
        listen: Some("0.0.0.0:9190".parse().unwrap()),
        ..Default::default()
    }));
    assert!(wild.unwrap_err().to_string().contains("wildcard"));
    // From a file: its first line, trimmed; not beside a value; an empty file refused.
    let dir = std::env::temp_dir().join(format!("gb10-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "a-token-from-a-file-0001\n").unwrap();
    let from_file = Config::try_from(raw(RawAdmin {
        token_file: Some(file.clone()),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(
        from_file.admin.token.as_ref().map(Secret::expose),
        Some("a-token-from-a-file-0001")
    );
    let both = Config::try_from(raw(RawAdmin {
        token: Some(token),
        token_file: Some(file.clone()),
        ..Default::default()
    }));
    assert!(both.unwrap_err().to_string().contains("not both"));
    std::fs::write(&file, "\n").unwrap();
    let empty = Config::try_from(raw(RawAdmin {
        token_file: Some(file),
        ..Default::default()
    }));
    assert!(empty.unwrap_err().to_string().contains("empty"));
    let missing = Config::try_from(raw(RawAdmin {
        token_file: Some(dir.join("nope")),
        ..Default::default()
    }));
    assert!(missing.unwrap_err().to_string().contains("cannot be read"));
    // The default BMC CA bundle is read and checked at load, naming the key.
    let ca = dir.join("bmc-ca.pem");
    std::fs::write(&ca, include_str!("../../tests/data/bmc-ca.pem")).unwrap();
    let with_ca = Config::try_from(raw(RawAdmin {
        bmc_ca_file: Some(ca.clone()),
        ..Default::default()
    }))
    .unwrap();
    assert_eq!(with_ca.admin.bmc_ca_file, Some(ca.clone()));
    for text in ["", "not a certificate\n"] {
        std::fs::write(&ca, text).unwrap();
        let err = Config::try_from(raw(RawAdmin {
            bmc_ca_file: Some(ca.clone()),
            ..Default::default()
        }))
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("admin.bmc_ca_file") && err.contains("no certificate"),
            "{err}"
        );
    }
    let err = Config::try_from(raw(RawAdmin {
        bmc_ca_file: Some(dir.join("nope.pem")),
        ..Default::default()
    }))
    .unwrap_err()
    .to_string();
    assert!(err.contains("admin.bmc_ca_file"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
