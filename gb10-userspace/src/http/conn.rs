//! One LAN HTTP/1.1 connection. Plain GET/HEAD requests (no body, no upgrade) are read
//! and written here and answered by the router, so a static file's bytes go from the
//! page cache to the socket with sendfile(2) and a small response is one write. Any
//! other request (a body, HTTP/1.0, `Expect`, an upgrade, a head that does not parse)
//! hands the connection, with the bytes already read, to hyper for the rest of its life.
use std::{
    cell::RefCell,
    io,
    net::SocketAddr,
    os::fd::AsRawFd as _,
    pin::Pin,
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::body::HttpBody as _;
use axum::{
    Router,
    body::Body,
    extract::ConnectInfo,
    http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version, header},
};
use http_body_util::BodyExt as _;
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, Interest, ReadBuf},
    net::TcpStream,
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::static_files::FileRange;

/// How long a client may take to send a whole request head, idle time included: a
/// connection that sends nothing is let go rather than holding a socket for ever.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// A head larger than this is left to hyper (which answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// Headers a request may carry before it is left to hyper.
const MAX_HEADERS: usize = 64;
/// Largest sendfile(2) call: the kernel caps one call near 2 GiB anyway.
const SENDFILE_MAX: u64 = 1 << 30;

/// Serves `tcp` until the client closes, a request says `Connection: close`, the
/// header timeout passes, or `stop` fires between requests.
pub async fn serve(mut tcp: TcpStream, peer: SocketAddr, app: Router, stop: CancellationToken) {
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    loop {
        let head = match next_head(&mut tcp, &mut buf, &stop).await {
            Next::Request(head) => head,
            Next::HandOff => return hand_off(tcp, buf, peer, app, stop).await,
            Next::Close => return,
        };
        buf.drain(..head.len);
        let is_head = head.method == Method::HEAD;
        let close = head.close;
        let mut req = Request::new(Body::empty());
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = head.headers;
        req.extensions_mut().insert(ConnectInfo(peer));
        let Ok(response) = app.clone().oneshot(req).await;
        match respond(&mut tcp, response, is_head, close).await {
            Ok(true) => {}
            Ok(false) => {
                let _ = tcp.shutdown().await;
                return;
            }
            Err(err) => {
                tracing::debug!(%err, %peer, "HTTP connection ended");
                return;
            }
        }
    }
}

/// A request head this loop answers itself.
struct Head {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// Bytes of the head in the buffer.
    len: usize,
    /// The client asked to close after this response.
    close: bool,
}

enum Next {
    Request(Head),
    HandOff,
    Close,
}

/// Reads until `buf` holds a whole request head.
async fn next_head(tcp: &mut TcpStream, buf: &mut Vec<u8>, stop: &CancellationToken) -> Next {
    let deadline = tokio::time::Instant::now() + HEADER_READ_TIMEOUT;
    loop {
        match parse(buf) {
            Parsed::Plain(head) => return Next::Request(head),
            Parsed::Other => return Next::HandOff,
            Parsed::Partial if buf.len() >= MAX_HEAD => return Next::HandOff,
            Parsed::Partial => {}
        }
        let read = tokio::select! {
            () = stop.cancelled() => return Next::Close,
            read = tokio::time::timeout_at(deadline, tcp.read_buf(buf)) => read,
        };
        match read {
            Ok(Ok(n)) if n > 0 => {}
            // Closed, failed, or too slow: nothing more to answer.
            _ => return Next::Close,
        }
    }
}

enum Parsed {
    Plain(Head),
    Partial,
    Other,
}

/// What the start of `buf` holds: a complete plain GET/HEAD, not enough yet, or a
/// request for hyper.
fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let method = match req.method {
        Some("GET") => Method::GET,
        Some("HEAD") => Method::HEAD,
        _ => return Parsed::Other,
    };
    let (Some(1), Some(path)) = (req.version, req.path) else {
        return Parsed::Other;
    };
    let Ok(uri) = path.parse::<Uri>() else {
        return Parsed::Other;
    };
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut close = false;
    for h in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) else {
            return Parsed::Other;
        };
        match name {
            // A body, a protocol switch or an interim response: hyper's business.
            header::TRANSFER_ENCODING | header::UPGRADE | header::EXPECT => {
                return Parsed::Other;
            }
            header::CONTENT_LENGTH if h.value != b"0" => return Parsed::Other,
            header::CONNECTION => close |= has_token(h.value, "close"),
            _ => {}
        }
        headers.append(name, value);
    }
    Parsed::Plain(Head {
        method,
        uri,
        headers,
        len,
        close,
    })
}

