//! A small HTTP/1.1 client for the admin API (plain HTTP, as the admin listener serves):
//! JSON requests with the bearer token, and Server-Sent Event streams.
use std::time::Duration;

use anyhow::{Context as _, bail};
use http_body_util::{BodyExt as _, Full};
use hyper::{
    Method, Request, StatusCode,
    body::{Bytes, Incoming},
    header,
};
use hyper_util::rt::TokioIo;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a JSON call may take (a rebuild waits on the BMC).
const CALL_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest JSON answer read, in bytes.
const BODY_MAX: usize = 64 << 20;

/// Where the API is and the token to send.
pub struct Api {
    /// `host:port`, for connecting and the Host header.
    authority: String,
    /// The path the API is under (`` or `/admin`), without a trailing `/`.
    prefix: String,
    /// For messages: the URL as given.
    base: String,
    token: Option<String>,
}

impl Api {
    /// `base` is `http://HOST[:PORT][/PREFIX]`.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Self> {
        let uri: hyper::Uri = base
            .parse()
            .with_context(|| format!("--server `{base}` is not a URL"))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(other) => bail!(
                "--server `{base}`: {other}:// is not supported; the admin API is plain HTTP \
                 (keep it on loopback, `[admin] listen`, or tunnel it)"
            ),
            None => bail!("--server `{base}`: write http://HOST:PORT"),
        }
        let host = uri
            .host()
            .with_context(|| format!("--server `{base}` has no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let authority = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        Ok(Self {
            authority,
            prefix: uri.path().trim_end_matches('/').to_owned(),
            base: base.to_owned(),
            token,
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        accept: &str,
    ) -> anyhow::Result<hyper::Response<Incoming>> {
        let url = format!("{}{path}", self.prefix);
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect(&self.authority),
        )
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {}: no answer in 5 s", self.base))?
        .with_context(|| {
            format!(
                "connecting to {} (is gb10-provision serving its admin API there? see --server)",
                self.base
            )
        })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .with_context(|| format!("HTTP to {}", self.base))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = Request::builder()
            .method(method)
            .uri(&url)
            .header(header::HOST, &self.authority)
            .header(header::ACCEPT, accept)
            .header(
                header::USER_AGENT,
                concat!("gb10-provision/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = req.body(Full::new(Bytes::new()))?;
        sender
            .send_request(req)
            .await
            .with_context(|| format!("{} {url}", self.base))
    }

    /// A JSON call: the status and the body (`{"error": …}` bodies included).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
    ) -> anyhow::Result<(StatusCode, serde_json::Value)> {
        let work = async {
            let resp = self.send(method, path, "application/json").await?;
            let status = resp.status();
            let body = http_body_util::Limited::new(resp.into_body(), BODY_MAX)
                .collect()
                .await
                .map_err(|e| anyhow::anyhow!("reading the answer to {path}: {e}"))?
                .to_bytes();
            let value = serde_json::from_slice(&body).unwrap_or_else(|_| {
                serde_json::json!({ "error": String::from_utf8_lossy(&body).trim().to_owned() })
            });
            Ok((status, value))
        };
        tokio::time::timeout(CALL_TIMEOUT, work)
            .await
            .map_err(|_| anyhow::anyhow!("{path}: no answer in {} s", CALL_TIMEOUT.as_secs()))?
    }

    /// A JSON call that must succeed: the body, or an error with the server's message.
    pub async fn json(&self, method: Method, path: &str) -> anyhow::Result<serde_json::Value> {
        let (status, body) = self.call(method, path).await?;
        if status == StatusCode::UNAUTHORIZED {
            bail!("{status} from {path}: {TOKEN_HINT}");
        }
        if !status.is_success() {
            bail!("{status} from {path}: {}", error_text(&body));
        }
        Ok(body)
    }

    /// Opens a Server-Sent Events stream.
    pub async fn events(&self, path: &str) -> anyhow::Result<Events> {
        let resp = tokio::time::timeout(
            CALL_TIMEOUT,
            self.send(Method::GET, path, "text/event-stream"),
        )
        .await
        .map_err(|_| anyhow::anyhow!("{path}: no answer"))??;
        if resp.status() == StatusCode::UNAUTHORIZED {
            bail!("{} from {path}: {TOKEN_HINT}", resp.status());
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let value: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            bail!(
                "{status} from {path}: {}{}",
                error_text(&value),
                if status == StatusCode::NOT_FOUND {
                    " (a daemon without the live client stream? it came with `clients watch`)"
                } else {
                    ""
                }
            );
        }
        Ok(Events {
            body: resp.into_body(),
            parser: SseParser::default(),
        })
    }
}

