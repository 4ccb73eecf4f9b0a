//! One HTTP/1.1 connection, on any of our listeners. Plain GET/HEAD requests (no body, no upgrade) are read
//! and written here and answered by the router, so a static file's bytes go from the
//! page cache to the socket with sendfile(2) and a small response is one write. Any
//! other request (a body, HTTP/1.0, `Expect`, an upgrade, a head that does not parse)
//! hands the connection, with the bytes already read, to hyper for that one request.
//! Both paths keep [`HttpLimits`]: a whole request (head and body) within
//! `request_timeout` of its first byte, no more than `idle_timeout` between requests,
//! and no write stalled longer than `write_timeout`.
use std::{
    cell::RefCell,
    future::Future as _,
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
    time::{Instant, Sleep},
};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

use super::static_files::FileRange;
use crate::config::HttpLimits;

/// A head larger than this is left to hyper (which answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// Headers a request may carry before it is left to hyper.
const MAX_HEADERS: usize = 64;
/// Capacity of a connection's response buffer kept between requests: a head and a
/// small file.
const OUT_KEPT: usize = 4 * 1024;
/// Largest sendfile(2) call: the kernel caps one call near 2 GiB anyway.
const SENDFILE_MAX: u64 = 1 << 30;

/// Serves `tcp` until the client closes, a request says `Connection: close`, a limit
/// of `limits` passes, or `stop` fires between requests.
pub async fn serve(
    mut tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(2048);
    // Each response's head (and small body) is built here, kept from one request to the
    // next: a fresh buffer growing to a 1 KiB body's size was three allocations a request.
    let mut out: Vec<u8> = Vec::with_capacity(OUT_KEPT);
    loop {
        let head = match next_head(&mut tcp, &mut buf, &limits, &stop).await {
            Next::Request(head) => head,
            Next::HandOff { deadline } => {
                return hand_off(tcp, buf, peer, app, limits, deadline, stop).await;
            }
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
        out.clear();
        let sent = respond(
            &mut tcp,
            &mut out,
            response,
            is_head,
            close,
            limits.write_timeout,
        )
        .await;
        // A large or streamed body grew it: an idle connection keeps no more than this.
        out.shrink_to(OUT_KEPT);
        match sent {
            Ok(true) => {}
            Ok(false) => {
                let _ = tokio::time::timeout(limits.write_timeout, tcp.shutdown()).await;
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

#[expect(
    clippy::large_enum_variant,
    reason = "moved once per request; a Box would allocate on the hot path"
)]
enum Next {
    Request(Head),
    /// For hyper, with the time the whole request must have arrived by.
    HandOff {
        deadline: Instant,
    },
    Close,
}

/// Reads until `buf` holds a whole request head: its first byte within `idle_timeout`,
/// the rest within `request_timeout` of that byte.
async fn next_head(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    limits: &HttpLimits,
    stop: &CancellationToken,
) -> Next {
    // Bytes left from a pipelined request started this one now.
    let mut deadline = (!buf.is_empty()).then(|| Instant::now() + limits.request_timeout);
    let idle_until = Instant::now() + limits.idle_timeout;
    loop {
        let due = deadline.unwrap_or_else(|| Instant::now() + limits.request_timeout);
        match parse(buf) {
            Parsed::Plain(head) => return Next::Request(head),
            Parsed::Other => return Next::HandOff { deadline: due },
            Parsed::Partial if buf.len() >= MAX_HEAD => {
                return Next::HandOff { deadline: due };
            }
            Parsed::Partial => {}
        }
        let read = tokio::select! {
            () = stop.cancelled() => return Next::Close,
            read = tokio::time::timeout_at(deadline.unwrap_or(idle_until), tcp.read_buf(buf)) => read,
        };
        match read {
            // The clock starts at the first byte, not when the wait for it began.
            Ok(Ok(n)) if n > 0 => {
                deadline.get_or_insert_with(|| Instant::now() + limits.request_timeout);
            }
            // Closed, failed, idle or too slow: nothing more to answer.
            _ => return Next::Close,
        }
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "moved once per request; a Box would allocate on the hot path"
)]
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
    out: &mut Vec<u8>,
    response: axum::response::Response,
    is_head: bool,
    client_close: bool,
    write_timeout: Duration,
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
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        title_case(out, name.as_str().as_bytes());
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
            line(out, "Content-Length", &range.count.to_string());
            false
        }
        (None, Some(n)) => {
            line(out, "Content-Length", &n.to_string());
            false
        }
        (None, None) => {
            line(out, "Transfer-Encoding", "chunked");
            true
        }
    };
    if client_close && !parts.headers.contains_key(header::CONNECTION) {
        line(out, "Connection", "close");
    }
    if !parts.headers.contains_key(header::DATE) {
        DATE.with(|d| line(out, "Date", d.borrow_mut().now()));
    }
    out.extend_from_slice(b"\r\n");

    if no_body {
        write_all(tcp, out, write_timeout).await?;
        return Ok(!close);
    }
    if let Some(range) = file {
        // Corked, the head leaves with the first bytes of the file and every segment
        // is full until the last, as under nginx's tcp_nopush. Uncorked (TCP_NODELAY,
        // which small responses need), each sendfile call's tail went out as a segment
        // of its own: with 64 clients pulling 1 GiB the server spent 0.22 CPU s per GiB
        // instead of 0.20 and the clients more on their side (`cargo xtask bench image`).
        set_cork(tcp, true);
        write_all(tcp, out, write_timeout).await?;
        let sent = sendfile(tcp, range, write_timeout).await;
        // Uncorking sends the last partial segment now; the connection stays
        // TCP_NODELAY for the next response.
        set_cork(tcp, false);
        sent?;
        return Ok(!close);
    }
    // Small bodies (the usual: a script, a config, a status page) go out with the head
    // in one write. A stream of unknown length (an event stream) sends its head at once
    // and ends when its client goes, rather than at its next event.
    let streamed = exact.is_none();
    if streamed {
        write_all(tcp, out, write_timeout).await?;
        out.clear();
    }
    loop {
        let frame = if streamed {
            tokio::select! {
                frame = body.frame() => frame,
                () = client_gone(tcp) => {
                    return Err(io::ErrorKind::ConnectionReset.into());
                }
            }
        } else {
            body.frame().await
        };
        let Some(frame) = frame else { break };
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
            write_all(tcp, out, write_timeout).await?;
            out.clear();
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        write_all(tcp, out, write_timeout).await?;
    }
    Ok(!close)
}

