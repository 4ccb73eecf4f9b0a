//! Text for the terminal: tables of clients and hosts, and one line per client event
//! naming the stage of the chain it belongs to (DHCP, TFTP, HTTP, seed, heartbeat).
use serde_json::Value;

/// Unix milliseconds as `HH:MM:SS.mmm` (UTC).
pub fn clock(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let text = humantime::format_rfc3339_millis(t).to_string();
    text.get(11..23).unwrap_or(&text).to_owned()
}

/// How long ago `ms` was, shortly (`4s`, `3m`, `2h`, `5d`).
pub fn ago(now_ms: u64, ms: u64) -> String {
    let s = now_ms.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// A duration in milliseconds, shortly (`850ms`, `12.4s`, `3m05s`).
pub fn span(ms: u64) -> String {
    match ms {
        0..=999 => format!("{ms}ms"),
        1000..=59_999 => format!("{:.1}s", ms as f64 / 1000.0),
        _ => format!("{}m{:02}s", ms / 60_000, (ms / 1000) % 60),
    }
}

/// The firmware an option-93 architecture names.
fn arch_name(arch: u64) -> &'static str {
    match arch {
        0 => "BIOS",
        6 | 7 | 9 => "x86 UEFI",
        11 => "arm64 UEFI",
        15 | 16 => "x86 UEFI HTTP",
        19 => "arm64 UEFI HTTP",
        _ => "arch",
    }
}

fn s<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// The stage of the chain and what happened, for a timeline entry or live event (both
/// carry the event's fields flattened: `event`, `path`, `ip`, `phase`, …). HTTP paths
/// start with `/`; TFTP ones are relative to the TFTP root.
pub fn describe(e: &Value) -> (&'static str, String) {
    let by_path = |p: &str| if p.starts_with('/') { "HTTP" } else { "TFTP" };
    match s(e, "event") {
        "discover" => (
            "DHCP",
            match e.get("arch").and_then(Value::as_u64) {
                Some(a) => format!("discover from {} (arch {a})", arch_name(a)),
                None => "discover (no architecture: an OS or installer, not firmware)".into(),
            },
        ),
        "leased" => ("DHCP", format!("leased {}", s(e, "ip"))),
        "boot_file" => (by_path(s(e, "path")), format!("boot file {}", s(e, "path"))),
        "kernel" => (
            by_path(s(e, "path")),
            format!("kernel/initrd {}", s(e, "path")),
        ),
        "seed" => ("SEED", format!("seed {}", s(e, "path"))),
        // An installed host's network boot sent to its disk: by DHCP (`dhcp: …`) or by
        // the boot loader's script (its path).
        "local_boot" => {
            let path = s(e, "path");
            let stage = if path.starts_with("dhcp:") {
                "DHCP"
            } else {
                by_path(path)
            };
            (stage, format!("sent to its disk ({path})"))
        }
        "heartbeat" => {
            let mut text = format!("heartbeat {}", s(e, "phase"));
            if let Some(m) = e.get("message").and_then(Value::as_str) {
                text.push_str(&format!(" ({m})"));
            }
            if let Some(ip) = e.get("ip").and_then(Value::as_str) {
                text.push_str(&format!(" from {ip}"));
            }
            ("BEAT", text)
        }
        "failure" => {
            let stage = match s(e, "stage") {
                "dhcp" => "DHCP",
                "tftp" => "TFTP",
                "http" => "HTTP",
                "seed" => "SEED",
                "installer" | "heartbeat" => "BEAT",
                _ => "?",
            };
            let mut text = format!("FAILED {} ({})", s(e, "what"), reason(s(e, "reason")));
            if let Some(n) = e.get("times").and_then(Value::as_u64).filter(|&n| n > 1) {
                text.push_str(&format!(" ×{n}"));
            }
            (stage, text)
        }
        other => ("?", other.to_owned()),
    }
}

/// A failure's reason in words.
pub fn reason(code: &str) -> &str {
    match code {
        "not_found" => "not found",
        "denied" => "access denied",
        "forbidden" => "refused to this address",
        "busy" => "server busy",
        "timeout" => "client stopped answering",
        "unanswered" => "offer never answered",
        "error" => "server error",
        "bad_request" => "bad request",
        "write_refused" => "write refused (read-only server)",
        "render_failed" => "template failed to render",
        "no_boot_file" => "no boot file",
        "pool_exhausted" => "no free address",
        other => other,
    }
}

