//! The image under a real runtime, as the chart runs it: the archive loaded by `podman
//! load`, the chart rendered by helm (direct and proxy values), its DaemonSet's pod
//! template played by `podman kube play` in a lab network namespace (host network,
//! read-only root, exactly the chart's capabilities, its mounts and config), then real
//! clients against it: a dhclient lease, the probes' /healthz, per-client counters on
//! /metrics, a firmware network boot; and without each capability, the failure the
//! chart README promises.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use gb10_lab::{Bridge, Lab, Metrics, Netns, wait_until};
use serde_json::{Value, json};

use super::{Build, Image, Podman, dir, podman::checked, reference};
use crate::{e2e::assets::Arch, root};

/// The capabilities the chart adds (and the bits /proc/PID/status shows for them).
const CHART_CAPS: [(&str, u32); 4] = [
    ("NET_ADMIN", 12),
    ("BPF", 39),
    ("PERFMON", 38),
    ("NET_BIND_SERVICE", 10),
];

/// A podman storage holding one architecture's image, loaded from its archive.
#[derive(Clone)]
pub struct Runtime {
    podman: Podman,
    pub arch: Arch,
    /// Which image of `arch` was loaded (the release artifact or a check image).
    pub build: Build,
}

impl Runtime {
    /// The storage `load` filled for `arch`, holding its `build` image.
    pub fn open(arch: Arch, build: Build) -> anyhow::Result<Self> {
        Ok(Self {
            podman: Podman::new(&dir(arch).join("podman-run"))?,
            arch,
            build,
        })
    }

    /// The loaded image's name.
    fn reference(&self) -> String {
        reference(self.build)
    }

    /// How output names the image.
    fn label(&self) -> String {
        self.build.label(self.arch)
    }

    /// A fresh storage with `image`'s archive loaded by `podman load`, as a user
    /// without registry access loads it.
    pub fn load(image: &Image) -> anyhow::Result<Self> {
        let run_dir = dir(image.arch).join("podman-run");
        let stale = Self::open(image.arch, image.build)?;
        // Whatever a killed earlier run left: its pods, then the storage itself.
        let _ = stale.podman.run(&["pod", "rm", "--all", "--force"]);
        let _ = stale.podman.run(&["system", "reset", "--force"]);
        let _ = std::fs::remove_dir_all(&run_dir);
        let rt = Self::open(image.arch, image.build)?;
        let loaded =
            rt.podman
                .run(&["load", "--input", image.archive.to_str().context("path")?])?;
        ensure!(
            loaded.contains(&rt.reference()),
            "podman load did not name {}: {loaded}",
            rt.reference()
        );
        let platform = rt.podman.run(&[
            "image",
            "inspect",
            "--format",
            "{{.Os}}/{{.Architecture}}",
            &rt.reference(),
        ])?;
        ensure!(
            platform.trim() == format!("linux/{}", image.arch.debian()),
            "the loaded image is {platform}"
        );
        println!(
            "image check [{}]: podman load {} -> {} ({})",
            rt.label(),
            image.archive.display(),
            rt.reference(),
            platform.trim()
        );
        Ok(rt)
    }

