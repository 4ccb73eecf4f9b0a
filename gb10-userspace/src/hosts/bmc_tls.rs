//! Trust for Redfish over HTTPS: the CA bundle a BMC's certificate must chain to (its
//! own `ca_file`, else `[admin] bmc_ca_file`), or an explicit per-BMC skip, and the
//! rustls client configuration of a session. No system or webpki roots: BMCs carry
//! self-signed or site-CA certificates, never public ones, so a public root would only
//! let someone else's certificate in.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject as _},
};

use super::Bmc;

/// Where BMC secrets and trust come from: `[admin] credentials_dir` and `bmc_ca_file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmcSettings {
    /// Credential files and per-BMC CA files, by plain file name.
    pub credentials_dir: PathBuf,
    /// The CA bundle of https BMCs without a `ca_file` of their own.
    pub ca_file: Option<PathBuf>,
}

/// Why a BMC's trust could not be set up. Messages say what to set.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "https BMC {url} has no CA to verify its certificate with: set its `bmc.ca_file` (a PEM \
         file under credentials_dir) or `[admin] bmc_ca_file`, or, to skip verification \
         (warned at each use), `bmc.insecure_skip_verify = true`"
    )]
    NoCa { url: String },
    #[error("BMC CA file name `{name}` is not a plain file name")]
    CaFileName { name: String },
    #[error("reading the BMC CA file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    // The PEM parser's own message may quote a line of the file: left out, since a
    // ca_file name could point at a credentials file beside it.
    #[error("the BMC CA file {path} is not a PEM bundle of certificates")]
    Pem { path: PathBuf },
    #[error("the BMC CA file {path} holds no certificate (want PEM `BEGIN CERTIFICATE` blocks)")]
    Empty { path: PathBuf },
    #[error("a certificate in the BMC CA file {path} is not a usable CA certificate")]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("setting up TLS")]
    Tls {
        #[source]
        source: rustls::Error,
    },
}

/// How a session talks to its BMC.
#[derive(Clone, Debug)]
pub enum Trust {
    /// `http://`: no TLS; the credentials cross the network in clear.
    Plain,
    /// `https://`, the certificate verified against the CAs read from `path`, for the
    /// URL's host name or IP address.
    Pinned {
        path: PathBuf,
        roots: Arc<RootCertStore>,
    },
    /// `https://` with `insecure_skip_verify`: encrypted, but to whoever answers.
    Insecure,
}

impl Trust {
    /// The trust of `bmc`, its CA file read and parsed now (so a rotated file counts).
    /// Read synchronously: a CA bundle is a few kilobytes, read once a registration or
    /// a rebuild.
    pub fn of(bmc: &Bmc, settings: &BmcSettings) -> Result<Self, TrustError> {
        if !bmc.url.starts_with("https://") {
            return Ok(Self::Plain);
        }
        if bmc.insecure_skip_verify {
            return Ok(Self::Insecure);
        }
        let path = match (&bmc.ca_file, &settings.ca_file) {
            // Checked at registration and load already; never a path out of the dir.
            (Some(name), _) if !crate::inventory::plain_file_name(name) => {
                return Err(TrustError::CaFileName { name: name.clone() });
            }
            (Some(name), _) => settings.credentials_dir.join(name),
            (None, Some(path)) => path.clone(),
            (None, None) => {
                return Err(TrustError::NoCa {
                    url: bmc.url.clone(),
                });
            }
        };
        let roots = load_roots(&path)?;
        Ok(Self::Pinned {
            path,
            roots: Arc::new(roots),
        })
    }

    /// The rustls configuration of a session. Plain http makes no TLS (its URL is http
    /// and stays so): its configuration trusts nothing.
    pub fn client_config(&self) -> Result<ClientConfig, TrustError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| TrustError::Tls { source })?;
        Ok(match self {
            Self::Plain => builder
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth(),
            Self::Pinned { roots, .. } => builder
                .with_root_certificates(roots.clone())
                .with_no_client_auth(),
            Self::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SkipVerify(
                    provider.signature_verification_algorithms,
                )))
                .with_no_client_auth(),
        })
    }
}

