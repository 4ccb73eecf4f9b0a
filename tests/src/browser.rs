//! Headless Chromium driven by playwright-core (Node) for the page tests: the scripts
//! live in `gb10-userspace/tests/data/` and share `browser.cjs` to launch it (the
//! e2e boots' fleet watcher, `cargo xtask e2e`, uses them too).
use std::{
    path::Path,
    process::{Command, Stdio},
};

use crate::{Netns, require_tool, skip};

/// The global npm root that holds playwright-core, when chromium, node and it are
/// installed; otherwise a visible skip naming what is missing.
pub fn playwright(test: &str) -> Option<String> {
    if !require_tool(test, "chromium", "chromium") || !require_tool(test, "node", "nodejs") {
        return None;
    }
    let root = Command::new("npm")
        .args(["root", "-g"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    if !Path::new(&root).join("playwright-core").is_dir() {
        skip(
            test,
            "playwright-core missing: npm install -g playwright-core",
        );
        return None;
    }
    Some(root)
}

/// The command that runs the Node `script` with `args` inside `ns`, killed after
/// `timeout_s` seconds; HOME and Chromium's profile live under `dir`, so nothing is left
/// outside the lab. Run it (`output()`), or `spawn()` it (stdout and stderr piped) to
/// watch a page while something else happens, e.g. a VM boots.
pub fn node(
    ns: &Netns,
    npm_root: &str,
    dir: &Path,
    timeout_s: u32,
    script: &Path,
    args: &[String],
) -> Command {
    let profile = dir.join("chromium-profile");
    std::fs::create_dir_all(&profile).expect("chromium profile directory");
    let mut cmd = ns.cmd("timeout");
    cmd.arg(timeout_s.to_string())
        .arg("node")
        .arg(script)
        .args(args)
        .env("NODE_PATH", npm_root)
        .env("HOME", dir)
        .env("XDG_CONFIG_HOME", &profile)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}