/// Waits until `tcp` takes more bytes, for at most `limit`: a client that reads nothing
/// for that long is let go.
async fn writable(tcp: &TcpStream, limit: Duration) -> io::Result<()> {
    tokio::time::timeout(limit, tcp.writable())
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))?
}

/// Writes all of `bytes`, each write making progress within `limit`.
async fn write_all(tcp: &TcpStream, mut bytes: &[u8], limit: Duration) -> io::Result<()> {
    while !bytes.is_empty() {
        writable(tcp, limit).await?;
        match tcp.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Returns once the client has closed its end (or the socket failed); never while it
/// is open, even with a next request waiting (that one is read after this response).
async fn client_gone(tcp: &TcpStream) {
    let mut probe = [0u8; 1];
    match tcp.peek(&mut probe).await {
        Ok(0) | Err(_) => {}
        Ok(_) => std::future::pending().await,
    }
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

/// Corks or uncorks `tcp` (TCP_CORK); a socket that refuses is only slower.
fn set_cork(tcp: &TcpStream, on: bool) {
    if let Err(err) = socket2::SockRef::from(tcp).set_tcp_cork(on) {
        tracing::debug!(%err, on, "TCP_CORK not set");
    }
}

/// Sends the file range from the page cache to the socket, each call making progress
/// within `limit`.
async fn sendfile(tcp: &TcpStream, range: &FileRange, limit: Duration) -> io::Result<()> {
    let mut offset = range.start as libc::off_t;
    let mut left = range.count;
    while left > 0 {
        writable(tcp, limit).await?;
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
    static DATE: RefCell<CachedDate> = const { RefCell::new(CachedDate { secs: 0, text: String::new() }) };
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

/// Gives the connection to hyper for one request, replaying what was read already; its
/// body must have arrived by `deadline`.
async fn hand_off(
    tcp: TcpStream,
    read: Vec<u8>,
    peer: SocketAddr,
    app: Router,
    limits: HttpLimits,
    deadline: Instant,
    stop: CancellationToken,
) {
    use hyper_util::rt::TokioIo;

    let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        let req = req.map(|body| {
            Body::new(Deadline {
                inner: body,
                timer: Box::pin(tokio::time::sleep_until(deadline)),
            })
        });
        app.clone().oneshot(req)
    });
    let io = Rewind {
        read,
        pos: 0,
        inner: tcp,
        write_timeout: limits.write_timeout,
        stalled: None,
    };
    let conn = hyper::server::conn::http1::Builder::new()
        .title_case_headers(true)
        // One request: the next goes back through a deadline of its own only if the
        // client opens a new connection (requests with bodies are rare here).
        .keep_alive(false)
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(deadline.saturating_duration_since(Instant::now()))
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

/// A request body that fails once its request's deadline passes, so a client that
/// trickles a body cannot hold its connection (and its slot) for longer.
struct Deadline {
    inner: hyper::body::Incoming,
    timer: Pin<Box<Sleep>>,
}

impl axum::body::HttpBody for Deadline {
    type Data = axum::body::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request body not received within http.request_timeout",
            )
            .into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream that first yields bytes already read from it, and fails a write that makes
/// no progress for `write_timeout`.
struct Rewind {
    read: Vec<u8>,
    pos: usize,
    inner: TcpStream,
    write_timeout: Duration,
    /// Running while a write waits for the client to read.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl Rewind {
    /// `poll` (a write) as it went; a pending write arms the stall timer, progress
    /// disarms it, a stall past the timeout is an error.
    fn stall<T>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.write_timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
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
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.stall(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.stall(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.stall(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.stall(cx, poll)
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
