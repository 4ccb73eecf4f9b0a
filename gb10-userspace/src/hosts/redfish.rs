//! A small Redfish client for rebuilds: a one-time PXE boot override, read back, then a
//! reset, over HTTPS verified against the BMC's CA (see [`super::bmc_tls`]) or, warned,
//! plain HTTP. Vendor differences live in [`Quirks`], and nowhere else.
use std::time::Duration;

use axum::body::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode, Uri, header};
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use serde_json::{Value, json};
use tracing::{info, instrument, warn};

use super::{
    Bmc, HostsError,
    bmc_tls::{self, BmcSettings, Trust, TrustError},
};
use crate::mac::Mac;

/// Each Redfish request gets this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a rebuild over Redfish failed. Messages name the URL and status, never the
/// credentials.
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    #[error("reading BMC credentials `{name}`")]
    Credentials {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("BMC credentials `{name}` are not `user:password`")]
    CredentialsFormat { name: String },
    #[error("BMC {url} unreachable")]
    Unreachable {
        url: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error(
        "BMC {url}: TLS handshake failed, refused before any credentials were sent (is the \
         certificate signed by the configured CA, for this host name or IP address?)"
    )]
    Tls {
        url: String,
        #[source]
        source: rustls::Error,
    },
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error("BMC {url}: no answer in {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout { url: String },
    #[error("BMC refused {what}: HTTP {status}")]
    Status {
        what: &'static str,
        status: StatusCode,
    },
    #[error("BMC answer to {what} is not JSON")]
    Body {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("BMC named a path off its origin or outside /redfish/: {path:?}")]
    ForeignPath { path: String },
    #[error("BMC credentials name `{name}` is not a plain file name")]
    CredentialsName { name: String },
    #[error("BMC lists no system")]
    NoSystem,
    #[error("boot override read back as enabled={enabled} target={target}, not Once/Pxe")]
    ReadBack { enabled: String, target: String },
}

/// What differs between BMC vendors, in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quirks {
    /// The ResetType that reboots a running or powered-off machine.
    pub reset_type: &'static str,
    /// Whether the override PATCH may carry `BootSourceOverrideMode` (some older BMCs
    /// refuse the whole PATCH when it does).
    pub set_boot_mode: bool,
    /// Whether `BootSourceOverrideEnabled: Once` is kept and read back. sushy-tools
    /// ignores it and always reports `Continuous` (libvirt has no one-time boot); there
    /// the boot script's exit-to-disk once installed is what ends the PXE loop.
    pub honors_once: bool,
}

impl Quirks {
    /// The quirks of the BMC that says it is made by `manufacturer`.
    pub fn for_manufacturer(manufacturer: &str) -> Self {
        let m = manufacturer.to_ascii_lowercase();
        if m.contains("supermicro") {
            // Supermicro's older firmware rejects BootSourceOverrideMode in the PATCH.
            Self {
                reset_type: "ForceRestart",
                set_boot_mode: false,
                honors_once: true,
            }
        } else if m.contains("hpe") || m.contains("hewlett") {
            // iLO rejects ForceRestart on a powered-off machine; ForceOn then is wrong
            // while it runs: iLO's GracefulRestart handles both poorly, so use PowerCycle.
            Self {
                reset_type: "PowerCycle",
                set_boot_mode: true,
                honors_once: true,
            }
        } else if m.contains("sushy") {
            Self {
                reset_type: "ForceRestart",
                set_boot_mode: true,
                honors_once: false,
            }
        } else {
            Self {
                reset_type: "ForceRestart",
                set_boot_mode: true,
                honors_once: true,
            }
        }
    }
}

