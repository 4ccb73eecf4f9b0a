//! podman as this project runs it: its own storage under target/image, runc, cgroupfs,
//! no systemd or journald, and resource limits no higher than this process has.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, bail};

/// One podman storage (images and containers) with its settings.
#[derive(Clone)]
pub struct Podman {
    root: PathBuf,
    runroot: PathBuf,
    conf: PathBuf,
}

impl Podman {
    /// A podman whose storage lives in `dir` (created), separate from the machine's.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        let root = dir.join("storage");
        std::fs::create_dir_all(&root)?;
        // The run root holds locks and runtime state: on tmpfs /run, one per storage,
        // named by a hash of the storage path (podman allows 50 characters).
        let runroot = {
            use std::hash::{DefaultHasher, Hash as _, Hasher as _};
            let mut h = DefaultHasher::new();
            dir.canonicalize()?.hash(&mut h);
            PathBuf::from(format!("/run/gb10-podman/{:016x}", h.finish()))
        };
        let conf = dir.join("containers.conf");
        std::fs::write(&conf, containers_conf()?)?;
        Ok(Self {
            root,
            runroot,
            conf,
        })
    }

    /// `podman ARGS…` against this storage.
    pub fn cmd(&self) -> Command {
        let mut cmd = Command::new("podman");
        self.apply(&mut cmd);
        cmd
    }

    /// Adds the storage flags and settings to `cmd`, which runs podman (perhaps through
    /// `nsenter`).
    pub fn apply(&self, cmd: &mut Command) {
        cmd.arg("--root")
            .arg(&self.root)
            .arg("--runroot")
            .arg(&self.runroot)
            .env("CONTAINERS_CONF", &self.conf);
    }

    /// Runs `podman ARGS…`; its stdout, or an error with everything it said.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .cmd()
            .args(args)
            .output()
            .context("podman (apt-get install podman; cargo xtask setup does)")?;
        checked(&format!("podman {}", args.join(" ")), out)
    }
}

/// stdout of a command that succeeded; otherwise an error with its output.
pub fn checked(what: &str, out: Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The settings: runc (crun refuses this kernel's hybrid cgroup layout), cgroupfs and
/// file events (no systemd, no journald), and container rlimits no higher than ours —
/// podman's default nofile of 1048576 needs CAP_SYS_RESOURCE to raise, which root in a
/// CI sandbox may lack. No default sysctls (ping_group_range is not ours to set in a
/// shared host network namespace).
fn containers_conf() -> anyhow::Result<String> {
    let limit = |resource| -> u64 {
        let mut rl = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        if unsafe { libc::getrlimit(resource, &mut rl) } != 0 {
            return 1024;
        }
        rl.rlim_max.min(rl.rlim_cur)
    };
    // The daemon's defaults need about 1,200 descriptors (1,024 HTTP connections, 64
    // TFTP transfers, listeners): 16,384 when we may, our own limit when lower.
    let nofile = limit(libc::RLIMIT_NOFILE).min(16_384);
    let nproc = limit(libc::RLIMIT_NPROC).min(4_096);
    Ok(format!(
        "# Written by cargo xtask image; see xtask/src/image/podman.rs.\n\
         [containers]\n\
         default_ulimits = [\"nofile={nofile}:{nofile}\", \"nproc={nproc}:{nproc}\"]\n\
         default_sysctls = []\n\
         [engine]\n\
         runtime = \"runc\"\n\
         cgroup_manager = \"cgroupfs\"\n\
         events_logger = \"file\"\n"
    ))
}
