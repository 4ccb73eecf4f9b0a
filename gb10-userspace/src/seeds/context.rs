//! What a seed renders with: the server as the client reached it, and the per-host
//! context (profile and host variables beside the keys the daemon sets).
use std::collections::BTreeMap;

use minijinja::Value;

use super::table::format_of;
use crate::{
    hosts::install::InstallView,
    inventory::{Host, Inventory},
    mac::Mac,
    templates::{TemplateError, Templates},
};

/// The size of a file under the HTTP root or a mount, by its URL path.
pub type SizeOf = dyn Fn(&str) -> Option<u64> + Send + Sync;

/// What the daemon knows about a host beyond the inventory, for its context.
#[derive(Clone, Copy, Default)]
pub struct Facts<'a> {
    /// Its disk holds its installed system: boot scripts send it there.
    pub installed: bool,
    /// Its current install (instance id, overwrite, host key), with the secrets when
    /// they go out with this seed.
    pub install: Option<&'a InstallView>,
    /// The size of a file under the HTTP root or a mount, by its URL path (for
    /// `image_size`).
    pub local_size: Option<&'a SizeOf>,
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
/// in [`super::RESERVED`].
pub fn host_context(
    templates: &Templates,
    inv: &Inventory,
    mac: Mac,
    host: Option<&Host>,
    server: &Server,
    facts: Facts<'_>,
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
    set("installed", Value::from(facts.installed));
    if let Some(install) = facts.install {
        set("instance_id", Value::from(install.instance_id.clone()));
        set("overwrite", Value::from(install.overwrite));
        set("host_key_public", Value::from(install.host_key.clone()));
        if let Some(secrets) = &install.secrets {
            set("install_token", Value::from(secrets.token.clone()));
            if let Some(key) = &secrets.host_key_private {
                set("host_key_private", Value::from(key.clone()));
            }
        }
    }
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
        if let Some(uuid) = &h.identity.uuid {
            set("uuid", Value::from(uuid.clone()));
        }
        if let Some(serial) = &h.identity.serial {
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
    // An image: its URL, its format when not given, its size when it is ours to stat.
    if let Some(image) = ctx.get("image").and_then(|v| v.as_str().map(str::to_owned)) {
        ctx.insert("image_url".into(), Value::from(url_for(server, &image)));
        if !ctx.contains_key("image_format") {
            ctx.insert("image_format".into(), Value::from(format_of(&image)));
        }
        if !image.contains("://")
            && let Some(size) = facts.local_size.and_then(|f| f(&image))
        {
            ctx.insert("image_size".into(), Value::from(size));
        }
    }
    if let Some((name, p)) = profile {
        ctx.insert("profile".into(), Value::from(name));
        let mut set = |k: &str, v: Value| {
            ctx.insert(k.to_owned(), v);
        };
        if let Some(seed) = p.seed {
            set("seed", Value::from(seed.label()));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_formats_by_name() {
        assert_eq!(format_of("images/debian.raw.zst"), "zstd");
        assert_eq!(format_of("http://x/debian.img.gz"), "gzip");
        assert_eq!(format_of("debian.raw"), "raw");
        assert_eq!(format_of("gz/debian.img"), "raw");
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