/// Checks the shape of a BMC entry, as registered or loaded: an http(s) URL of a host
/// alone, plain file names, TLS settings only for https and not both. Reads no file:
/// [`check_trust`] does.
pub fn check_bmc(bmc: &Bmc) -> Result<(), HostsError> {
    let Bmc {
        url,
        credentials,
        system,
        ca_file,
        insecure_skip_verify,
    } = bmc;
    let invalid = |field, reason: &str| HostsError::Invalid {
        field,
        reason: reason.into(),
    };
    let uri = url.parse::<Uri>().ok();
    let https = match uri.as_ref().and_then(Uri::scheme_str) {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(invalid("bmc.url", "write an http:// or https:// URL")),
    };
    // The host verified is the URL's: no user part to confuse it, and no path, query or
    // fragment for the Redfish paths to be appended to.
    let authority = uri.as_ref().and_then(Uri::authority);
    if authority.is_none_or(|a| a.as_str().contains('@') || a.host().is_empty())
        || !url
            .trim_end_matches('/')
            .ends_with(authority.map_or("", |a| a.as_str()))
    {
        return Err(invalid(
            "bmc.url",
            "scheme and host (and port) only, like https://198.18.1.2",
        ));
    }
    if !crate::inventory::plain_file_name(credentials) {
        return Err(invalid(
            "bmc.credentials",
            "a file name under credentials_dir: letters, digits, `-`, `_`, `.`",
        ));
    }
    if let Some(name) = ca_file {
        if !crate::inventory::plain_file_name(name) {
            return Err(invalid(
                "bmc.ca_file",
                "a file name under credentials_dir: letters, digits, `-`, `_`, `.`",
            ));
        }
        if !https {
            return Err(invalid("bmc.ca_file", "only for an https:// URL"));
        }
        if *insecure_skip_verify {
            return Err(invalid(
                "bmc.insecure_skip_verify",
                "not with `ca_file`: verify against the CA, or skip verification, not both",
            ));
        }
    }
    if *insecure_skip_verify && !https {
        return Err(invalid(
            "bmc.insecure_skip_verify",
            "only for an https:// URL",
        ));
    }
    if let Some(system) = system {
        redfish_path(system)
            .map_err(|_| invalid("bmc.system", "a path under /redfish/ on the BMC"))?;
    }
    Ok(())
}

/// Checks a BMC as it is registered: its shape ([`check_bmc`]), then, for https, that
/// it can be verified: its CA file (its own or the default) exists and holds
/// certificates, or it skips verification on purpose.
pub fn check_trust(bmc: &Bmc, settings: &BmcSettings) -> Result<(), HostsError> {
    check_bmc(bmc)?;
    Trust::of(bmc, settings)?;
    Ok(())
}

/// Logs, naming host and fix, each inventory BMC that a rebuild would refuse for its
/// trust (an inventory reload never stops the daemon; the rebuild fails the same way).
pub fn warn_untrusted(inv: &crate::inventory::Inventory, settings: &BmcSettings) {
    for host in &inv.hosts {
        let Some(bmc) = host
            .vars
            .get("bmc")
            .and_then(|v| v.clone().try_into::<Bmc>().ok())
        else {
            continue;
        };
        if let Err(err) = Trust::of(&bmc, settings) {
            warn!(mac = %host.mac, error = %crate::error_chain(&err), "inventory BMC cannot be verified: its rebuild will fail");
        }
    }
}

/// `path` when it stays on the BMC's origin under `/redfish/`: an `@odata.id` from a
/// BMC's answer is appended to the BMC's URL, with the credentials, so it must not name
/// another host (`//evil/…`, `@evil`), climb out (`..`) or carry a query or fragment.
fn redfish_path(path: &str) -> Result<&str, RedfishError> {
    let ok = path.starts_with("/redfish/")
        && !path.contains("//")
        && !path.split('/').any(|seg| seg == ".." || seg == ".")
        && path
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'@' | b'?' | b'#' | b'\\' | b'%'));
    if ok {
        Ok(path)
    } else {
        Err(RedfishError::ForeignPath {
            path: path.chars().take(200).collect(),
        })
    }
}

fn basic_auth(user: &str, password: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{password}");
    let mut out = String::from("Basic ");
    for chunk in input.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A session with one BMC.
struct Session {
    base: String,
    auth: String,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Session {
    async fn call(
        &self,
        what: &'static str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, RedfishError> {
        let url = format!("{}{path}", self.base);
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::AUTHORIZATION, &self.auth)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .map_err(|_| RedfishError::NoSystem)?;
        let exchange = async {
            let resp =
                self.client.request(req).await.map_err(|source| {
                    match bmc_tls::tls_cause(&source) {
                        Some(tls) => RedfishError::Tls {
                            url: self.base.clone(),
                            source: tls.clone(),
                        },
                        None => RedfishError::Unreachable {
                            url: url.clone(),
                            source,
                        },
                    }
                })?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, RedfishError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| RedfishError::Timeout { url: url.clone() })??;
        if !status.is_success() {
            return Err(RedfishError::Status { what, status });
        }
        if bytes.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|source| RedfishError::Body { what, source })
    }
}