    /// Plays `docs` (a ConfigMap and a Pod) with `podman kube play` from inside the
    /// network namespace `netns`, so the pod's host network is the lab's.
    ///
    /// Two things podman 4.3 refuses are left out, neither of which changes what runs:
    /// the pod's annotations (it holds them to the 63-character limit of label values,
    /// and the chart's `checksum/config` is a sha256, 64 hex digits; it only tells
    /// Kubernetes when to roll the pod), and the container's `ports` (with host network
    /// they only declare what the daemon binds, but podman turns them into port
    /// mappings, which it allows on bridge networks only). And one is translated: the
    /// pod's `seccompProfile`, which podman reads from the older annotation only.
    pub fn play(&self, netns: &str, docs: &[Value]) -> anyhow::Result<Pod> {
        let mut docs = docs.to_vec();
        for doc in docs.iter_mut().filter(|d| d["kind"] == "Pod") {
            // podman 4.3 reads the pod's seccomp profile from the annotation Kubernetes
            // used before the securityContext field, not from the field.
            let seccomp = match doc["spec"]["securityContext"]["seccompProfile"]["type"].as_str() {
                Some("Unconfined") => {
                    json!({"seccomp.security.alpha.kubernetes.io/pod": "unconfined"})
                }
                _ => json!({}),
            };
            doc["metadata"]["annotations"] = seccomp;
            for c in doc["spec"]["containers"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                c.as_object_mut().map(|c| c.remove("ports"));
            }
        }
        let pod = docs
            .iter()
            .find(|d| d["kind"] == "Pod")
            .context("no Pod to play")?;
        let name = pod["metadata"]["name"]
            .as_str()
            .context("pod name")?
            .to_owned();
        let container = pod["spec"]["containers"][0]["name"]
            .as_str()
            .context("container name")?;
        let file = dir(self.arch).join(format!("{name}.kube.json"));
        // JSON is YAML: one document per object, as kubectl would take them.
        let text: Vec<String> = docs.iter().map(Value::to_string).collect();
        std::fs::write(&file, text.join("\n---\n"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{netns}")).arg("podman");
        self.podman.apply(&mut cmd);
        cmd.args(["kube", "play", "--replace", "--quiet"])
            .arg(&file);
        checked("podman kube play", cmd.output().context("nsenter")?)?;
        Ok(Pod {
            podman: self.podman.clone(),
            container: format!("{name}-{container}"),
            name,
        })
    }

    /// `podman run --rm`, no network, read-only root: the options before the image.
    fn run_cmd(&self) -> Command {
        let mut cmd = self.podman.cmd();
        cmd.args(["run", "--rm", "--network", "none", "--read-only"]);
        cmd
    }

    /// `podman run --rm` of the image, no network, read-only root, with `mounts`
    /// (path, writable) bound at the same paths inside; the caller adds the daemon's
    /// arguments.
    pub fn command(&self, mounts: &[(&Path, bool)]) -> anyhow::Result<Command> {
        let mut cmd = self.run_cmd();
        for (path, writable) in mounts {
            let path = path.to_str().context("path")?;
            let mode = if *writable { "rw" } else { "ro" };
            cmd.arg("--volume").arg(format!("{path}:{path}:{mode}"));
        }
        cmd.arg(self.reference());
        Ok(cmd)
    }

    /// `podman run --rm IMAGE` with `args` before the image and `cmd` after it; its
    /// output, or Err with it when it failed.
    fn run_image(&self, args: &[&str], cmd: &[&str]) -> Result<String, String> {
        let out = self
            .run_cmd()
            .args(args)
            .arg(self.reference())
            .args(cmd)
            .output()
            .map_err(|e| e.to_string())?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }
}

/// A pod `podman kube play` started; removed (stopped, then deleted) on Drop.
pub struct Pod {
    podman: Podman,
    name: String,
    container: String,
}

impl Pod {
    /// The daemon's log so far.
    pub fn log(&self) -> String {
        let out = self.podman.cmd().args(["logs", &self.container]).output();
        out.map(|o| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        })
        .unwrap_or_default()
    }

    fn inspect(&self, format: &str) -> anyhow::Result<String> {
        Ok(self
            .podman
            .run(&["container", "inspect", "--format", format, &self.container])?
            .trim()
            .to_owned())
    }

    /// The exit code once the container has stopped.
    pub fn exit_code(&self) -> Option<i64> {
        let state = self.inspect("{{.State.Status}} {{.State.ExitCode}}").ok()?;
        let (status, code) = state.split_once(' ')?;
        (status == "exited" || status == "stopped")
            .then(|| code.parse().ok())
            .flatten()
    }

    /// Waits up to `timeout` for the container to exit: its exit code (None when it
    /// kept running) and its log.
    pub fn exit(&self, timeout: Duration) -> (Option<i64>, String) {
        wait_until(timeout, || self.exit_code().is_some());
        (self.exit_code(), self.log())
    }

    /// The daemon's PID on this machine.
    fn pid(&self) -> anyhow::Result<u32> {
        Ok(self.inspect("{{.State.Pid}}")?.parse()?)
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = self
            .podman
            .cmd()
            .args(["pod", "rm", "--force", "--time", "10", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// helm from where `cargo xtask setup` puts it.
fn helm() -> PathBuf {
    root().join("target/tools/helm/node_modules/.bin/helm")
}

/// `helm template` of the chart with a values file from `ci/` and `--set` pairs; every
/// document as JSON (read by PyYAML, as the chart tests do).
pub fn render(values: &str, set: &[(&str, String)]) -> anyhow::Result<Vec<Value>> {
    let chart = root().join("charts/gb10-provision");
    let mut cmd = Command::new(helm());
    cmd.args(["template", "gb10", "."])
        .args(["--namespace", "provisioning", "-f", values])
        .current_dir(&chart);
    for (key, value) in set {
        // Numbers stay numbers (ports); everything else is a string (paths, names).
        let flag = if value.parse::<u64>().is_ok() {
            "--set"
        } else {
            "--set-string"
        };
        cmd.arg(flag).arg(format!("{key}={value}"));
    }
    let yaml = checked(
        "helm template",
        cmd.output().context("helm (cargo xtask setup)")?,
    )?;
    let mut py = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("python3")?;
    {
        use std::io::Write as _;
        py.stdin
            .take()
            .context("stdin")?
            .write_all(yaml.as_bytes())?;
    }
    let out = checked("python3 yaml", py.wait_with_output()?)?;
    match serde_json::from_str(&out)? {
        Value::Array(docs) => Ok(docs),
        other => bail!("expected documents, got {other}"),
    }
}

/// The rendered ConfigMap and the DaemonSet's pod template as a Pod, changed only in
/// what a DaemonSet controller would add or a one-shot test needs: the Pod's name, and
/// `restartPolicy: Never` so a daemon that exits stays exited for the test to see.
/// Node selection (nodeSelector) has no meaning on one podman host and is dropped.
pub fn pod_docs(docs: &[Value]) -> anyhow::Result<Vec<Value>> {
    let config_map = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap")
        .context("no ConfigMap rendered")?
        .clone();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .context("no DaemonSet rendered")?;
    let template = &ds["spec"]["template"];
    let mut spec = template["spec"].clone();
    let obj = spec.as_object_mut().context("pod spec")?;
    obj.remove("nodeSelector");
    obj.insert("restartPolicy".into(), json!("Never"));
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": ds["metadata"]["name"],
            "namespace": ds["metadata"]["namespace"],
            "labels": template["metadata"]["labels"],
            "annotations": template["metadata"]["annotations"],
        },
        "spec": spec,
    });
    Ok(vec![config_map, pod])
}

/// The container of a Pod document (mutable, for tests that change it).
fn container(docs: &mut [Value]) -> &mut Value {
    let pod = docs.iter_mut().find(|d| d["kind"] == "Pod").expect("Pod");
    &mut pod["spec"]["containers"][0]
}

/// Where the kubelet's readiness probe goes: `(host, port, path)` from the pod spec.
fn readiness(docs: &mut [Value]) -> anyhow::Result<(String, u64, String)> {
    let probe = &container(docs)["readinessProbe"]["httpGet"];
    Ok((
        probe["host"].as_str().context("probe host")?.to_owned(),
        probe["port"].as_u64().context("probe port")?,
        probe["path"].as_str().context("probe path")?.to_owned(),
    ))
}

/// GET `http://host:port/path` from inside `ns`, as the kubelet's probe does from
/// the node's (host network) namespace: (status, body), 0 when nothing answered.
fn get(ns: &Netns, host: &str, port: u64, path: &str) -> (u16, String) {
    ns.curl(&format!("http://{host}:{port}{path}"), 3.0)
}

/// Waits until the probe answers 200, or the container exits; Err with the log.
fn wait_ready(
    ns: &Netns,
    pod: &Pod,
    probe: &(String, u64, String),
    timeout: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if get(ns, &probe.0, probe.1, &probe.2).0 == 200 {
            return Ok(start.elapsed());
        }
        if let Some(code) = pod.exit_code() {
            bail!(
                "the container exited ({code}) before it was ready:\n{}",
                pod.log()
            );
        }
        if start.elapsed() > timeout {
            bail!("{} not 200 within {timeout:?}:\n{}", probe.2, pod.log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The chart rendered for a lab to run `rt`'s image: the CI values file, with only what
/// the lab decides (its interface, data directory), a check image's tag, and `extra`
/// set on top.
fn lab_docs(
    rt: &Runtime,
    values: &str,
    iface: &str,
    data: &Path,
    extra: &[(&str, String)],
) -> anyhow::Result<Vec<Value>> {
    std::fs::create_dir_all(data)?;
    let mut set = vec![
        ("lanIface", iface.to_owned()),
        ("dataPath", data.to_str().context("path")?.to_owned()),
        // What the chart README says to set on a runtime whose default seccomp
        // profile refuses bpf() to CAP_BPF alone: podman 4.3's does
        // (containers-common's allows bpf and perf_event_open with CAP_SYS_ADMIN only;
        // `runtime_default_seccomp` shows it). `extra` may set it back.
        ("seccompProfile", "Unconfined".to_owned()),
    ];
    if rt.build != Build::Release {
        set.push(("image.tag", rt.build.tag()));
    }
    set.extend(extra.iter().cloned());
    let docs = render(values, &set)?;
    // The chart pulls the image this check loaded.
    let image = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .and_then(|d| d["spec"]["template"]["spec"]["containers"][0]["image"].as_str())
        .unwrap_or_default()
        .to_owned();
    ensure!(
        format!("docker.io/library/{image}") == rt.reference(),
        "the chart runs {image}, the image is {}",
        rt.reference()
    );
    pod_docs(&docs)
}

/// The process's effective, permitted and bounding capability sets.
fn caps(pid: u32) -> anyhow::Result<[u64; 3]> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let v = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .with_context(|| format!("{name} in /proc/{pid}/status"))?;
        Ok(u64::from_str_radix(v.trim(), 16)?)
    };
    Ok([field("CapEff")?, field("CapPrm")?, field("CapBnd")?])
}

fn mask(caps: &[&str]) -> u64 {
    CHART_CAPS
        .iter()
        .filter(|(n, _)| caps.contains(n))
        .map(|(_, bit)| 1u64 << bit)
        .sum()
}

/// Under emulation (an arm64 image on an amd64 machine) qemu-user has no bpf()
/// (ENOSYS), so XDP is asked for as `auto` there: the daemon serves and reports
/// `gb10_xdp_attached 0`, which the checks print rather than assume.
fn emulated_xdp(arch: Arch) -> Option<(&'static str, String)> {
    (arch != Arch::host()).then(|| ("xdp.mode", "auto".to_owned()))
}

/// Direct mode with the chart's CI values: ready through the probe's port, exactly the
/// chart's capabilities, XDP attached (the values require it) where the kernel runs the
/// program, a dhclient lease, per-client counters, HTTP on the LAN.
fn direct(rt: &Runtime) -> anyhow::Result<()> {
    let lab = Lab::bare("img");
    let data = lab.dir.join("data");
    let native = rt.arch == Arch::host();
    let extra = emulated_xdp(rt.arch);
    let mut docs = lab_docs(
        rt,
        "ci/direct-values.yaml",
        &lab.server_if,
        &data,
        extra.as_slice(),
    )?;
    let probe = readiness(&mut docs)?;
    let sc = &container(&mut docs)["securityContext"];
    ensure!(
        sc["readOnlyRootFilesystem"] == true && sc["capabilities"]["drop"] == json!(["ALL"]),
        "{sc}"
    );
    // A static file for the HTTP check below, in place before the daemon starts.
    let www = data.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("image-check.txt"), "served from the container\n")?;
    let pod = rt.play(&lab.server.name, &docs)?;
    let ready = wait_ready(&lab.server, &pod, &probe, Duration::from_secs(60))?;
    println!(
        "image check [{}] direct: ready after {:.1} s (GET {}:{}{} = 200)",
        rt.label(),
        ready.as_secs_f64(),
        probe.0,
        probe.1,
        probe.2
    );
    // Exactly the chart's set, as the kernel sees the containerised daemon.
    let want = mask(&CHART_CAPS.map(|(n, _)| n));
    let pid = pod.pid()?;
    let got = caps(pid)?;
    ensure!(
        got == [want; 3],
        "CapEff/CapPrm/CapBnd {got:x?}, want {want:x}"
    );
    ensure!(
        pod.inspect("{{.HostConfig.ReadonlyRootfs}}")? == "true",
        "root not read-only"
    );
    println!(
        "image check [{}] direct: CapEff=CapPrm=CapBnd={want:016x}, read-only root",
        rt.label()
    );

    let metrics = |path: &str| Metrics(get(&lab.server, &probe.0, probe.1, path).1);
    let attached = metrics("/metrics").value("gb10_xdp_attached", &[]);
    if native {
        ensure!(attached == 1.0, "XDP not attached:\n{}", pod.log());
        ensure!(
            Lab::xdp_attached(&lab.server, &lab.server_if),
            "no XDP program on {}",
            lab.server_if
        );
    }
    let (lease, _dhclient) = lab.client.dhclient_once(&lab.client_if, &lab.dir, 30);
    let lease = lease
        .with_context(|| format!("dhclient got no lease from the container:\n{}", pod.log()))?;
    let mac = gb10_lab::format_mac(&lab.client_mac());
    println!(
        "image check [{}] direct: dhclient {mac} bound to {lease}",
        rt.label()
    );
    let m = metrics("/metrics");
    let dhcp = m.value(
        "gb10_client_packets_total",
        &[("mac", &mac), ("kind", "dhcp")],
    );
    if attached == 1.0 {
        ensure!(
            dhcp >= 2.0,
            "per-client DHCP frames {dhcp} for {mac}:\n{}",
            m.0
        );
    }
    // The LAN side: HTTP on the chart's port from the freshly leased client.
    let port = container(&mut docs)["ports"][0]["containerPort"]
        .as_u64()
        .context("http port")?;
    let (code, _) = lab
        .client
        .curl(&format!("http://{}:{port}/healthz", lab.server_ip), 5.0);
    ensure!(code == 200, "HTTP {port} from the client: {code}");
    // A static file over HTTP: opened beneath the root with openat2, which qemu-user
    // 7.2 does not implement; the daemon then refuses (fail closed) and says why.
    let (code, body) = lab.client.curl(
        &format!("http://{}:{port}/image-check.txt", lab.server_ip),
        5.0,
    );
    if native {
        ensure!(
            code == 200 && body == "served from the container\n",
            "static file: {code} {body}"
        );
    } else {
        let why = pod
            .log()
            .lines()
            .find(|l| l.contains("openat2"))
            .map(|l| l.trim().to_owned())
            .unwrap_or_default();
        println!(
            "image check [{}] direct: static file over HTTP {code} under qemu-user: {why}",
            rt.label()
        );
    }
    println!(
        "image check [{}] direct: gb10_xdp_attached {attached}, gb10_client_packets_total{{mac=\"{mac}\",kind=\"dhcp\"}} {dhcp}, HTTP :{port}/healthz 200 from {lease}",
        rt.label()
    );
    if !native && attached != 1.0 {
        let why = pod
            .log()
            .lines()
            .find(|l| l.contains("XDP"))
            .unwrap_or("(no XDP line in the log)")
            .to_owned();
        println!(
            "image check [{}] direct: XDP not attached under qemu-user: {why}",
            rt.label()
        );
    }
    Ok(())
}

/// Without each capability the chart adds, the service it enables fails. With the CI
/// direct values (`xdp.mode: required`, HTTP on port 80): without NET_ADMIN, BPF or
/// PERFMON the XDP attach fails and the daemon exits; without NET_BIND_SERVICE it
/// cannot bind ports 67, 69 and 80 and a client gets no lease.
fn each_capability(rt: &Runtime) -> anyhow::Result<()> {
    for (missing, _) in CHART_CAPS {
        let lab = Lab::bare("imgcap");
        let data = lab.dir.join("data");
        let mut docs = lab_docs(rt, "ci/direct-values.yaml", &lab.server_if, &data, &[])?;
        let probe = readiness(&mut docs)?;
        let add = &mut container(&mut docs)["securityContext"]["capabilities"]["add"];
        let kept: Vec<Value> = add
            .as_array()
            .context("capabilities.add")?
            .iter()
            .filter(|c| *c != missing)
            .cloned()
            .collect();
        ensure!(
            kept.len() == CHART_CAPS.len() - 1,
            "{missing} not in the chart's set"
        );
        *add = Value::Array(kept);
        if missing == "NET_BIND_SERVICE" {
            // The daemon keeps running: each listener that cannot bind is retried
            // every second, and readiness reflects only the LAN address, so the pod
            // looks Ready while DHCP, TFTP and HTTP on port 80 are down. What shows it
            // is a client getting nothing, and the log.
            let pod = rt.play(&lab.server.name, &docs)?;
            let ready = wait_ready(&lab.server, &pod, &probe, Duration::from_secs(60));
            let (lease, _dhclient) = lab.client.dhclient_once(&lab.client_if, &lab.dir, 12);
            let log = pod.log();
            let why = log
                .lines()
                .find(|l| l.contains("service failed"))
                .unwrap_or("")
                .trim()
                .to_owned();
            ensure!(
                lease.is_none() && !why.is_empty(),
                "without {missing}: lease {lease:?}, ready {ready:?}\n{log}"
            );
            println!(
                "image check [{}] without {missing}: no lease; readiness {} (it does not cover the listeners); {why}",
                rt.label(),
                if ready.is_ok() { "200" } else { "not 200" }
            );
            continue;
        }
        let (code, log) = rt
            .play(&lab.server.name, &docs)?
            .exit(Duration::from_secs(30));
        let ready = get(&lab.server, &probe.0, probe.1, &probe.2).0 == 200;
        let attached = Lab::xdp_attached(&lab.server, &lab.server_if);
        ensure!(
            code.is_some_and(|c| c != 0) && !ready && !attached,
            "without {missing} the container kept serving (exit {code:?}, ready {ready}, XDP {attached}):\n{log}"
        );
        let why = log
            .lines()
            .find(|l| l.contains("XDP is required"))
            .unwrap_or("")
            .trim();
        println!(
            "image check [{}] without {missing}: exited {}: {why}",
            rt.label(),
            code.unwrap_or(-1)
        );
    }
    Ok(())
}

/// The chart's default seccomp profile (RuntimeDefault) under this runtime: podman
/// 4.3's default profile refuses bpf() to a process without CAP_SYS_ADMIN, so with the
/// CI values (`xdp.mode: required`) the daemon exits saying XDP could not be loaded —
/// the case the chart README documents for older runtimes.
fn runtime_default_seccomp(rt: &Runtime) -> anyhow::Result<()> {
    let lab = Lab::bare("imgsec");
    let data = lab.dir.join("data");
    let set = [("seccompProfile", "RuntimeDefault".to_owned())];
    let docs = lab_docs(rt, "ci/direct-values.yaml", &lab.server_if, &data, &set)?;
    let (code, log) = rt
        .play(&lab.server.name, &docs)?
        .exit(Duration::from_secs(30));
    let why = log
        .lines()
        .find(|l| l.contains("XDP is required"))
        .unwrap_or("")
        .trim();
    ensure!(
        code.is_some_and(|c| c != 0) && why.contains("Operation not permitted"),
        "under podman's default seccomp profile: exit {code:?}\n{log}"
    );
    println!(
        "image check [{}] seccompProfile RuntimeDefault (podman 4.3's profile): exited {}: {why}",
        rt.label(),
        code.unwrap_or(-1)
    );
    Ok(())
}

/// Proxy mode with the chart's CI proxy values: the LAN address comes from the site,
/// so readiness says 503 until the interface has one, then 200; XDP `auto` attaches.
fn proxy(rt: &Runtime) -> anyhow::Result<()> {
    let lab = Lab::bare("imgpx");
    let data = lab.dir.join("data");
    // The lab's subnet instead of the values' example one; the site's lease is
    // played by adding the address after the pod started.
    let extra = [
        ("lanIp", format!("{}/24", lab.server_ip)),
        ("proxySubnet", "198.18.0.0/24".to_owned()),
    ];
    lab.server.ip(&["addr", "flush", "dev", &lab.server_if]);
    let mut docs = lab_docs(rt, "ci/proxy-values.yaml", &lab.server_if, &data, &extra)?;
    let probe = readiness(&mut docs)?;
    let port = container(&mut docs)["ports"][0]["containerPort"]
        .as_u64()
        .context("http port")?;
    let pod = rt.play(&lab.server.name, &docs)?;
    let waiting = wait_until(Duration::from_secs(60), || {
        get(&lab.server, &probe.0, probe.1, &probe.2).0 == 503 || pod.exit_code().is_some()
    });
    let (code, body) = get(&lab.server, &probe.0, probe.1, &probe.2);
    ensure!(
        waiting.is_some() && code == 503,
        "before an address: {code} {body}\n{}",
        pod.log()
    );
    println!(
        "image check [{}] proxy: before the site's lease {} = 503 ({})",
        rt.label(),
        probe.2,
        body.trim()
    );
    lab.server.ip(&[
        "addr",
        "add",
        &format!("{}/24", lab.server_ip),
        "dev",
        &lab.server_if,
    ]);
    wait_ready(&lab.server, &pod, &probe, Duration::from_secs(30))?;
    let m = Metrics(get(&lab.server, &probe.0, probe.1, "/metrics").1);
    let attached = m.value("gb10_xdp_attached", &[]);
    let (http, _) = get(&lab.server, lab.server_ip, port, "/healthz");
    ensure!(http == 200, "HTTP :{port} {http}");
    if rt.arch == Arch::host() {
        ensure!(attached == 1.0, "xdp auto did not attach:\n{}", pod.log());
    }
    println!(
        "image check [{}] proxy: ready once {} has {}; gb10_xdp_attached {attached}; HTTP :{port}/healthz 200",
        rt.label(),
        lab.server_if,
        lab.server_ip
    );
    Ok(())
}

/// The image holds what it says: ssh-keygen and ssh run (every library they load is
/// there, and ssh finds root's passwd entry), and there is no shell.
fn contents(rt: &Runtime) -> anyhow::Result<()> {
    let keys = dir(rt.arch).join("keys");
    let _ = std::fs::remove_dir_all(&keys);
    std::fs::create_dir_all(&keys)?;
    let mount = format!("{}:/keys", keys.display());
    let said = rt
        .run_image(
            &["--volume", &mount, "--entrypoint", "/usr/bin/ssh-keygen"],
            &[
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "image-check",
                "-f",
                "/keys/k",
            ],
        )
        .map_err(|e| anyhow::anyhow!("ssh-keygen in the image: {e}"))?;
    let public = std::fs::read_to_string(keys.join("k.pub"))
        .with_context(|| format!("ssh-keygen said: {said}"))?;
    ensure!(public.starts_with("ssh-ed25519 "), "{public}");
    let config = rt
        .run_image(
            &["--entrypoint", "/usr/bin/ssh"],
            &["-G", "-p", "2222", "root@198.18.0.2"],
        )
        .map_err(|e| anyhow::anyhow!("ssh -G in the image: {e}"))?;
    ensure!(config.lines().any(|l| l == "port 2222"), "{config}");
    let version = rt
        .run_image(&[], &["--version"])
        .map_err(|e| anyhow::anyhow!("gb10-provision --version: {e}"))?;
    for shell in ["/bin/sh", "/bin/bash", "/usr/bin/apt-get", "/usr/bin/dpkg"] {
        if let Ok(said) = rt.run_image(&["--entrypoint", shell], &["-c", "true"]) {
            bail!("{shell} runs in the image: {said}");
        }
    }
    println!(
        "image check [{}] contents: {}; ssh-keygen made an ed25519 key, ssh -G parsed; no /bin/sh, bash, apt-get or dpkg",
        rt.label(),
        version.lines().next().unwrap_or_default().trim()
    );
    Ok(())
}

/// `k3s ctr images import` is containerd's `ctr images import`: Debian's containerd,
/// started on a scratch root and socket, imports the archive under the name the chart
/// pulls, for the image's platform.
fn ctr_import(image: &Image) -> anyhow::Result<()> {
    let work = dir(image.arch).join("containerd");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let sock = work.join("containerd.sock");
    let state = PathBuf::from("/run/gb10-containerd").join(image.arch.debian());
    let _ = std::fs::remove_dir_all(&state);
    let conf = work.join("config.toml");
    // No CRI plugin: this containerd only stores images.
    std::fs::write(
        &conf,
        format!(
            "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = \"{}\"\n",
            work.join("root").display(),
            state.display(),
            sock.display()
        ),
    )?;
    let log = std::fs::File::create(work.join("containerd.log"))?;
    let _containerd = gb10_lab::Guard(
        Command::new("containerd")
            .arg("--config")
            .arg(&conf)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("containerd (apt-get install containerd; cargo xtask setup does)")?,
    );
    let ctr = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&sock)
            .args(args)
            .output()
            .context("ctr")?;
        checked(&format!("ctr {}", args.join(" ")), out)
    };
    wait_until(Duration::from_secs(20), || ctr(&["version"]).is_ok())
        .context("containerd did not answer on its socket in 20 s")?;
    let platform = format!("linux/{}", image.arch.debian());
    ctr(&[
        "images",
        "import",
        "--platform",
        &platform,
        image.archive.to_str().context("path")?,
    ])?;
    let list = ctr(&["images", "list"])?;
    let line = list
        .lines()
        .find(|l| l.starts_with(&format!("{} ", reference(image.build))))
        .with_context(|| format!("{} not imported:\n{list}", reference(image.build)))?;
    ensure!(
        line.contains(&platform),
        "imported for another platform: {line}"
    );
    println!(
        "image check [{}] containerd {}: ctr images import -> {}",
        image.build.label(image.arch),
        ctr(&["version"])?
            .lines()
            .find_map(|l| l.trim().strip_prefix("Version:"))
            .unwrap_or("?")
            .trim(),
        line.split_whitespace().collect::<Vec<_>>().join(" ")
    );
    Ok(())
}

