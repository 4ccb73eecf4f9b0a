//! Static files from `data_path/www` and the `[http] mounts`: listings, HEAD, single byte
//! ranges, ETag/Last-Modified with conditional requests, streamed bodies, and no way out
//! of the root.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    response::{IntoResponse, Response},
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, percent_decode_str, utf8_percent_encode};
use tracing::{debug, warn};

use super::Peer;
use crate::{
    clients::{ClientEvent, Clients, Stage},
    confine::{OpenError, Root, Stamp},
    identity::Identity,
    live::Live,
    mac::{Mac, or_dash},
};

/// What the static file routes use.
#[derive(Clone)]
pub struct Files {
    /// `data_path/www`, served at `/`.
    pub www: PathBuf,
    /// `[http] mounts`: URL prefix → directory, longest first.
    pub mounts: Arc<[(String, PathBuf)]>,
    /// Who fetched a boot file or kernel, for the client's timeline.
    pub identity: Identity,
    pub events: Arc<Clients>,
    /// Profiles name the kernel and initrd a fetch is recorded as.
    pub live: Live,
}

/// Read size of the streamed body: large enough that a multi-GiB image is a few thousand
/// reads per GiB, small enough that many parallel downloads stay cheap in memory.
const CHUNK: usize = 256 * 1024;

/// Files up to this size are read whole where they are found. Larger files stream.
const SMALL_FILE: u64 = 64 * 1024;

/// Directory listings stop here; a directory with more entries says so.
const LISTING_LIMIT: usize = 10_000;

/// Where a request path points: a root directory and the path below it.
#[derive(Debug, PartialEq, Eq)]
enum Located<'a> {
    File {
        root: &'a Path,
        /// Its `/`-separated segments, none empty, `.` or `..` (`""`: the root itself).
        rel: String,
    },
    /// A mount prefix asked without its trailing slash: redirect there.
    Redirect(String),
}

/// Why a path is refused before touching the file system.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    /// Not valid percent-encoding/UTF-8, a NUL, a backslash, or a `.`/`..` segment.
    BadPath,
}

/// Maps the raw (still percent-encoded) request path onto a file under a root. The path
/// is decoded exactly once; whatever is left that looks like an escape (`%2e` from
/// `%252e`) is then only a file name, which never exists.
fn locate<'a>(
    www: &'a Path,
    mounts: &'a [(String, PathBuf)],
    raw: &str,
) -> Result<Located<'a>, Refused> {
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| Refused::BadPath)?;
    if !decoded.starts_with('/') || decoded.contains(['\0', '\\']) {
        return Err(Refused::BadPath);
    }
    let (root, rest) = match mounts
        .iter()
        .find(|(prefix, _)| decoded.starts_with(prefix.as_str()))
    {
        Some((prefix, dir)) => (dir.as_path(), &decoded[prefix.len()..]),
        None => {
            if let Some((prefix, _)) = mounts
                .iter()
                .find(|(prefix, _)| prefix.strip_suffix('/') == Some(&*decoded))
            {
                return Ok(Located::Redirect(prefix.clone()));
            }
            (www, &decoded[1..])
        }
    };
    let mut rel = String::with_capacity(rest.len());
    for seg in rest.split('/').filter(|s| !s.is_empty()) {
        if seg == "." || seg == ".." {
            return Err(Refused::BadPath);
        }
        if !rel.is_empty() {
            rel.push('/');
        }
        rel.push_str(seg);
    }
    Ok(Located::File { root, rel })
}

/// The size of the file a GET of `url_path` (e.g. an inventory's `image`) would send
/// from `www` or a mount, when it names a file.
pub fn local_size(www: &Path, mounts: &[(String, PathBuf)], url_path: &str) -> Option<u64> {
    let raw = format!("/{}", url_path.trim_start_matches('/'));
    match locate(www, mounts, &raw).ok()? {
        Located::File { root, rel } => std::fs::metadata(root.join(rel))
            .ok()
            .filter(|m| m.is_file())
            .map(|m| m.len()),
        Located::Redirect(_) => None,
    }
}