/// The HTTP client of a session: TLS as `trust` says, https only for an https BMC (its
/// URL is fixed and paths are checked, so nothing downgrades it), warned when the
/// credentials are at risk. One warning per session: per rebuild.
fn client(
    bmc: &Bmc,
    trust: &Trust,
) -> Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>, RedfishError> {
    let builder =
        hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(trust.client_config()?);
    let connector = match trust {
        Trust::Pinned { path, .. } => {
            info!(bmc = %bmc.url, ca_file = %path.display(), "BMC over https, certificate verified against the CA file");
            builder.https_only()
        }
        Trust::Insecure => {
            warn!(bmc = %bmc.url, "BMC over https WITHOUT certificate verification (insecure_skip_verify): whoever answers at its address gets its credentials; set `ca_file` instead");
            builder.https_only()
        }
        Trust::Plain => {
            warn!(bmc = %bmc.url, "BMC over plain http: its credentials cross the network in clear; use an https URL with its CA file");
            builder.https_or_http()
        }
    };
    Ok(Client::builder(TokioExecutor::new()).build(connector.enable_http1().build()))
}

/// Sets a one-time PXE boot (UEFI) on `bmc`'s system, reads it back, and resets it.
#[instrument(skip_all, fields(mac = %mac, bmc = %bmc.url))]
pub async fn rebuild(mac: Mac, bmc: &Bmc, settings: &BmcSettings) -> Result<(), RedfishError> {
    let trust = Trust::of(bmc, settings)?;
    let client = client(bmc, &trust)?;
    let credentials_dir = &settings.credentials_dir;
    let name = &bmc.credentials;
    // Checked at load and registration already; never a path out of credentials_dir.
    if !crate::inventory::plain_file_name(name) {
        return Err(RedfishError::CredentialsName { name: name.clone() });
    }
    let text = tokio::fs::read_to_string(credentials_dir.join(name))
        .await
        .map_err(|source| RedfishError::Credentials {
            name: name.clone(),
            source,
        })?;
    let (user, password) = text
        .trim_end_matches(['\n', '\r'])
        .split_once(':')
        .ok_or_else(|| RedfishError::CredentialsFormat { name: name.clone() })?;
    let session = Session {
        base: bmc.url.trim_end_matches('/').to_owned(),
        auth: basic_auth(user, password),
        client,
    };
    let system = match &bmc.system {
        Some(s) => redfish_path(s)?.to_owned(),
        None => {
            let list = session
                .call("listing systems", Method::GET, "/redfish/v1/Systems", None)
                .await?;
            let id = list["Members"][0]["@odata.id"]
                .as_str()
                .ok_or(RedfishError::NoSystem)?;
            redfish_path(id)?.to_owned()
        }
    };
    let before = session
        .call("reading the system", Method::GET, &system, None)
        .await?;
    let quirks = Quirks::for_manufacturer(before["Manufacturer"].as_str().unwrap_or(""));
    let mut boot = json!({
        "BootSourceOverrideEnabled": "Once",
        "BootSourceOverrideTarget": "Pxe",
    });
    if quirks.set_boot_mode {
        boot["BootSourceOverrideMode"] = json!("UEFI");
    }
    session
        .call(
            "the boot override",
            Method::PATCH,
            &system,
            Some(json!({ "Boot": boot })),
        )
        .await?;
    let after = session
        .call("reading the override back", Method::GET, &system, None)
        .await?;
    let field = |k: &str| after["Boot"][k].as_str().unwrap_or("").to_owned();
    let (enabled, target) = (
        field("BootSourceOverrideEnabled"),
        field("BootSourceOverrideTarget"),
    );
    let enabled_ok = enabled == "Once" || (!quirks.honors_once && enabled == "Continuous");
    if !enabled_ok || target != "Pxe" {
        return Err(RedfishError::ReadBack { enabled, target });
    }
    if !quirks.honors_once {
        warn!(%system, "this BMC keeps no one-time override (reads back Continuous); the boot script exits to disk once installed");
    }
    let action = after["Actions"]["#ComputerSystem.Reset"]["target"]
        .as_str()
        .map_or_else(
            || format!("{system}/Actions/ComputerSystem.Reset"),
            str::to_owned,
        );
    session
        .call(
            "the reset",
            Method::POST,
            &action,
            Some(json!({ "ResetType": quirks.reset_type })),
        )
        .await?;
    info!(%system, reset = quirks.reset_type, "one-time PXE boot set and system reset");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_encodes() {
        assert_eq!(
            basic_auth("admin", "password"),
            "Basic YWRtaW46cGFzc3dvcmQ="
        );
        assert_eq!(basic_auth("a", "b"), "Basic YTpi");
        assert_eq!(basic_auth("ab", "cd"), "Basic YWI6Y2Q=");
    }

    /// A BMC (or whoever answers in its name) that points the credentialed calls
    /// elsewhere: refused before any call is made.
    #[test]
    fn paths_from_a_bmc_stay_on_its_origin() {
        for ok in ["/redfish/v1/Systems/1", "/redfish/v1/Systems/abc-DEF_1.2"] {
            assert_eq!(redfish_path(ok).unwrap(), ok);
        }
        for bad in [
            "//198.18.0.66/redfish/v1/Systems/1",
            "http://198.18.0.66/redfish/v1/Systems/1",
            "@198.18.0.66/redfish/v1/Systems/1",
            "/redfish/v1/Systems/1@198.18.0.66",
            "/redfish/../../etc",
            "/redfish/v1/Systems/1?x=1",
            "/redfish/v1/Systems/1#x",
            "/redfish/v1/Systems/%2e%2e",
            "/redfish/v1/Systems/1 x",
            "/other/v1",
            "",
        ] {
            assert!(
                matches!(redfish_path(bad), Err(RedfishError::ForeignPath { .. })),
                "{bad}"
            );
        }
    }

    /// What a registration or an inventory may hold for a BMC: the URL is a scheme and
    /// a host (the name its certificate is checked for), file names stay in
    /// credentials_dir, and the TLS settings apply to https alone, one or the other.
    #[test]
    fn bmc_shapes() {
        let bmc = |url: &str, ca: Option<&str>, insecure: bool| Bmc {
            url: url.into(),
            credentials: "bmc1".into(),
            system: None,
            ca_file: ca.map(str::to_owned),
            insecure_skip_verify: insecure,
        };
        for ok in [
            bmc("http://198.18.0.2:8000", None, false),
            bmc("https://198.18.0.2", None, false),
            bmc("https://bmc-7.lab/", Some("bmc7-ca.pem"), false),
            bmc("https://[fd00::2]:443", None, true),
        ] {
            check_bmc(&ok).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        for (bad, field) in [
            (bmc("ftp://198.18.0.2", None, false), "bmc.url"),
            (bmc("198.18.0.2", None, false), "bmc.url"),
            (bmc("https://user@198.18.0.2", None, false), "bmc.url"),
            (bmc("https://198.18.0.2/redfish", None, false), "bmc.url"),
            (bmc("https://198.18.0.2?x=1", None, false), "bmc.url"),
            (
                bmc("https://198.18.0.2", Some("../ca.pem"), false),
                "bmc.ca_file",
            ),
            (bmc("https://198.18.0.2", Some(".ca"), false), "bmc.ca_file"),
            (
                bmc("http://198.18.0.2", Some("ca.pem"), false),
                "bmc.ca_file",
            ),
            (
                bmc("http://198.18.0.2", None, true),
                "bmc.insecure_skip_verify",
            ),
            (
                bmc("https://198.18.0.2", Some("ca.pem"), true),
                "bmc.insecure_skip_verify",
            ),
        ] {
            let err = check_bmc(&bad).expect_err(&bad.url).to_string();
            assert!(err.contains(field), "{bad:?}: {err}");
        }
    }

    #[test]
    fn quirks_in_one_place() {
        assert!(!Quirks::for_manufacturer("Supermicro").set_boot_mode);
        assert_eq!(Quirks::for_manufacturer("HPE").reset_type, "PowerCycle");
        assert!(!Quirks::for_manufacturer("Sushy Emulator").honors_once);
        assert!(Quirks::for_manufacturer("Dell Inc.").honors_once);
    }
}
