//! `explain`: what DHCP, TFTP and HTTP would answer one client, and why — the same
//! [`crate::boot::decide`] the responder runs, from the CLI or `/explain` as JSON.
use std::{net::Ipv4Addr, path::Path};

use serde::{Deserialize, Serialize};

use crate::{
    boot::{self, Action, BootDecision, BootRequest, ServerAddr},
    config::{Config, Mode},
    inventory::Inventory,
    mac::Mac,
};

/// The client to explain: what its firmware would send.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Query {
    pub mac: Option<String>,
    /// Option 93.
    pub arch: Option<u16>,
    /// Option 77, e.g. `iPXE`.
    pub user_class: Option<String>,
    /// Option 60; defaults to `PXEClient:Arch:NNNNN` (or `HTTPClient` for 16/19) when
    /// `arch` is given.
    pub vendor_class: Option<String>,
}

/// Why a query could not be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("--mac is required")]
    NoMac,
    #[error("{0}")]
    BadMac(String),
}

/// The DHCP part of the answer.
#[derive(Debug, Serialize)]
pub struct DhcpAnswer {
    /// `offer` or `none`.
    pub reply: &'static str,
    /// Where the address comes from.
    pub address: String,
    pub file: Option<String>,
    pub siaddr: Option<Ipv4Addr>,
    pub option_60: Option<&'static str>,
    pub option_175_176: bool,
    pub hostname: Option<String>,
}

/// What the boot file leads to on TFTP or HTTP.
#[derive(Debug, Serialize)]
pub struct FetchAnswer {
    pub path: String,
    /// Whether the file is there now (under `data_path/tftp` or `data_path/www`).
    pub exists: bool,
}

/// The whole answer.
#[derive(Debug, Serialize)]
pub struct Explanation {
    pub mac: Mac,
    pub server: Ipv4Addr,
    pub dhcp: DhcpAnswer,
    pub tftp: Option<FetchAnswer>,
    pub http: Option<FetchAnswer>,
    pub decision: BootDecision,
}

/// Explains `query` for the configuration, inventory and server address given.
pub fn explain(
    config: &Config,
    inventory: &Inventory,
    server: Ipv4Addr,
    query: &Query,
) -> Result<Explanation, ExplainError> {
    let mac: Mac = query
        .mac
        .as_deref()
        .ok_or(ExplainError::NoMac)?
        .parse()
        .map_err(ExplainError::BadMac)?;
    let vendor_class = query.vendor_class.clone().or_else(|| {
        query.arch.map(|a| {
            let class = if matches!(a, 15 | 16 | 19) {
                "HTTPClient"
            } else {
                "PXEClient"
            };
            format!("{class}:Arch:{a:05}:UNDI:003000")
        })
    });
    let req = BootRequest {
        mac: Some(mac),
        arch: query.arch,
        vendor_class: vendor_class.map(String::into_bytes),
        user_class: query.user_class.clone().map(String::into_bytes),
        ipxe_options: false,
        uuid: None,
    };
    let addr = ServerAddr {
        ip: server,
        http_port: config.http_port,
    };
    let decision = boot::decide(&req, inventory, &config.boot, addr);
    let host = inventory.host(mac);
    let proxy = config.mode == Mode::Proxy;
    let answered = decision.action == Action::Serve && (!proxy || req.pxe_class().is_some());
    let address = match (proxy, host.and_then(|h| h.ip)) {
        (true, _) => "none: proxy mode, the site's DHCP server gives the address".to_owned(),
        (false, Some(ip)) => format!("fixed {ip} (inventory)"),
        (false, None) => format!(
            "from the pool {}-{}",
            config.dhcp.range.0, config.dhcp.range.1
        ),
    };
    let dhcp = DhcpAnswer {
        reply: if answered { "offer" } else { "none" },
        address,
        file: decision.boot_file.clone(),
        siaddr: decision.next_server.or(proxy.then_some(server)),
        option_60: decision
            .vendor_class
            .map(boot::PxeClass::as_str)
            .or((proxy && answered).then_some("PXEClient")),
        option_175_176: decision.ipxe_no_proxy_wait,
        hostname: decision.hostname.clone(),
    };
    let fetch = |root: &str, path: &str| FetchAnswer {
        exists: is_file(&config.data_path.join(root), path),
        path: path.to_owned(),
    };
    let (tftp, http) = match &decision.boot_file {
        Some(f) if decision.next_server.is_some() => (Some(fetch("tftp", f)), None),
        Some(url) => {
            let path = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('/'))
                .map_or("", |(_, p)| p);
            (None, Some(fetch("www", path)))
        }
        None => (None, None),
    };
    Ok(Explanation {
        mac,
        server,
        dhcp,
        tftp,
        http,
        decision,
    })
}

/// Whether `path` (relative, no `..`) is a file under `root`.
fn is_file(root: &Path, path: &str) -> bool {
    let rel = Path::new(path.trim_start_matches('/'));
    rel.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        && root.join(rel).is_file()
}

impl std::fmt::Display for Explanation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = &self.dhcp;
        writeln!(f, "client {} (server {})", self.mac, self.server)?;
        writeln!(f, "DHCP: {} — address {}", d.reply, d.address)?;
        if let Some(file) = &d.file {
            writeln!(f, "  file/option 67: {file}")?;
        }
        if let Some(s) = d.siaddr {
            writeln!(f, "  siaddr: {s}")?;
        }
        if let Some(c) = d.option_60 {
            writeln!(f, "  option 60: {c}")?;
        }
        if d.option_175_176 {
            writeln!(f, "  option 175.176 (no-pxedhcp) = 1")?;
        }
        if let Some(t) = &self.tftp {
            writeln!(
                f,
                "TFTP: {} ({})",
                t.path,
                if t.exists { "present" } else { "MISSING" }
            )?;
        }
        if let Some(h) = &self.http {
            writeln!(
                f,
                "HTTP: /{} ({})",
                h.path,
                if h.exists {
                    "present"
                } else {
                    "not a static file"
                }
            )?;
        }
        writeln!(f, "why:")?;
        for w in &self.decision.why {
            writeln!(f, "  - {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    #[test]
    fn explains_an_ipxe_client_and_a_uefi_one() {
        let mut raw = RawConfig {
            lan_iface: Some("eth1".into()),
            lan_ip: Some("198.18.0.1/24".into()),
            ..Default::default()
        };
        raw.data_path = Some(std::env::temp_dir().join("gb10-explain-none"));
        let config = Config::try_from(raw).unwrap();
        let server = Ipv4Addr::new(198, 18, 0, 1);
        let q = Query {
            mac: Some("52:54:00:12:34:56".into()),
            arch: Some(7),
            user_class: Some("iPXE".into()),
            vendor_class: None,
        };
        let e = explain(&config, &Inventory::default(), server, &q).unwrap();
        assert_eq!(
            e.dhcp.file.as_deref(),
            Some("http://198.18.0.1:80/boot.ipxe")
        );
        assert!(e.dhcp.option_175_176);
        assert_eq!(e.http.as_ref().unwrap().path, "boot.ipxe");
        let q = Query {
            user_class: None,
            ..q
        };
        let e = explain(&config, &Inventory::default(), server, &q).unwrap();
        assert_eq!(e.tftp.as_ref().unwrap().path, "ipxe.efi");
        assert!(!e.tftp.as_ref().unwrap().exists);
        assert!(e.to_string().contains("option 93"), "{e}");
        assert!(matches!(
            explain(&config, &Inventory::default(), server, &Query::default()),
            Err(ExplainError::NoMac)
        ));
    }
}