/// The fallback handler: every GET/HEAD no other route took.
pub async fn serve(State(files): State<Arc<Files>>, peer: Peer, req: Request) -> Response {
    let method = req.method().clone();
    if method != Method::GET && method != Method::HEAD {
        return (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET, HEAD")],
        )
            .into_response();
    }
    let raw = req.uri().path().to_owned();
    if crate::boot::is_local_boot_file(&raw) {
        // An installed host on its way to its disk ([boot] installed = "not_found"): UEFI
        // HTTP boot or iPXE gives up on this boot option at once. Not a client failure;
        // debug, as other 404s write no line: anyone on the LAN can ask for it in a loop.
        debug!(peer = ?peer.0, mac = %or_dash(who(&files, peer)), "local boot file: not found, as offered");
        return status_page(StatusCode::NOT_FOUND);
    }
    let (root, rel) = match locate(&files.www, &files.mounts, &raw) {
        Ok(Located::File { root, rel }) => (root, rel),
        Ok(Located::Redirect(to)) => return redirect(&to),
        Err(Refused::BadPath) => {
            warn!(path = %raw, peer = ?peer.0, mac = %or_dash(who(&files, peer)), "refused request path");
            return status_page(StatusCode::BAD_REQUEST);
        }
    };
    // On the worker thread, as nginx does in its event loop: an open, a stat and a
    // small read of files in the page cache take microseconds, while trips through the
    // blocking pool (find, open, read) were most of what a small boot script cost, in
    // thread switches.
    let (meta, content) = match find(root, &rel, method == Method::GET) {
        Lookup::Found(meta, content) => (meta, content),
        Lookup::Missing => return failed(&files, peer, &raw, StatusCode::NOT_FOUND),
        Lookup::Refused(OpenError::Outside) => {
            warn!(path = %raw, peer = ?peer.0, mac = %or_dash(who(&files, peer)), "resolves out of the root (symlink)");
            return failed(&files, peer, &raw, StatusCode::FORBIDDEN);
        }
        Lookup::Refused(OpenError::Denied) => {
            return failed(&files, peer, &raw, StatusCode::FORBIDDEN);
        }
        Lookup::Refused(err) => {
            warn!(path = %raw, mac = %or_dash(who(&files, peer)), error = %crate::error_chain(&err), "opening a served file");
            return status_page(StatusCode::INTERNAL_SERVER_ERROR);
        }
    };
    let headers = req.headers();
    if meta.is_dir() {
        if !raw.ends_with('/') {
            // One leading slash: `//host/dir` would redirect to another site.
            return redirect(&format!("/{}/", raw.trim_start_matches('/')));
        }
        let index = if rel.is_empty() {
            "index.html".to_owned()
        } else {
            format!("{rel}/index.html")
        };
        if let Lookup::Found(index_meta, content) = find(root, &index, method == Method::GET)
            && index_meta.is_file()
        {
            let index = root.join(index);
            return file_response(&method, headers, &index, &index_meta, content).await;
        }
        return listing(&method, &raw, root.to_owned(), rel).await;
    }
    if !meta.is_file() {
        return failed(&files, peer, &raw, StatusCode::NOT_FOUND);
    }
    let response = file_response(&method, headers, Path::new(&rel), &meta, content).await;
    if method == Method::GET && response.status().is_success() {
        note_fetch(&files, peer, &raw, headers);
    }
    response
}

/// What a request path found beneath its root.
enum Lookup {
    /// Its metadata, as of now, and its content.
    Found(std::fs::Metadata, Content),
    Missing,
    Refused(OpenError),
}

/// What a found file's body is sent from.
enum Content {
    /// A small file's bytes, read whole.
    Whole(axum::body::Bytes),
    /// The open file (a large one, a directory, or a small one whose body is not wanted).
    Open(std::fs::File),
}

