//! Seed templates: minijinja in strict mode, built-ins embedded in the binary, each
//! overridable by name from `data_path/templates`; the per-host context they render with.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::inventory::{Host, Inventory, Mac};

/// Directory of override templates inside `data_path`.
pub const TEMPLATES_DIR: &str = "templates";

/// The built-in templates, by the name an override file must have.
pub const BUILTIN: &[(&str, &str)] = &[
    ("boot.ipxe.j2", include_str!("../templates/boot.ipxe.j2")),
    ("ipxe-host.j2", include_str!("../templates/ipxe-host.j2")),
    ("grub.cfg.j2", include_str!("../templates/grub.cfg.j2")),
    ("grub-host.j2", include_str!("../templates/grub-host.j2")),
    ("user-data.j2", include_str!("../templates/user-data.j2")),
    (
        "autoinstall.j2",
        include_str!("../templates/autoinstall.j2"),
    ),
    ("meta-data.j2", include_str!("../templates/meta-data.j2")),
    (
        "vendor-data.j2",
        include_str!("../templates/vendor-data.j2"),
    ),
    (
        "proxmox-answer.toml.j2",
        include_str!("../templates/proxmox-answer.toml.j2"),
    ),
    ("talos.yaml.j2", include_str!("../templates/talos.yaml.j2")),
    (
        "onboard.service.j2",
        include_str!("../templates/onboard.service.j2"),
    ),
];

/// Context keys the daemon sets; inventory variables cannot replace them.
pub const RESERVED: &[&str] = &[
    "server",
    "server_host",
    "server_port",
    "mac",
    "mac_hyphen",
    "hostname",
    "ip",
    "uuid",
    "serial",
    "profile",
    "kernel_url",
    "initrd_url",
    "kernel_path",
    "initrd_path",
    "cmdline",
    "seed",
    "seed_url",
    "installed",
    "profiles",
    "grub_root",
];

/// Why a template could not be loaded or rendered. Every message names the file, the
/// line and, for a missing variable, the variable.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("reading templates from {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: template `{template}` uses undefined variable `{variable}`")]
    Undefined {
        file: String,
        line: usize,
        template: String,
        variable: String,
    },
    #[error("{file}:{line}: template `{template}`: {reason}")]
    Template {
        file: String,
        line: usize,
        template: String,
        reason: String,
    },
    #[error("no template named `{0}`")]
    Unknown(String),
    #[error("host `{host}`: {error}")]
    ForHost {
        host: String,
        error: Box<TemplateError>,
    },
}

/// The template set: built-ins with overrides laid over them.
pub struct Templates {
    env: Environment<'static>,
    /// Template name → the file it came from (for error messages).
    files: BTreeMap<String, String>,
}

impl Templates {
    /// Only the built-in templates.
    pub fn builtin() -> Self {
        Self::from_sources(BUILTIN.iter().map(|(name, text)| {
            (
                (*name).to_owned(),
                format!("built-in gb10-userspace/templates/{name}"),
                (*text).to_owned(),
            )
        }))
        .expect("built-in templates parse (unit-tested)")
    }

    /// Built-ins, with any `*.j2` file in `data_path/templates` replacing the built-in of
    /// the same name (or adding a new one).
    pub fn load(data_path: &Path) -> Result<Self, TemplateError> {
        let dir = data_path.join(TEMPLATES_DIR);
        let mut sources: BTreeMap<String, (String, String)> = BUILTIN
            .iter()
            .map(|(name, text)| {
                (
                    (*name).to_owned(),
                    (
                        format!("built-in gb10-userspace/templates/{name}"),
                        (*text).to_owned(),
                    ),
                )
            })
            .collect();
        for path in override_files(&dir)? {
            let text = std::fs::read_to_string(&path).map_err(|source| TemplateError::Read {
                path: path.clone(),
                source,
            })?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            sources.insert(name, (path.display().to_string(), text));
        }
        Self::from_sources(
            sources
                .into_iter()
                .map(|(name, (file, text))| (name, file, text)),
        )
    }