/// Left-aligned columns, two spaces apart; the last column is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i == last {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// `GET /api/clients` as a table.
pub fn clients(rows: &[Value], now_ms: u64) -> String {
    let or_dash = |v: &str| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.to_owned()
        }
    };
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let last = r.get("last_event").filter(|e| !e.is_null());
            let (stage, what) = last.map(describe).unwrap_or(("", "never seen".into()));
            let seen = r
                .get("last_seen_ms")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".into(), |t| format!("{} ago", ago(now_ms, t)));
            let ip = match (s(r, "lease_ip"), s(r, "reported_ip")) {
                ("", "") => "-".to_owned(),
                ("", reported) => format!("{reported} (reported)"),
                (lease, _) => lease.to_owned(),
            };
            let name = match (s(r, "hostname"), r.get("known").and_then(Value::as_bool)) {
                ("", Some(false)) => "(unknown)".to_owned(),
                (h, _) => or_dash(h),
            };
            vec![
                s(r, "mac").to_owned(),
                name,
                or_dash(s(r, "state")),
                ip,
                seen,
                or_dash(s(r, "host_state")),
                if stage.is_empty() {
                    what
                } else {
                    format!("{stage} {what}")
                },
            ]
        })
        .collect();
    table(
        &[
            "MAC",
            "HOSTNAME",
            "STATE",
            "IP",
            "SEEN",
            "HOST",
            "LAST EVENT",
        ],
        &body,
    )
}

/// `GET /api/hosts` as a table.
pub fn hosts(rows: &[Value], now_ms: u64) -> String {
    let body: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let since = r
                .get("since_ms")
                .and_then(Value::as_u64)
                .map_or_else(|| "-".into(), |t| format!("{} ago", ago(now_ms, t)));
            let beat = r
                .get("last_heartbeat")
                .and_then(Value::as_array)
                .and_then(|a| Some((a.first()?.as_u64()?, a.get(1)?.as_str()?)))
                .map_or_else(
                    || "-".into(),
                    |(t, p)| format!("{p} {} ago", ago(now_ms, t)),
                );
            let bmc = r
                .get("bmc")
                .and_then(|b| b.get("url"))
                .and_then(Value::as_str)
                .unwrap_or("-");
            vec![
                s(r, "mac").to_owned(),
                s(r, "state").to_owned(),
                since,
                s(r, "source").to_owned(),
                if s(r, "profile").is_empty() {
                    "-".into()
                } else {
                    s(r, "profile").into()
                },
                bmc.to_owned(),
                beat,
                s(r, "reason").to_owned(),
            ]
        })
        .collect();
    table(
        &[
            "MAC",
            "STATE",
            "SINCE",
            "SOURCE",
            "PROFILE",
            "BMC",
            "HEARTBEAT",
            "REASON",
        ],
        &body,
    )
}

/// One line for an event: clock, time since the client's previous event (the time it
/// spent in the previous stage), optionally the client, the stage and what happened, and
/// the state it moved to.
pub fn event_line(
    e: &Value,
    previous_ms: Option<u64>,
    who: Option<&str>,
    moved_to: Option<&str>,
) -> String {
    let at = e.get("at_ms").and_then(Value::as_u64).unwrap_or(0);
    let delta =
        previous_ms.map_or_else(|| "".into(), |p| format!("+{}", span(at.saturating_sub(p))));
    let (stage, what) = describe(e);
    let mut line = format!("{}  {delta:>8}  ", clock(at));
    if let Some(w) = who {
        line.push_str(&format!("{w}  "));
    }
    line.push_str(&format!("{stage:<4}  {what}"));
    if let Some(state) = moved_to {
        line.push_str(&format!("  → {state}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_boot_names_how_the_host_was_sent_to_its_disk() {
        let e =
            serde_json::json!({"event": "local_boot", "path": "dhcp: gb10-local-boot (not found)"});
        assert_eq!(
            describe(&e),
            (
                "DHCP",
                "sent to its disk (dhcp: gb10-local-boot (not found))".to_owned()
            )
        );
        let e = serde_json::json!({"event": "local_boot", "path": "/ipxe/52:54:00:00:00:01"});
        assert_eq!(describe(&e).0, "HTTP");
    }

    #[test]
    fn lines_and_tables() {
        let e = serde_json::json!({"at_ms": 1_700_000_012_345u64, "event": "boot_file", "path": "shimx64.efi"});
        let line = event_line(&e, Some(1_700_000_010_000), None, Some("pxe_booted"));
        assert_eq!(
            line,
            "22:13:32.345     +2.3s  TFTP  boot file shimx64.efi  → pxe_booted"
        );
        let e = serde_json::json!({"event": "kernel", "path": "/amd64/vmlinuz"});
        assert_eq!(
            describe(&e),
            ("HTTP", "kernel/initrd /amd64/vmlinuz".into())
        );
        let e = serde_json::json!({"event": "failure", "stage": "tftp", "what": "shimx64.efi", "reason": "not_found", "times": 3});
        assert_eq!(
            describe(&e),
            ("TFTP", "FAILED shimx64.efi (not found) ×3".into())
        );
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y\n");
        assert_eq!(span(125_000), "2m05s");
        assert_eq!(ago(10_000, 4_000), "6s");
    }
}