/// Opens `rel` (`""`: the root itself) beneath `root` through [`crate::confine`]; a
/// small file found lately on this thread is answered from what was kept of it.
fn find(root: &Path, rel: &str, want_body: bool) -> Lookup {
    let now = std::time::Instant::now();
    ROOTS.with_borrow_mut(|roots| {
        roots.retain(|open| now.duration_since(open.opened) < ROOT_REUSE);
        let at = match roots.iter().position(|open| open.path == root) {
            Some(at) => at,
            None => {
                // A root that does not exist (yet) serves nothing.
                let Ok(dir) = Root::open(root) else {
                    return Lookup::Missing;
                };
                roots.push(OpenRoot {
                    path: root.to_owned(),
                    opened: now,
                    root: dir,
                    kept: Vec::new(),
                    kept_bytes: 0,
                });
                roots.len() - 1
            }
        };
        let open = &mut roots[at];
        if let Some(found) = open.reuse(rel) {
            return found;
        }
        let file = match open
            .root
            .open_beneath(if rel.is_empty() { "." } else { rel })
        {
            Ok(file) => file,
            Err(OpenError::NotFound) => return Lookup::Missing,
            Err(err) => return Lookup::Refused(err),
        };
        let Ok(meta) = file.metadata() else {
            return Lookup::Missing;
        };
        if want_body
            && meta.is_file()
            && meta.len() <= SMALL_FILE
            && let Some(bytes) = read_whole(&file, meta.len() as usize)
        {
            // The stamp is the one from before the read: a change during the read
            // shows at the next look.
            open.keep(rel, file, Stamp::of(&meta), bytes.clone());
            return Lookup::Found(meta, Content::Whole(bytes));
        }
        Lookup::Found(meta, Content::Open(file))
    })
}

/// The file's `len` bytes in as few reads as it takes (one, for a file in the page
/// cache); `None` when it holds fewer now than it did at the stat (it is streamed then).
fn read_whole(file: &std::fs::File, len: usize) -> Option<axum::body::Bytes> {
    use std::os::unix::fs::FileExt as _;
    let mut bytes = vec![0u8; len];
    let mut at = 0;
    while at < len {
        match file.read_at(&mut bytes[at..], at as u64) {
            Ok(0) | Err(_) => return None,
            Ok(n) => at += n,
        }
    }
    Some(axum::body::Bytes::from(bytes))
}

/// How long an open root directory, and what was kept of the small files found beneath
/// it, is reused before it is opened again by path: a root or a small file replaced
/// (renamed over, removed) is served within this. A file changed in place is seen at
/// once (see [`Stamp`]), or within this when the change keeps its size and falls in the
/// same file-time tick (a few ms) as the read that was kept.
const ROOT_REUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Small files kept per root and thread, and their bytes together: a LAN client asking
/// for many different files fills it, then the rest are opened as before.
const KEEP_FILES: usize = 64;
const KEEP_BYTES: usize = 1 << 20;