    fn from_sources(
        sources: impl IntoIterator<Item = (String, String, String)>,
    ) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // minijinja would JSON-escape `*.yaml.j2` output by name; seeds quote what they
        // mean to quote (`| tojson`) and print the rest as is.
        env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
        env.set_syntax(
            minijinja::syntax::SyntaxConfig::builder()
                .keep_trailing_newline(true)
                .build()
                .expect("default delimiters"),
        );
        env.add_filter("tojson", strict_tojson);
        env.add_filter("grub_path", grub_path);
        env.add_filter("grub_words", grub_words);
        let mut files = BTreeMap::new();
        for (name, file, text) in sources {
            files.insert(name.clone(), file.clone());
            env.add_template_owned(name.clone(), text)
                .map_err(|e| describe(&e, &name, &file))?;
        }
        Ok(Self { env, files })
    }

    /// Names of every template in the set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    /// Renders template `name`; any undefined variable is an error, never a partial text.
    pub fn render(&self, name: &str, ctx: &Value) -> Result<String, TemplateError> {
        let file = self
            .files
            .get(name)
            .ok_or_else(|| TemplateError::Unknown(name.to_owned()))?;
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|e| describe(&e, name, file))?;
        tmpl.render(ctx).map_err(|e| describe(&e, name, file))
    }

    /// Renders a template given inline (a profile's `cmdline`), `what` naming it in errors.
    pub fn render_str(
        &self,
        what: &str,
        source: &str,
        ctx: &Value,
    ) -> Result<String, TemplateError> {
        self.env
            .render_str(source, ctx)
            .map_err(|e| describe(&e, what, what))
    }
}

/// The variable an undefined error points at. The span is the variable itself, or, when
/// a filter refused it (`password_hash | tojson`), the filter: then the variable is the
/// name before the `|`.
fn undefined_name(src: &str, range: std::ops::Range<usize>) -> Option<String> {
    let before = src.get(..range.start)?.trim_end();
    let name = match before.strip_suffix('|') {
        Some(expr) => {
            let expr = expr.trim_end();
            let start = expr
                .rfind(|c: char| !(c.is_alphanumeric() || c == '_' || c == '.'))
                .map_or(0, |i| i + 1);
            &expr[start..]
        }
        None => src.get(range)?.trim(),
    };
    (!name.is_empty()).then(|| name.to_owned())
}

/// minijinja's `tojson`, except that an undefined value is an error: strict mode lets
/// filters see undefined values, and the built-in would quietly write `null` where a
/// required variable (a password hash) is missing.
fn strict_tojson(
    value: &Value,
    indent: Option<Value>,
    kwargs: minijinja::value::Kwargs,
) -> Result<Value, minijinja::Error> {
    if value.is_undefined() {
        return Err(minijinja::Error::new(
            minijinja::ErrorKind::UndefinedError,
            "undefined value passed to tojson",
        ));
    }
    minijinja::filters::tojson(value, indent, kwargs)
}

/// `http://host[:port]/path` as GRUB's `(http,host[:port])/path`; other text unchanged.
fn grub_path(url: &str) -> String {
    match url
        .strip_prefix("http://")
        .and_then(|rest| rest.split_once('/'))
    {
        Some((authority, path)) => format!("(http,{authority})/{path}"),
        None => url.to_owned(),
    }
}

/// Each word single-quoted, so GRUB passes `;`, `$` and the like to the kernel as written.
fn grub_words(text: &str) -> String {
    text.split_whitespace()
        .map(|w| format!("'{}'", w.replace('\'', r"'\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `*.j2` files in `dir`, sorted; none when the directory is absent.
pub fn override_files(dir: &Path) -> Result<Vec<PathBuf>, TemplateError> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(TemplateError::Read {
                path: dir.to_owned(),
                source,
            });
        }
    };
    let mut files: Vec<PathBuf> = read
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "j2") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// A minijinja error as a [`TemplateError`] naming file, line and (when undefined) the
/// variable, which is the source text the error points at.
fn describe(err: &minijinja::Error, template: &str, file: &str) -> TemplateError {
    let line = err.line().unwrap_or(0);
    let source_range = err.template_source().zip(err.range());
    let snippet = source_range
        .clone()
        .and_then(|(src, range)| src.get(range))
        .map(|s| s.trim().to_owned());
    if err.kind() == minijinja::ErrorKind::UndefinedError {
        let variable = source_range
            .and_then(|(src, range)| undefined_name(src, range))
            .unwrap_or_else(|| "?".into());
        return TemplateError::Undefined {
            file: file.to_owned(),
            line,
            template: template.to_owned(),
            variable,
        };
    }
    let mut reason = err.kind().to_string();
    if let Some(detail) = err.detail() {
        reason = format!("{reason}: {detail}");
    }
    if let Some(s) = snippet {
        reason = format!("{reason} (at `{s}`)");
    }
    TemplateError::Template {
        file: file.to_owned(),
        line,
        template: template.to_owned(),
        reason,
    }
}

/// Where the client reached us: `host[:port]` from the request's Host header, so seeds
/// name the address the client actually used (seed 001: a proxied or re-addressed server
/// must not echo a fixed IP).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    pub host: String,
    pub port: u16,
}