/// Starts the chart's pod on a firmware lab's bridge for an e2e boot: the scenario's
/// values on top of the CI values file (`values`).
pub fn serve_bridge(
    arch: Arch,
    build: Build,
    lab: &Bridge,
    values: &str,
    extra: &[(&str, String)],
) -> anyhow::Result<Pod> {
    let rt = Runtime::open(arch, build)?;
    let data = lab.dir.join("data");
    let mut set = vec![("lanIp", format!("{}/{}", lab.server_ip, lab.prefix))];
    set.extend(extra.iter().cloned());
    set.extend(emulated_xdp(arch));
    let mut docs = lab_docs(&rt, values, &lab.iface, &data, &set)?;
    let probe = readiness(&mut docs)?;
    let pod = rt.play(&lab.ns.name, &docs)?;
    wait_ready(&lab.ns, &pod, &probe, Duration::from_secs(60))?;
    Ok(pod)
}

/// Every check on `image`; with `boot`, one firmware scenario served by the container.
pub fn run(image: &Image, boot: Option<&str>) -> anyhow::Result<()> {
    if !gb10_lab::require_root("cargo xtask image --check") {
        bail!("the image checks build network namespaces and run containers: run as root");
    }
    let start = Instant::now();
    ctr_import(image)?;
    let rt = Runtime::load(image)?;
    contents(&rt)?;
    direct(&rt)?;
    proxy(&rt)?;
    if rt.arch == Arch::host() {
        runtime_default_seccomp(&rt)?;
        each_capability(&rt)?;
    } else {
        println!(
            "image check [{}]: capability drops checked on the native image only (they are the kernel's, not the architecture's)",
            rt.label()
        );
    }
    if let Some(name) = boot {
        crate::e2e::boot_in_container(rt.arch, rt.build, name)?;
    }
    let what = match rt.build {
        Build::Release => "the release artifact",
        Build::Check => {
            "the debug daemon of this tree, not the release artifact, which `cargo xtask test --all` checks"
        }
    };
    println!(
        "image check [{}]: passed in {:.1} min: {what}",
        rt.label(),
        start.elapsed().as_secs_f64() / 60.0
    );
    Ok(())
}