thread_local! {
    /// Roots opened lately on this thread, with the small files found beneath them:
    /// opening the root and checking it is a directory were three of a small file's ten
    /// system calls, and the open, read and close of the file three of the rest.
    static ROOTS: std::cell::RefCell<Vec<OpenRoot>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A root directory, open, and the small files kept from beneath it.
struct OpenRoot {
    path: PathBuf,
    opened: std::time::Instant,
    root: Root,
    /// By path relative to the root, as the request named them.
    kept: Vec<(Box<str>, Kept)>,
    kept_bytes: usize,
}

/// A small file's bytes, with the file held open to see whether it changed since.
struct Kept {
    file: std::fs::File,
    stamp: Stamp,
    bytes: axum::body::Bytes,
}

impl OpenRoot {
    /// The kept bytes of `rel`, when its file has not changed since they were read (one
    /// fstat instead of an open, a stat, a read and a close).
    fn reuse(&mut self, rel: &str) -> Option<Lookup> {
        let at = self.kept.iter().position(|(name, _)| **name == *rel)?;
        let kept = &self.kept[at].1;
        match kept.file.metadata() {
            Ok(meta) if Stamp::of(&meta) == kept.stamp => {
                Some(Lookup::Found(meta, Content::Whole(kept.bytes.clone())))
            }
            _ => {
                let (_, gone) = self.kept.swap_remove(at);
                self.kept_bytes -= gone.bytes.len();
                None
            }
        }
    }

    /// Keeps a small file's bytes, while there is room.
    fn keep(&mut self, rel: &str, file: std::fs::File, stamp: Stamp, bytes: axum::body::Bytes) {
        if self.kept.len() < KEEP_FILES && self.kept_bytes + bytes.len() <= KEEP_BYTES {
            self.kept_bytes += bytes.len();
            self.kept.push((rel.into(), Kept { file, stamp, bytes }));
        }
    }
}

/// Tells the client record that a boot file or kernel was fetched, when the requester is
/// known by its address.
fn note_fetch(files: &Files, peer: Peer, raw: &str, headers: &HeaderMap) {
    let Some(ip) = peer.0 else { return };
    // Later ranges of a download are the same fetch.
    if let Some(range) = headers.get(header::RANGE).and_then(|v| v.to_str().ok())
        && !range.starts_with("bytes=0-")
    {
        return;
    }
    let Some(mac) = files.identity.who(ip) else {
        return;
    };
    let snapshot = files.live.now();
    let inv = &snapshot.inventory;
    let path = percent_decode_str(raw).decode_utf8_lossy().into_owned();
    let rel = path.trim_start_matches('/');
    let is_kernel = inv.profile_for(inv.host(mac)).is_some_and(|(_, p)| {
        [&p.kernel, &p.initrd]
            .into_iter()
            .flatten()
            .any(|k| k.trim_start_matches('/') == rel)
    });
    let event = if is_kernel {
        ClientEvent::Kernel { path }
    } else if [".efi", ".ipxe", ".kpxe", ".pxe", ".0"]
        .iter()
        .any(|ext| rel.ends_with(ext))
    {
        ClientEvent::BootFile { path }
    } else {
        return;
    };
    files.events.record(mac, event);
}

/// The requester's MAC, when it is known by its address (lease or fixed IP).
fn who(files: &Files, peer: Peer) -> Option<Mac> {
    peer.0.and_then(|ip| files.identity.who(ip))
}

/// A 404 or 403, put on the requester's timeline when it is known by its address: the
/// fleet view's "why it stopped" (a kernel that is not there).
fn failed(files: &Files, peer: Peer, raw: &str, status: StatusCode) -> Response {
    if let Some(mac) = who(files, peer) {
        let path = percent_decode_str(raw).decode_utf8_lossy();
        let reason = if status == StatusCode::NOT_FOUND {
            "not_found"
        } else {
            "forbidden"
        };
        files
            .events
            .record(mac, ClientEvent::failure(Stage::Http, &path, reason));
    }
    status_page(status)
}

/// An error status with a one-line text body, closing the connection, as nginx and
/// busybox answer. EDK2's HTTP stack (shim probing its optional files during UEFI HTTP
/// boot) waits forever on a 404 with `Content-Length: 0`; the close frees firmware
/// that does not pipeline from waiting on a connection it will not reuse.
fn status_page(status: StatusCode) -> Response {
    let line = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("")
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CONNECTION, "close"),
        ],
        line,
    )
        .into_response()
}

fn redirect(to: &str) -> Response {
    match HeaderValue::from_str(to) {
        Ok(location) => (
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, location)],
        )
            .into_response(),
        Err(_) => status_page(StatusCode::BAD_REQUEST),
    }
}