impl Server {
    /// Parses a Host header. Only characters of a host name or IP literal are accepted:
    /// the value is pasted into scripts, so anything else is refused rather than escaped.
    pub fn from_host_header(value: &str, default_port: u16) -> Option<Self> {
        if value.is_empty()
            || value.len() > 255
            || !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        {
            return None;
        }
        let (host, port) = match value.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && !p.contains(']') => (h, p.parse().ok()?),
            _ => (value, default_port),
        };
        Some(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// `host` or `host:port` when the port is not 80.
    pub fn authority(&self) -> String {
        if self.port == 80 {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A URL for `path`: kept when it already is one, else on `server` under the HTTP root.
fn url_for(server: &Server, path: &str) -> String {
    if path.contains("://") {
        path.to_owned()
    } else {
        format!(
            "http://{}/{}",
            server.authority(),
            path.trim_start_matches('/')
        )
    }
}

/// The context a seed renders with, for `mac` (a known `host` or an unknown client).
/// Profile variables, then host variables, sit at the top level beside the built-in keys
/// in [`RESERVED`].
pub fn host_context(
    templates: &Templates,
    inv: &Inventory,
    mac: Mac,
    host: Option<&Host>,
    server: &Server,
    installed: bool,
) -> Result<Value, TemplateError> {
    let mut ctx: BTreeMap<String, Value> = BTreeMap::new();
    let profile = inv.profile_for(host);
    if let Some((_, p)) = profile {
        for (k, v) in &p.vars {
            ctx.insert(k.clone(), Value::from(minijinja::value::Serde(v)));
        }
    }
    if let Some(h) = host {
        for (k, v) in &h.vars {
            ctx.insert(k.clone(), Value::from(minijinja::value::Serde(v)));
        }
    }
    let authority = server.authority();
    let mac_text = mac.to_string();
    let hostname = host
        .and_then(|h| h.hostname.clone())
        .unwrap_or_else(|| format!("gb10-{}", mac_text.replace(':', "")));
    let mut set = |k: &str, v: Value| {
        ctx.insert(k.to_owned(), v);
    };
    set("server", Value::from(authority.clone()));
    set("server_host", Value::from(server.host.clone()));
    set("server_port", Value::from(server.port));
    set("mac", Value::from(mac_text.clone()));
    set("mac_hyphen", Value::from(mac_text.replace(':', "-")));
    set("hostname", Value::from(hostname));
    set(
        "seed_url",
        Value::from(format!("http://{authority}/cloud-init/{mac_text}/")),
    );
    set("installed", Value::from(installed));
    // GRUB fetches over HTTP only when given an http root; the port goes in the device.
    set(
        "grub_root",
        Value::from(if server.port == 80 {
            format!("(http,{})", server.host)
        } else {
            format!("(http,{}:{})", server.host, server.port)
        }),
    );
    if let Some(h) = host {
        if let Some(ip) = h.ip {
            set("ip", Value::from(ip.to_string()));
        }
        if let Some(uuid) = &h.uuid {
            set("uuid", Value::from(uuid.clone()));
        }
        if let Some(serial) = &h.serial {
            set("serial", Value::from(serial.clone()));
        }
    }
    // Every profile, for the menu unknown clients get.
    let profiles: Vec<Value> = inv
        .profiles
        .iter()
        .filter(|(_, p)| p.kernel.is_some())
        .map(|(name, p)| {
            minijinja::context! {
                name => name,
                kernel_url => p.kernel.as_deref().map(|k| url_for(server, k)),
                initrd_url => p.initrd.as_deref().map(|k| url_for(server, k)),
            }
        })
        .collect();
    set("profiles", Value::from(profiles));
    if let Some((name, p)) = profile {
        set("profile", Value::from(name));
        if let Some(seed) = &p.seed {
            set("seed", Value::from(seed.clone()));
        }
        if let Some(k) = &p.kernel {
            set("kernel_url", Value::from(url_for(server, k)));
            set("kernel_path", Value::from(k.trim_start_matches('/')));
        }
        if let Some(i) = &p.initrd {
            set("initrd_url", Value::from(url_for(server, i)));
            set("initrd_path", Value::from(i.trim_start_matches('/')));
        }
        if let Some(cmdline) = &p.cmdline {
            let partial = Value::from(ctx.clone());
            let rendered =
                templates.render_str(&format!("profile `{name}` cmdline"), cmdline, &partial)?;
            ctx.insert("cmdline".into(), Value::from(rendered));
        }
    }
    Ok(Value::from(ctx))
}

/// The seed template for a profile's `seed` kind and a NoCloud file name.
pub fn cloud_init_template(seed: Option<&str>, file: &str) -> Option<&'static str> {
    match (seed, file) {
        (Some("autoinstall"), "user-data") => Some("autoinstall.j2"),
        (Some("cloud-init"), "user-data") => Some("user-data.j2"),
        (Some("autoinstall" | "cloud-init"), "meta-data") => Some("meta-data.j2"),
        (Some("autoinstall" | "cloud-init"), "vendor-data") => Some("vendor-data.j2"),
        _ => None,
    }
}

/// Every template a host's profile uses (for `check`).
pub fn templates_for(seed: Option<&str>) -> Vec<&'static str> {
    let mut names = vec!["ipxe-host.j2", "grub-host.j2", "onboard.service.j2"];
    match seed {
        Some("autoinstall") => names.extend(["autoinstall.j2", "meta-data.j2", "vendor-data.j2"]),
        Some("cloud-init") => names.extend(["user-data.j2", "meta-data.j2", "vendor-data.j2"]),
        Some("proxmox") => names.push("proxmox-answer.toml.j2"),
        Some("talos") => names.push("talos.yaml.j2"),
        _ => {}
    }
    names
}

/// Renders every template every host uses, and the global ones once; the first error.
/// Used by `gb10-provision check` and after each inventory reload.
pub fn check_all(templates: &Templates, inv: &Inventory) -> Result<usize, TemplateError> {
    let server = Server {
        host: "192.0.2.1".into(),
        port: 80,
    };
    let mut rendered = 0;
    let global = host_context(templates, inv, Mac([0; 6]), None, &server, false)?;
    for name in [
        "boot.ipxe.j2",
        "grub.cfg.j2",
        "ipxe-host.j2",
        "onboard.service.j2",
    ] {
        templates.render(name, &global)?;
        rendered += 1;
    }
    for host in &inv.hosts {
        let seed = inv
            .profile_for(Some(host))
            .and_then(|(_, p)| p.seed.as_deref());
        let for_host = |error| TemplateError::ForHost {
            host: match &host.hostname {
                Some(name) => format!("{name} ({})", host.mac),
                None => host.mac.to_string(),
            },
            error: Box::new(error),
        };
        for installed in [false, true] {
            let ctx = host_context(templates, inv, host.mac, Some(host), &server, installed)
                .map_err(for_host)?;
            for name in templates_for(seed) {
                templates.render(name, &ctx).map_err(for_host)?;
                rendered += 1;
            }
        }
    }
    Ok(rendered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse() {
        let t = Templates::builtin();
        assert_eq!(t.names().count(), BUILTIN.len());
    }

    #[test]
    fn undefined_variable_is_named_with_line() {
        let t = Templates::from_sources([(
            "x.j2".to_owned(),
            "/tmp/x.j2".to_owned(),
            "a\nb {{ disk_path }}\n".to_owned(),
        )])
        .unwrap();
        let err = t.render("x.j2", &Value::from(BTreeMap::<String, Value>::new()));
        let err = err.unwrap_err().to_string();
        assert!(err.contains("/tmp/x.j2:2"), "{err}");
        assert!(err.contains("`disk_path`"), "{err}");
        assert!(err.contains("x.j2"), "{err}");
    }

    #[test]
    fn tojson_of_undefined_is_an_error() {
        let t = Templates::from_sources([(
            "y.j2".to_owned(),
            "y.j2".to_owned(),
            "a: {{ password_hash | tojson }}\nb: {{ maybe | default([]) | tojson }}\n".to_owned(),
        )])
        .unwrap();
        let empty = Value::from(BTreeMap::<String, Value>::new());
        let err = t.render("y.j2", &empty).unwrap_err().to_string();
        assert!(
            err.contains("y.j2:1") && err.contains("`password_hash`"),
            "{err}"
        );
        let ctx = Value::from(BTreeMap::from([(
            "password_hash".to_owned(),
            Value::from("x"),
        )]));
        assert_eq!(t.render("y.j2", &ctx).unwrap(), "a: \"x\"\nb: []\n");
    }

    #[test]
    fn host_header_is_checked() {
        let s = Server::from_host_header("198.18.0.1:8080", 80).unwrap();
        assert_eq!(s.authority(), "198.18.0.1:8080");
        assert_eq!(
            Server::from_host_header("pxe.lan", 80).unwrap().authority(),
            "pxe.lan"
        );
        assert!(Server::from_host_header("a b", 80).is_none());
        assert!(Server::from_host_header("x\";rm -rf /", 80).is_none());
        assert_eq!(
            Server::from_host_header("[fd00::1]:81", 80).unwrap().port,
            81
        );
    }
}
