//! The fleet view watched in headless Chromium while a VM boots: the page is opened with
//! the admin token before the VM starts, records every stage the VM's row shows live
//! (no reload), and is checked at the end (XDP counters, keyboard, layout at 1280×720);
//! its screenshots are kept in `target/artifacts/e2e-<scenario>-fleet-*.png`.
use std::{
    io::Read as _,
    path::PathBuf,
    process::Child,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use gb10_lab::{Bridge, HTTP_PORT};
use serde_json::Value;

use super::scenario::{Fleet, Scenario};
use crate::root;

/// Longest the page may take to open and go live, Chromium's start included.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest the watcher may take after the end it waits for (counters, keyboard checks,
/// screenshots).
const FINISH_TIMEOUT: Duration = Duration::from_secs(45);

/// The stages the page must show for a boot to its heartbeat, in this order (others may
/// come between, e.g. iPXE's own DHCP after TFTP).
const BOOT_STAGES: &[&str] = &["dhcp", "tftp", "http", "heartbeat"];

/// Headless Chromium on the fleet view, running beside the boot.
pub struct Watcher {
    /// `timeout node fleet-boot.cjs`, killed by PID on Drop.
    child: Option<Child>,
    expect: Fleet,
    /// How long the page took to be live, the VM waiting.
    pub ready: Duration,
}

/// What the page showed, checked.
pub struct Seen {
    /// The stages the row displayed, in order, with when (ms after it was watched).
    pub stages: Vec<(String, u64)>,
    /// The VM's frames the XDP program counted, as the row showed them.
    pub frames: u64,
    /// The "why it stopped" line (failure scenarios).
    pub why: String,
    /// Time the watcher took after the page showed the end it waited for (counters,
    /// keyboard, screenshots).
    pub tail: Duration,
    pub ready: Duration,
}

impl Seen {
    /// One line for the summary.
    pub fn summary(&self) -> String {
        let stages: Vec<&str> = self.stages.iter().map(|(s, _)| s.as_str()).collect();
        let why = if self.why.is_empty() {
            String::new()
        } else {
            format!(", why it stopped: \"{}\"", self.why)
        };
        format!(
            "fleet view (Chromium, no reload): {}; XDP {} frames{why}; watcher +{:.1} s before the VM, +{:.1} s after",
            stages.join(" → "),
            self.frames,
            self.ready.as_secs_f64(),
            self.tail.as_secs_f64()
        )
    }
}

fn artifacts() -> PathBuf {
    root().join("target/artifacts")
}

impl Watcher {
    /// Opens the fleet view in the lab's namespace with the daemon's admin token and waits
    /// until it is live and watching `mac`'s row; `deadline` bounds the whole watch.
    pub fn start(
        lab: &Bridge,
        s: &Scenario,
        mac: &str,
        expect: Fleet,
        deadline: Duration,
    ) -> anyhow::Result<Self> {
        let started = Instant::now();
        let Some(npm_root) = gb10_lab::browser::playwright("e2e fleet view") else {
            bail!("the fleet watcher needs chromium, node and playwright-core (cargo xtask setup)");
        };
        std::fs::create_dir_all(artifacts())?;
        let shots = artifacts().join(format!("e2e-{}", s.name));
        for end in ["live", "heartbeat", "stopped", "detail"] {
            let _ = std::fs::remove_file(format!("{}-fleet-{end}.png", shots.display()));
        }
        let ready = lab.dir.join("fleet-ready");
        let expect_arg = match expect {
            Fleet::Live => "heartbeat".to_owned(),
            Fleet::Missing(path) => format!("stop:{}", file_name(path)),
        };
        let secs = (READY_TIMEOUT + deadline + FINISH_TIMEOUT).as_secs() as u32;
        let args = [
            // The admin routes under /admin on the LAN listener: the daemon's default.
            format!("http://{}:{HTTP_PORT}/admin/fleet", lab.server_ip),
            mac.to_owned(),
            gb10_lab::admin_token(&lab.dir),
            shots.display().to_string(),
            ready.display().to_string(),
            expect_arg,
            (READY_TIMEOUT + deadline).as_secs().to_string(),
        ];
        let script = root().join("gb10-userspace/tests/data/fleet-boot.cjs");
        let child = gb10_lab::browser::node(&lab.ns, &npm_root, &lab.dir, secs, &script, &args)
            .spawn()
            .context("running node")?;
        let mut w = Self {
            child: Some(child),
            expect,
            ready: Duration::ZERO,
        };
        while !ready.exists() {
            if let Some(status) = w.child().try_wait()? {
                let (out, err) = w.output();
                bail!("the fleet watcher exited ({status}) before the page was live:\n{out}{err}");
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "the fleet view was not live within {} s",
                    READY_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        w.ready = started.elapsed();
        Ok(w)
    }

    fn child(&mut self) -> &mut Child {
        self.child.as_mut().expect("watcher running")
    }

    /// Whether the watcher has ended (a failure scenario's page named the missing file,
    /// or it failed).
    pub fn done(&mut self) -> bool {
        self.child().try_wait().is_ok_and(|s| s.is_some())
    }

    /// Everything it printed.
    fn output(&mut self) -> (String, String) {
        let child = self.child();
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(o) = child.stdout.as_mut() {
            let _ = o.read_to_string(&mut out);
        }
        if let Some(e) = child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        (out, err)
    }

    /// Waits for the watcher's end (once the boot reached what it waits for) and checks
    /// what the page showed.
    pub fn finish(mut self) -> anyhow::Result<Seen> {
        let since = Instant::now();
        let status = loop {
            if let Some(status) = self.child().try_wait()? {
                break status;
            }
            if since.elapsed() > FINISH_TIMEOUT {
                bail!(
                    "the fleet watcher did not finish within {} s of the end it waited for",
                    FINISH_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (out, err) = self.output();
        if !status.success() {
            bail!("the fleet watcher failed ({status}):\n{out}{err}");
        }
        let line = out.trim().lines().last().unwrap_or_default();
        let r: Value = serde_json::from_str(line)
            .with_context(|| format!("the fleet watcher's report is not JSON: {out}{err}"))?;
        let seen = check(&r, self.expect).with_context(|| format!("the fleet view: {r:#}"))?;
        let ms = |k: &str| r[k].as_u64().unwrap_or(0);
        Ok(Seen {
            tail: Duration::from_millis(ms("endMs").saturating_sub(ms("doneMs"))),
            ready: self.ready,
            ..seen
        })
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            drop(gb10_lab::Guard(child));
        }
    }
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// What the page must have shown.
fn check(r: &Value, expect: Fleet) -> anyhow::Result<Seen> {
    let stages: Vec<(String, u64)> = r["seen"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|e| {
                    (
                        e["stage"].as_str().unwrap_or_default().to_owned(),
                        e["at_ms"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<&str> = stages.iter().map(|(s, _)| s.as_str()).collect();
    // Live: every change came from the event stream (each one after a push), the page was
    // loaded once and listed the clients once (no resync, no reconnect).
    if r["loads"] != 1 || r["lists"] != 1 {
        bail!(
            "the page reloaded or listed again: {} loads, {} lists",
            r["loads"],
            r["lists"]
        );
    }
    if r["seen"]
        .as_array()
        .is_some_and(|v| v.iter().any(|e| e["pushed"].as_u64() == Some(0)))
    {
        bail!("a stage was shown without a pushed event");
    }
    if r["bare"].as_array().is_none_or(|b| !b.is_empty()) {
        bail!("requests without the admin token: {}", r["bare"]);
    }
    let want: Vec<&str> = match expect {
        Fleet::Live => BOOT_STAGES.to_vec(),
        // Stopped at the kernel over HTTP: DHCP and TFTP came first.
        Fleet::Missing(_) => vec!["dhcp", "tftp", "http"],
    };
    let mut rest = names.iter();
    if !want.iter().all(|w| rest.any(|n| n == w)) {
        bail!("stages shown {names:?}, want {want:?} in this order");
    }
    let frames = r["frames"].as_u64().unwrap_or(0);
    if frames == 0 {
        bail!(
            "no XDP counters in the row (XDP attached by default): {}",
            r["xdpCell"]
        );
    }
    let why = r["why"].as_str().unwrap_or_default().to_owned();
    if let Fleet::Missing(path) = expect {
        let file = file_name(path);
        if !(why.contains(file) && why.contains("not found")) {
            bail!("the why-it-stopped line does not name {file} as not found: {why:?}");
        }
    } else if !why.is_empty() {
        bail!("a boot to its heartbeat says why it stopped: {why:?}");
    }
    let l = &r["layout"];
    let num = |k: &str| l[k].as_f64().unwrap_or(f64::MAX);
    if num("scrollWidth") > num("width") || num("rowRight") > 1280.0 || num("rowTop") > 720.0 {
        bail!("the page does not fit 1280x720: {l}");
    }
    if l["minFontPx"].as_f64().unwrap_or(0.0) < 12.0 {
        bail!("text smaller than 12 px in the row: {l}");
    }
    if r["tabs"].as_u64().is_none_or(|t| t >= 12) {
        bail!("Tab never reached the row's MAC");
    }
    let timeline = r["timeline"].as_str().unwrap_or_default();
    if !timeline.contains("leased") {
        bail!("the timeline opened by keyboard has no lease: {timeline}");
    }
    if !r["detailXdp"]
        .as_str()
        .is_some_and(|d| d.starts_with("XDP: ") && d.contains(" frames"))
    {
        bail!("the detail pane has no XDP counters: {}", r["detailXdp"]);
    }
    if r["detailHidden"] != true || r["focusBack"] != true {
        bail!("Escape did not close the timeline and give the focus back");
    }
    Ok(Seen {
        stages,
        frames,
        why,
        tail: Duration::ZERO,
        ready: Duration::ZERO,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(stages: &[&str], why: &str) -> Value {
        serde_json::json!({
            "seen": stages.iter().enumerate()
                .map(|(i, s)| serde_json::json!({"stage": s, "pushed": i + 1, "at_ms": i * 1000}))
                .collect::<Vec<_>>(),
            "loads": 1, "lists": 1, "bare": [], "frames": 40, "xdpCell": "40 · 0 · 0",
            "why": why, "tabs": 6, "timeline": "… leased 198.18.0.100 …",
            "detailXdp": "XDP: 40 frames (dhcp 4)", "detailHidden": true, "focusBack": true,
            "layout": {"scrollWidth": 1280, "width": 1280, "rowRight": 1260, "rowTop": 120,
                       "minFontPx": 14},
        })
    }

    #[test]
    fn stages_must_come_in_order_live() {
        let ok = report(&["dhcp", "tftp", "dhcp", "http", "dhcp", "heartbeat"], "");
        assert!(check(&ok, Fleet::Live).is_ok());
        let skipped = report(&["dhcp", "http", "heartbeat"], "");
        assert!(check(&skipped, Fleet::Live).is_err());
        let mut reloaded = ok.clone();
        reloaded["loads"] = 2.into();
        assert!(check(&reloaded, Fleet::Live).is_err());
        let mut no_counters = ok.clone();
        no_counters["frames"] = 0.into();
        assert!(check(&no_counters, Fleet::Live).is_err());
    }

    #[test]
    fn a_stop_must_name_the_missing_file() {
        let stages = ["dhcp", "tftp", "dhcp", "http"];
        let missing = Fleet::Missing("www/amd64/vmlinuz");
        let named = report(&stages, "HTTP: /amd64/vmlinuz — not found, 1s ago");
        assert!(check(&named, missing).is_ok());
        let other = report(&stages, "HTTP: /amd64/initrd.img — not found, 1s ago");
        assert!(check(&other, missing).is_err());
    }
}