/// Whether a comma-separated header value lists `token` (ASCII case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Writes `response`; whether the connection stays open for the next request.
async fn respond(
    tcp: &mut TcpStream,
    response: axum::response::Response,
    is_head: bool,
    client_close: bool,
) -> io::Result<bool> {
    let (parts, mut body) = response.into_parts();
    let status = parts.status;
    let no_body = is_head
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let close = client_close
        || parts
            .headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), "close"));
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        title_case(&mut out, name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    let has_length = parts.headers.contains_key(header::CONTENT_LENGTH);
    let file = parts.extensions.get::<FileRange>().filter(|_| !no_body);
    let exact = body.size_hint().exact();
    // As hyper: a length when the body knows it, else chunks; none where there is no body.
    let chunked = match (file, exact) {
        _ if no_body || has_length => false,
        (Some(range), _) => {
            line(&mut out, "Content-Length", &range.count.to_string());
            false
        }
        (None, Some(n)) => {
            line(&mut out, "Content-Length", &n.to_string());
            false
        }
        (None, None) => {
            line(&mut out, "Transfer-Encoding", "chunked");
            true
        }
    };
    if client_close && !parts.headers.contains_key(header::CONNECTION) {
        line(&mut out, "Connection", "close");
    }
    if !parts.headers.contains_key(header::DATE) {
        DATE.with(|d| line(&mut out, "Date", d.borrow_mut().now()));
    }
    out.extend_from_slice(b"\r\n");

    if no_body {
        tcp.write_all(&out).await?;
        return Ok(!close);
    }
    if let Some(range) = file {
        // The head leaves with the first bytes of the file: MSG_MORE holds it back
        // until sendfile adds to it, as nginx's tcp_nopush does.
        send_more(tcp, &out).await?;
        sendfile(tcp, range).await?;
        return Ok(!close);
    }
    // Small bodies (the usual: a script, a config, a status page) go out with the head
    // in one write.
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if chunked {
            if data.is_empty() {
                continue;
            }
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&data);
        }
        // Large or streamed bodies are written as they come (an event stream must
        // reach its client at once).
        if out.len() >= 64 * 1024 || exact.is_none() {
            tcp.write_all(&out).await?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        tcp.write_all(&out).await?;
    }
    Ok(!close)
}

fn line(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `content-length` → `Content-Length`, as hyper's `title_case_headers` writes them:
/// GRUB's http module matches `Content-Length: ` byte for byte.
fn title_case(out: &mut Vec<u8>, name: &[u8]) {
    let mut prev = b'-';
    for &c in name {
        out.push(if prev == b'-' {
            c.to_ascii_uppercase()
        } else {
            c
        });
        prev = c;
    }
}

/// Writes all of `bytes` with MSG_MORE.
async fn send_more(tcp: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        tcp.writable().await?;
        let sent = tcp.try_io(Interest::WRITABLE, || {
            // SAFETY: send(2) reads `bytes` for its length from a socket we own.
            let n = unsafe {
                libc::send(
                    tcp.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    libc::MSG_MORE | libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Sends the file range from the page cache to the socket.
async fn sendfile(tcp: &TcpStream, range: &FileRange) -> io::Result<()> {
    let mut offset = range.start as libc::off_t;
    let mut left = range.count;
    while left > 0 {
        tcp.writable().await?;
        let sent = tcp.try_io(Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the call; the kernel advances
            // `offset`, which we own.
            let n = unsafe {
                libc::sendfile(
                    tcp.as_raw_fd(),
                    range.file.as_raw_fd(),
                    &raw mut offset,
                    left.min(SENDFILE_MAX) as usize,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as u64)
            }
        });
        match sent {
            // The file shrank under us: the promised length cannot be kept.
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => left -= n,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

thread_local! {
    /// The `Date` value, formatted once a second per thread.
    static DATE: RefCell<CachedDate> = RefCell::new(CachedDate { secs: 0, text: String::new() });
}

struct CachedDate {
    secs: u64,
    text: String,
}

impl CachedDate {
    fn now(&mut self) -> &str {
        let now = SystemTime::now();
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if secs != self.secs || self.text.is_empty() {
            self.secs = secs;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}

/// Gives the connection to hyper, replaying what was read already.
async fn hand_off(
    tcp: TcpStream,
    read: Vec<u8>,
    peer: SocketAddr,
    app: Router,
    stop: CancellationToken,
) {
    use hyper_util::rt::TokioIo;

    let service = hyper::service::service_fn(move |mut req: Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        app.clone().oneshot(req.map(Body::new))
    });
    let io = Rewind {
        read,
        pos: 0,
        inner: tcp,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .title_case_headers(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(%err, %peer, "HTTP connection ended");
    }
}

/// A stream that first yields bytes already read from it.
struct Rewind {
    read: Vec<u8>,
    pos: usize,
    inner: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.read.len() {
            let n = (self.read.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.read[start..start + n]);
            self.pos += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(raw: &str) -> Option<Head> {
        match parse(raw.as_bytes()) {
            Parsed::Plain(h) => Some(h),
            _ => None,
        }
    }

    #[test]
    fn plain_requests_and_what_goes_to_hyper() {
        let h = plain(
            "GET /a%20b?x=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\nGET /next",
        )
        .unwrap();
        assert_eq!(h.method, Method::GET);
        assert_eq!(h.uri.path(), "/a%20b");
        assert!(h.close);
        assert_eq!(
            h.len,
            "GET /a%20b?x=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n".len()
        );
        assert!(plain("HEAD / HTTP/1.1\r\nContent-Length: 0\r\n\r\n").is_some_and(|h| !h.close));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        for other in [
            "POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "GET / HTTP/1.0\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi",
            "GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /\0 HTTP/1.1\r\n\r\n",
            "\x16\x03\x01 garbage\r\n\r\n",
        ] {
            assert!(
                matches!(parse(other.as_bytes()), Parsed::Other),
                "{other:?}"
            );
        }
        let many = format!(
            "GET / HTTP/1.1\r\n{}\r\n",
            "X-A: b\r\n".repeat(MAX_HEADERS + 1)
        );
        assert!(matches!(parse(many.as_bytes()), Parsed::Other));
    }

    #[test]
    fn header_names_in_title_case() {
        let mut out = Vec::new();
        title_case(&mut out, b"content-length");
        title_case(&mut out, b"x-etag-2");
        assert_eq!(out, b"Content-LengthX-Etag-2");
    }
}