/// The Content-Type for a file name.
pub fn content_type(path: &Path) -> &'static str {
    // Lowercased on the stack: every name below is shorter than the buffer.
    let mut lower = [0u8; 8];
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| e.len() <= lower.len())
        .and_then(|e| {
            let lower = &mut lower[..e.len()];
            lower.copy_from_slice(e.as_bytes());
            lower.make_ascii_lowercase();
            std::str::from_utf8(lower).ok()
        });
    match ext {
        // UEFI HTTP boot wants its loader as application/efi (FIRMWARE.md).
        Some("efi") => "application/efi",
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt" | "cfg" | "ipxe" | "conf" | "sh" | "asc" | "sum" | "sha256" | "md5") => {
            "text/plain; charset=utf-8"
        }
        Some("json") => "application/json",
        Some("yaml" | "yml") => "application/yaml",
        Some("toml") => "application/toml",
        Some("iso") => "application/x-iso9660-image",
        Some("gz" | "tgz") => "application/gzip",
        Some("xz") => "application/x-xz",
        Some("zst") => "application/zstd",
        Some("tar") => "application/x-tar",
        Some("deb" | "udeb") => "application/vnd.debian.binary-package",
        Some("css") => "text/css",
        Some("js") => "text/javascript",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// The byte range a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    Full,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// RFC 9110 §14: one `bytes=` range. A header that does not parse, another unit, or
/// several ranges are answered with the whole representation, which the RFC allows and
/// which costs no more than a plain GET (no multipart amplification).
fn wanted(range: Option<&str>, len: u64) -> Wanted {
    let Some(spec) = range.and_then(|r| {
        r.get(..6)
            .filter(|u| u.eq_ignore_ascii_case("bytes="))
            .map(|_| r[6..].trim())
    }) else {
        return Wanted::Full;
    };
    if spec.contains(',') {
        return Wanted::Full;
    }
    let Some((first, last)) = spec.split_once('-') else {
        return Wanted::Full;
    };
    let digits = |s: &str| -> Option<u64> {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match digits(suffix) {
            None => Wanted::Full,
            Some(0) => Wanted::Unsatisfiable,
            Some(_) if len == 0 => Wanted::Unsatisfiable,
            Some(n) => Wanted::Part(len.saturating_sub(n), len - 1),
        },
        (first, last) => {
            let Some(start) = digits(first) else {
                return Wanted::Full;
            };
            let end = if last.is_empty() {
                u64::MAX
            } else {
                match digits(last) {
                    Some(end) if end >= start => end,
                    _ => return Wanted::Full,
                }
            };
            if start >= len {
                Wanted::Unsatisfiable
            } else {
                Wanted::Part(start, end.min(len - 1))
            }
        }
    }
}

/// A request path, `Range` and `If-None-Match` as a client sends them, through what runs
/// before a file is opened (the fuzz target's entry, see [`crate::fuzz`]). Panics on a
/// broken invariant: a path never leaves its root, a range never leaves the file.
pub fn exercise_request(path: &str, range: &str, etag: &str, len: u64) {
    let www = Path::new("/www");
    let mounts = [("/iso/".to_owned(), PathBuf::from("/mnt/iso"))];
    if let Ok(Located::File { root, rel }) = locate(www, &mounts, path) {
        let path = root.join(&rel);
        assert!(
            path.starts_with(root) && !rel.starts_with('/'),
            "{path:?} left {root:?}"
        );
        assert!(
            !path.components().any(|c| matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )),
            "{path:?}"
        );
    }
    if let Wanted::Part(first, last) = wanted(Some(range), len) {
        assert!(first <= last && last < len, "{first}-{last} of {len}");
    }
    let _ = etag_listed(etag, "\"0-0\"");
}

/// Whether an `If-None-Match`/`If-Match` list holds `etag` (weak comparison for the former
/// is what RFC 9110 asks; our tags are strong, so the two coincide).
fn etag_listed(list: &str, etag: &str) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|t| t == "*" || t == etag || t.strip_prefix("W/") == Some(etag))
}

/// A byte range of an open file that the response body streams. The LAN connection
/// loop ([`super::conn`]) sends it with sendfile(2) instead and drops the body unread;
/// any other server streams the body.
#[derive(Clone, Debug)]
pub struct FileRange {
    pub file: Arc<std::fs::File>,
    pub start: u64,
    pub count: u64,
}