/// What a 401 means to the operator.
pub const TOKEN_HINT: &str = "the admin token is missing or wrong (every admin call needs it: \
     give it with --token-file, GB10_ADMIN_TOKEN or --config)";

/// The `error` of an error body, else the body.
pub fn error_text(body: &serde_json::Value) -> String {
    body.get("error")
        .and_then(|e| e.as_str())
        .map_or_else(|| body.to_string(), str::to_owned)
}

/// One Server-Sent Event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// An open event stream.
pub struct Events {
    body: Incoming,
    parser: SseParser,
}

impl Events {
    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<SseEvent>> {
        loop {
            if let Some(e) = self.parser.next_event() {
                return Ok(Some(e));
            }
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(e)) => {
                    return Err(anyhow::anyhow!("the server closed the event stream ({e})"));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.parser.push(&data)?;
                    }
                }
            }
        }
    }
}

/// Longest event kept while its lines arrive, in bytes.
const EVENT_MAX: usize = 1 << 20;

/// The `text/event-stream` format: `field: value` lines, events ended by a blank line,
/// `:` comments (keep-alives) ignored.
#[derive(Default)]
pub struct SseParser {
    pending: Vec<u8>,
    event: String,
    data: Vec<String>,
    ready: std::collections::VecDeque<SseEvent>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.pending.extend_from_slice(bytes);
        while let Some(nl) = self.pending.iter().position(|b| *b == b'\n') {
            let mut line: Vec<u8> = self.pending.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line(&String::from_utf8_lossy(&line));
        }
        if self.pending.len() + self.data.iter().map(String::len).sum::<usize>() > EVENT_MAX {
            bail!("an event larger than {EVENT_MAX} bytes");
        }
        Ok(())
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            if !self.data.is_empty() {
                self.ready.push_back(SseEvent {
                    event: if self.event.is_empty() {
                        "message".into()
                    } else {
                        std::mem::take(&mut self.event)
                    },
                    data: std::mem::take(&mut self.data).join("\n"),
                });
            }
            self.event.clear();
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => self.event = value.to_owned(),
            "data" => self.data.push(value.to_owned()),
            _ => {}
        }
    }

    pub fn next_event(&mut self) -> Option<SseEvent> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_lines_split_anywhere() {
        let text = b": keep-alive\n\nevent: client\ndata: {\"a\":1}\n\nevent:resync\r\ndata:{}\r\n\r\ndata: x\ndata: y\n\n";
        for split in 0..text.len() {
            let mut p = SseParser::default();
            p.push(&text[..split]).unwrap();
            p.push(&text[split..]).unwrap();
            let got: Vec<SseEvent> = std::iter::from_fn(|| p.next_event()).collect();
            assert_eq!(
                got,
                [
                    SseEvent {
                        event: "client".into(),
                        data: "{\"a\":1}".into()
                    },
                    SseEvent {
                        event: "resync".into(),
                        data: "{}".into()
                    },
                    SseEvent {
                        event: "message".into(),
                        data: "x\ny".into()
                    },
                ],
                "split at {split}"
            );
        }
    }

    #[test]
    fn server_urls() {
        let a = Api::new("http://127.0.0.1:9190", None).unwrap();
        assert_eq!(
            (a.authority.as_str(), a.prefix.as_str()),
            ("127.0.0.1:9190", "")
        );
        let a = Api::new("http://10.88.0.1/admin/", None).unwrap();
        assert_eq!(
            (a.authority.as_str(), a.prefix.as_str()),
            ("10.88.0.1:80", "/admin")
        );
        assert!(Api::new("https://x", None).is_err());
        assert!(Api::new("x:1", None).is_err());
    }
}