/// The CA certificates in the PEM bundle at `path` (at least one).
pub fn load_roots(path: &Path) -> Result<RootCertStore, TrustError> {
    let bytes = std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        let cert = cert.map_err(|_| TrustError::Pem {
            path: path.to_owned(),
        })?;
        roots.add(cert).map_err(|source| TrustError::Certificate {
            path: path.to_owned(),
            source,
        })?;
    }
    if roots.is_empty() {
        return Err(TrustError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// Accepts any certificate (`insecure_skip_verify`), but still checks the handshake's
/// signatures, so the session is at least with the holder of the presented key.
#[derive(Debug)]
struct SkipVerify(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// The TLS error in `err`'s chain, if the failure was the TLS handshake (a certificate
/// refused, most often). An io::Error hides its inner error from `source()` (and
/// hyper-rustls wraps tokio-rustls' io::Error in another), so those are opened by hand.
pub fn tls_cause<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    // Bounded: error chains are short; a cycle would be a bug elsewhere, not a hang here.
    for _ in 0..16 {
        let e = next?;
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => e.source(),
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A throwaway self-signed CA (no key kept anywhere), as an operator's bundle.
    const CA: &str = include_str!("../../tests/data/bmc-ca.pem");

    fn bmc(url: &str, ca_file: Option<&str>, insecure: bool) -> Bmc {
        Bmc {
            url: url.into(),
            credentials: "bmc1".into(),
            system: None,
            ca_file: ca_file.map(str::to_owned),
            insecure_skip_verify: insecure,
        }
    }

    /// Each way a CA can be missing or wrong is refused with what to fix; the per-BMC
    /// file wins over the default; http and an explicit skip need no file.
    #[test]
    fn trust_comes_from_a_ca_file_or_an_explicit_skip() {
        let dir = std::env::temp_dir().join(format!("gb10-bmc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), CA).unwrap();
        std::fs::write(dir.join("two.pem"), format!("{CA}{CA}")).unwrap();
        std::fs::write(dir.join("creds"), "admin:secret-pw\n").unwrap();
        std::fs::write(
            dir.join("bad.pem"),
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let none = BmcSettings {
            credentials_dir: dir.clone(),
            ca_file: None,
        };
        let default = BmcSettings {
            ca_file: Some(dir.join("ca.pem")),
            ..none.clone()
        };
        let https = "https://198.18.0.2";
        let err = Trust::of(&bmc(https, None, false), &none).unwrap_err();
        assert!(matches!(err, TrustError::NoCa { .. }));
        let text = err.to_string();
        for fix in ["bmc.ca_file", "[admin] bmc_ca_file", "insecure_skip_verify"] {
            assert!(text.contains(fix), "{text}");
        }
        assert!(matches!(
            Trust::of(&bmc(https, None, false), &default).unwrap(),
            Trust::Pinned { ref path, .. } if path == &dir.join("ca.pem")
        ));
        assert!(matches!(
            Trust::of(&bmc(https, Some("two.pem"), false), &default).unwrap(),
            Trust::Pinned { ref path, .. } if path == &dir.join("two.pem")
        ));
        assert!(matches!(
            Trust::of(&bmc(https, None, true), &none).unwrap(),
            Trust::Insecure
        ));
        assert!(matches!(
            Trust::of(&bmc("http://198.18.0.2:8000", None, false), &none).unwrap(),
            Trust::Plain
        ));
        for (file, want) in [
            ("missing.pem", "reading"),
            ("bad.pem", "not a PEM bundle"),
            ("creds", "holds no certificate"),
            ("../creds", "not a plain file name"),
        ] {
            let err = Trust::of(&bmc(https, Some(file), false), &none).unwrap_err();
            let text = crate::error_chain(&err);
            assert!(text.contains(want), "{file}: {text}");
            assert!(!text.contains("secret-pw"), "{text}");
        }
        for trust in [
            Trust::Plain,
            Trust::Insecure,
            Trust::of(&bmc(https, None, false), &default).unwrap(),
        ] {
            trust.client_config().unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_tls_error_is_found_inside_io_errors() {
        // As hyper-rustls hands it over: tokio-rustls' io::Error inside another.
        let io = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        ));
        assert!(matches!(
            tls_cause(&io),
            Some(rustls::Error::InvalidCertificate(_))
        ));
        assert!(tls_cause(&std::io::Error::other("refused")).is_none());
    }
}