impl FileRange {
    /// The range in [`CHUNK`] reads on the blocking pool, started only when polled.
    fn chunks(self) -> impl futures::Stream<Item = std::io::Result<axum::body::Bytes>> + Send {
        futures::stream::try_unfold(self, |range| async move {
            if range.count == 0 {
                return Ok(None);
            }
            let n = range.count.min(CHUNK as u64) as usize;
            let (file, at) = (range.file.clone(), range.start);
            let bytes = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                // A file that shrank while served ends the body early: an error, so
                // the connection closes instead of promising bytes it lacks.
                std::os::unix::fs::FileExt::read_exact_at(&*file, &mut buf, at)?;
                Ok::<_, std::io::Error>(axum::body::Bytes::from(buf))
            })
            .await
            .map_err(std::io::Error::other)??;
            let next = FileRange {
                start: range.start + n as u64,
                count: range.count - n as u64,
                ..range
            };
            Ok(Some((bytes, next)))
        })
    }
}

/// `"<mtime secs>-<len>"` in hex, without the formatting machinery (it was a tenth of
/// a small file's response).
fn etag_of(secs: u64, len: u64) -> String {
    fn hex(out: &mut String, mut n: u64) {
        let mut digits = [0u8; 16];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b"0123456789abcdef"[(n & 15) as usize];
            n >>= 4;
            if n == 0 {
                break;
            }
        }
        out.extend(digits[at..].iter().map(|&d| char::from(d)));
    }
    let mut etag = String::with_capacity(36);
    etag.push('"');
    hex(&mut etag, secs);
    etag.push('-');
    hex(&mut etag, len);
    etag.push('"');
    etag
}

thread_local! {
    /// The last `Last-Modified` value formatted on this thread, by its second: the same
    /// file asked again is not formatted again.
    static LAST_MODIFIED: std::cell::RefCell<(u64, String)> =
        const { std::cell::RefCell::new((0, String::new())) };
}

async fn file_response(
    method: &Method,
    headers: &HeaderMap,
    path: &Path,
    meta: &std::fs::Metadata,
    content: Content,
) -> Response {
    let len = meta.len();
    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
    let secs = mtime.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let etag = etag_of(secs, len);
    let last_modified = LAST_MODIFIED.with_borrow_mut(|memo| {
        if memo.0 != secs || memo.1.is_empty() {
            *memo = (
                secs,
                httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(secs)),
            );
        }
        memo.1.clone()
    });
    let header_str = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };

    let validators = || {
        [
            (header::ETAG, etag.clone()),
            (header::LAST_MODIFIED, last_modified.clone()),
        ]
    };
    if let Some(list) = header_str(header::IF_MATCH)
        && !etag_listed(list, &etag)
    {
        return (StatusCode::PRECONDITION_FAILED, validators(), Body::empty()).into_response();
    }
    let not_modified = match header_str(header::IF_NONE_MATCH) {
        Some(list) => etag_listed(list, &etag),
        None => header_str(header::IF_MODIFIED_SINCE)
            .and_then(|d| httpdate::parse_http_date(d).ok())
            .is_some_and(|since: SystemTime| {
                since
                    .duration_since(UNIX_EPOCH)
                    .is_ok_and(|s| secs <= s.as_secs())
            }),
    };
    if not_modified {
        return (StatusCode::NOT_MODIFIED, validators(), Body::empty()).into_response();
    }
    // If-Range: the range only applies to the representation the client already has.
    let range_applies =
        header_str(header::IF_RANGE).is_none_or(|v| v == etag || v == last_modified);
    let range = if range_applies {
        wanted(header_str(header::RANGE), len)
    } else {
        Wanted::Full
    };
    let ctype = content_type(path);
    let (status, start, count, content_range) = match range {
        Wanted::Full => (StatusCode::OK, 0, len, None),
        Wanted::Part(a, b) => (
            StatusCode::PARTIAL_CONTENT,
            a,
            b - a + 1,
            Some(format!("bytes {a}-{b}/{len}")),
        ),
        Wanted::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                Body::empty(),
            )
                .into_response();
        }
    };
    let mut sendable = None;
    let body = match content {
        _ if *method == Method::HEAD || count == 0 => Body::empty(),
        // `start + count <= len == whole.len()`: `wanted` keeps ranges inside the file.
        Content::Whole(whole) => Body::from(whole.slice(start as usize..(start + count) as usize)),
        Content::Open(file) => {
            let range = FileRange {
                file: Arc::new(file),
                start,
                count,
            };
            sendable = Some(range.clone());
            Body::from_stream(range.chunks())
        }
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    if let Some(range) = sendable {
        response.extensions_mut().insert(range);
    }
    let h = response.headers_mut();
    h.reserve(6);
    // The strings move into the headers (no copies): both came from ASCII formatting.
    for (name, value) in [(header::ETAG, etag), (header::LAST_MODIFIED, last_modified)] {
        if let Ok(value) = HeaderValue::try_from(value) {
            h.insert(name, value);
        }
    }
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    if let Some(cr) = content_range
        && let Ok(v) = HeaderValue::from_str(&cr)
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    debug!(path = %path.display(), status = status.as_u16(), start, count, "static file");
    response
}

/// Characters left as they are in listing links.
const HREF: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// An nginx-autoindex-like HTML listing of `rel` beneath `root`. Entries are looked at
/// without following symlinks; a symlink is followed only through [`crate::confine`]
/// and left out when it leads out of the root, so nothing outside is ever stat'ed (its
/// existence, size and date stay unknown to the client).
async fn listing(method: &Method, raw: &str, root: PathBuf, rel: String) -> Response {
    let entries = tokio::task::spawn_blocking(move || {
        let root = Root::open(&root)?;
        let dir = root
            .open_beneath(if rel.is_empty() { "." } else { &rel })
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        // The directory just opened beneath the root, whatever its path now leads to.
        let fd = std::os::fd::AsRawFd::as_raw_fd(&dir);
        let mut entries: Vec<(String, bool, u64, u64)> = Vec::new();
        let mut more = false;
        for entry in std::fs::read_dir(format!("/proc/self/fd/{fd}"))?.filter_map(Result::ok) {
            if entries.len() >= LISTING_LIMIT {
                more = true;
                break;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let meta = if entry.file_type().is_ok_and(|t| t.is_symlink()) {
                let inside = if rel.is_empty() {
                    name.clone()
                } else {
                    format!("{rel}/{name}")
                };
                match root.open_beneath(&inside) {
                    Ok(file) => file.metadata().ok(),
                    // Out of the root, dangling or unreadable: not listed.
                    Err(_) => continue,
                }
            } else {
                entry.metadata().ok()
            };
            let is_dir = meta.as_ref().is_some_and(|m| m.is_dir());
            let size = meta.as_ref().map_or(0, |m| m.len());
            let mtime = meta
                .and_then(|m| m.modified().ok())
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            entries.push((name, is_dir, size, mtime));
        }
        entries.sort();
        Ok::<_, std::io::Error>((entries, more))
    })
    .await;
    let Ok(Ok((entries, more))) = entries else {
        return status_page(StatusCode::NOT_FOUND);
    };
    let title = html_escape(&percent_decode_str(raw).decode_utf8_lossy());
    let mut html = format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n\
         <body><h1>Index of {title}</h1><hr><pre><a href=\"../\">../</a>\n"
    );
    for (name, is_dir, size, mtime) in &entries {
        let slash = if *is_dir { "/" } else { "" };
        let href = utf8_percent_encode(name, HREF);
        let shown = html_escape(name);
        let date = httpdate::fmt_http_date(UNIX_EPOCH + std::time::Duration::from_secs(*mtime));
        let size = if *is_dir {
            "-".to_owned()
        } else {
            size.to_string()
        };
        html.push_str(&format!(
            "<a href=\"{href}{slash}\">{shown}{slash}</a>  {date}  {size}\n"
        ));
    }
    if more {
        html.push_str(&format!("(listing stops at {LISTING_LIMIT} entries)\n"));
    }
    html.push_str("</pre><hr></body></html>\n");
    let len = html.len();
    let body = if *method == Method::HEAD {
        Body::empty()
    } else {
        Body::from(html)
    };
    let mut response = (StatusCode::OK, body).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(raw: &str) -> Result<Located<'static>, Refused> {
        static MOUNTS: std::sync::LazyLock<Vec<(String, PathBuf)>> =
            std::sync::LazyLock::new(|| vec![("/repos/".to_owned(), PathBuf::from("/srv/repos"))]);
        locate(Path::new("/www"), &MOUNTS, raw)
    }

    #[test]
    fn traversal_vectors_are_refused() {
        for raw in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/%2e%2e/etc/passwd",
            "/a/..%2fb",
            "/repos/../../etc/passwd",
            "/..%5c..%5cetc/passwd",
            "/a\\b",
            "/a%00b",
            "/%ff",
            "/./x",
        ] {
            assert_eq!(loc(raw), Err(Refused::BadPath), "{raw}");
        }
        // Decoded once: `%252e` is the literal name `%2e`, under the root.
        assert_eq!(
            loc("/%252e%252e/x"),
            Ok(Located::File {
                root: Path::new("/www"),
                rel: "%2e%2e/x".into()
            })
        );
    }

    #[test]
    fn mounts_and_redirects() {
        assert_eq!(
            loc("/repos/a%20b.deb"),
            Ok(Located::File {
                root: Path::new("/srv/repos"),
                rel: "a b.deb".into()
            })
        );
        assert_eq!(loc("/repos"), Ok(Located::Redirect("/repos/".into())));
        assert_eq!(
            loc("/x//y"),
            Ok(Located::File {
                root: Path::new("/www"),
                rel: "x/y".into()
            })
        );
    }

    #[test]
    fn ranges() {
        assert_eq!(wanted(None, 10), Wanted::Full);
        assert_eq!(wanted(Some("bytes=0-3"), 10), Wanted::Part(0, 3));
        assert_eq!(wanted(Some("bytes=5-"), 10), Wanted::Part(5, 9));
        assert_eq!(wanted(Some("bytes=-3"), 10), Wanted::Part(7, 9));
        assert_eq!(wanted(Some("bytes=-30"), 10), Wanted::Part(0, 9));
        assert_eq!(wanted(Some("bytes=2-999999999999"), 10), Wanted::Part(2, 9));
        assert_eq!(wanted(Some("bytes=10-"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 10), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=0-1,3-4"), 10), Wanted::Full);
        assert_eq!(wanted(Some("bytes=5-2"), 10), Wanted::Full);
        assert_eq!(wanted(Some("items=0-1"), 10), Wanted::Full);
        assert_eq!(
            wanted(Some("bytes=99999999999999999999999-"), 10),
            Wanted::Full
        );
        assert_eq!(wanted(Some("bytes=0-"), 0), Wanted::Unsatisfiable);
    }

    #[test]
    fn etags_and_types() {
        assert_eq!(etag_of(0, 0), "\"0-0\"");
        assert_eq!(etag_of(0x6b0d_9249, 1024), "\"6b0d9249-400\"");
        assert_eq!(etag_of(u64::MAX, 15), format!("\"{:x}-f\"", u64::MAX));
        assert!(etag_listed("\"a\", \"b\"", "\"b\""));
        assert!(etag_listed("*", "\"b\""));
        assert!(etag_listed("W/\"b\"", "\"b\""));
        assert!(!etag_listed("\"c\"", "\"b\""));
        assert_eq!(content_type(Path::new("x/grubx64.EFI")), "application/efi");
    }
}
