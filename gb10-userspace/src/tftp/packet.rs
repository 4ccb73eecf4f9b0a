//! TFTP on the wire: request and option parsing, option negotiation and packet encoding
//! (RFC 1350, 2347, 2348, 2349, 7440), as pure functions.
use std::time::Duration;

/// Opcodes (RFC 1350, 2347).
pub const OP_RRQ: u16 = 1;
pub const OP_WRQ: u16 = 2;
pub const OP_DATA: u16 = 3;
pub const OP_ACK: u16 = 4;
pub const OP_ERROR: u16 = 5;
pub const OP_OACK: u16 = 6;

/// The block size without the blksize option.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348's valid block sizes.
pub const BLKSIZE_RANGE: std::ops::RangeInclusive<u16> = 8..=65464;
/// RFC 2349's valid timeouts, in seconds.
pub const TIMEOUT_RANGE: std::ops::RangeInclusive<u16> = 1..=255;
/// The largest window we grant: more buys nothing on a LAN and costs memory per session.
pub const MAX_WINDOW: u16 = 64;

/// Error codes of RFC 1350 and 2347.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotDefined = 0,
    FileNotFound = 1,
    AccessViolation = 2,
    IllegalOperation = 4,
    /// RFC 2347: the client (or we) refuse the negotiated options.
    OptionNegotiation = 8,
}

/// Why a packet could not be read as a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet of {0} bytes is too short for a request")]
    Short(usize),
    #[error("opcode {0} is not a request (RRQ or WRQ)")]
    NotARequest(u16),
    #[error("the {0} field is not NUL-terminated")]
    Unterminated(&'static str),
    #[error("transfer mode {0:?} is not supported (octet or netascii)")]
    Mode(String),
}

/// RRQ or WRQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

/// Transfer mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Octet,
    /// Text with CR LF line ends (RFC 764): LF is sent as CR LF, CR as CR NUL.
    Netascii,
}

/// A parsed request. The file name stays raw bytes: [`super::path`] judges it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    pub filename: Vec<u8>,
    pub mode: Mode,
    /// Options as sent (names lower-cased), in order, duplicates kept.
    pub options: Vec<(String, String)>,
}

/// Parses an RRQ or WRQ. Option pairs cut short at the end of the packet are dropped
/// (some clients pad requests with NULs).
pub fn parse_request(packet: &[u8]) -> Result<Request, PacketError> {
    if packet.len() < 4 {
        return Err(PacketError::Short(packet.len()));
    }
    let kind = match u16::from_be_bytes([packet[0], packet[1]]) {
        OP_RRQ => Kind::Read,
        OP_WRQ => Kind::Write,
        op => return Err(PacketError::NotARequest(op)),
    };
    let mut fields = Fields(&packet[2..]);
    let filename = fields
        .next()
        .ok_or(PacketError::Unterminated("filename"))?
        .to_vec();
    let mode_raw = fields.next().ok_or(PacketError::Unterminated("mode"))?;
    let mode_text = String::from_utf8_lossy(mode_raw).to_ascii_lowercase();
    let mode = match mode_text.as_str() {
        "octet" => Mode::Octet,
        "netascii" => Mode::Netascii,
        _ => return Err(PacketError::Mode(mode_text)),
    };
    let mut options = Vec::new();
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        if name.is_empty() {
            break;
        }
        options.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Ok(Request {
        kind,
        filename,
        mode,
        options,
    })
}

/// NUL-terminated fields; a trailing unterminated field is not returned.
struct Fields<'a>(&'a [u8]);

impl<'a> Iterator for Fields<'a> {
    type Item = &'a [u8];
    fn next(&mut self) -> Option<&'a [u8]> {
        let end = self.0.iter().position(|&b| b == 0)?;
        let field = &self.0[..end];
        self.0 = &self.0[end + 1..];
        Some(field)
    }
}

/// Options a request asked for that we accept, after RFC range checks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Requested {
    pub blksize: Option<u16>,
    /// RFC 2349: present means "tell me the size" (the value in an RRQ is 0).
    pub tsize: bool,
    pub timeout: Option<u16>,
    pub windowsize: Option<u16>,
    /// Options dropped, with why (for the log): unknown, out of range, not a number,
    /// repeated.
    pub ignored: Vec<String>,
}

/// Sorts the options: valid ones are taken, the others ignored, which RFC 2347 allows
/// (an ignored option is simply left out of the OACK). Per RFC 2348 a blksize above
/// 65464 is granted as a smaller size, one below 8 is refused; timeout outside 1..=255
/// and windowsize 0 are refused (RFC 2349, 7440). A repeated option keeps its first
/// value, so one request cannot mean two things.
pub fn read_options(options: &[(String, String)]) -> Requested {
    let mut req = Requested::default();
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in options {
        if seen.contains(&name.as_str()) {
            req.ignored.push(format!("{name}: repeated"));
            continue;
        }
        seen.push(name);
        let number = value.trim().parse::<u64>();
        let refuse = |why: &str| format!("{name}={value:?}: {why}");
        match (name.as_str(), number) {
            ("blksize" | "tsize" | "timeout" | "windowsize", Err(_)) => {
                req.ignored.push(refuse("not a number"))
            }
            ("blksize", Ok(n)) if n < u64::from(*BLKSIZE_RANGE.start()) => {
                req.ignored.push(refuse("below 8"))
            }
            ("blksize", Ok(n)) => req.blksize = Some(n.min(u64::from(*BLKSIZE_RANGE.end())) as u16),
            ("tsize", Ok(_)) => req.tsize = true,
            ("timeout", Ok(n)) if (1..=255).contains(&n) => req.timeout = Some(n as u16),
            ("timeout", Ok(_)) => req.ignored.push(refuse("outside 1..=255")),
            ("windowsize", Ok(0)) => req.ignored.push(refuse("zero")),
            ("windowsize", Ok(n)) => req.windowsize = Some(n.min(u64::from(u16::MAX)) as u16),
            _ => req.ignored.push(format!("{name}: unknown")),
        }
    }
    req
}

/// Server limits applied to what a client asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// LAN MTU − 32 (IP and UDP headers and the TFTP header, with room to spare).
    pub max_blksize: u16,
    pub max_window: u16,
}

/// What a transfer runs with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    /// The client's timeout, when it set one.
    pub timeout: Option<Duration>,
    /// Options to acknowledge, in OACK order; empty = no OACK, data starts at once.
    pub oack: Vec<(&'static str, String)>,
}

/// Grants the accepted options within `limits`. `size` is the transfer size when known
/// (octet mode); tsize is left out of the OACK without it.
pub fn negotiate(req: &Requested, limits: Limits, size: Option<u64>) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE,
        windowsize: 1,
        timeout: None,
        oack: Vec::new(),
    };
    if let Some(b) = req.blksize {
        n.blksize = b.min(limits.max_blksize).max(*BLKSIZE_RANGE.start());
        n.oack.push(("blksize", n.blksize.to_string()));
    }
    if let (true, Some(size)) = (req.tsize, size) {
        n.oack.push(("tsize", size.to_string()));
    }
    if let Some(t) = req.timeout {
        // RFC 2349: the server echoes the timeout exactly or leaves it out.
        n.timeout = Some(Duration::from_secs(t.into()));
        n.oack.push(("timeout", t.to_string()));
    }
    if let Some(w) = req.windowsize {
        n.windowsize = w.min(limits.max_window).max(1);
        n.oack.push(("windowsize", n.windowsize.to_string()));
    }
    n
}

/// What a client sends during a transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Ack(u16),
    Error {
        code: u16,
        message: String,
    },
    /// Anything else (a repeated RRQ, garbage): ignored.
    Other,
}

/// Reads a packet a client sent to a transfer port.
pub fn parse_reply(packet: &[u8]) -> Reply {
    if packet.len() < 4 {
        return Reply::Other;
    }
    let word = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
    match word(0) {
        OP_ACK => Reply::Ack(word(2)),
        OP_ERROR => {
            let text = &packet[4..];
            let end = text.iter().position(|&b| b == 0).unwrap_or(text.len());
            Reply::Error {
                code: word(2),
                message: String::from_utf8_lossy(&text[..end]).into_owned(),
            }
        }
        _ => Reply::Other,
    }
}

/// A DATA packet header; the payload is appended by the caller.
pub fn data_header(block: u16, capacity: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + capacity);
    p.extend_from_slice(&OP_DATA.to_be_bytes());
    p.extend_from_slice(&block.to_be_bytes());
    p
}

/// An OACK.
pub fn oack(options: &[(&str, String)]) -> Vec<u8> {
    let mut p = OP_OACK.to_be_bytes().to_vec();
    for (name, value) in options {
        p.extend_from_slice(name.as_bytes());
        p.push(0);
        p.extend_from_slice(value.as_bytes());
        p.push(0);
    }
    p
}

/// An ERROR packet.
pub fn error(code: ErrorCode, message: &str) -> Vec<u8> {
    let mut p = OP_ERROR.to_be_bytes().to_vec();
    p.extend_from_slice(&(code as u16).to_be_bytes());
    p.extend_from_slice(message.as_bytes());
    p.push(0);
    p
}

/// Netascii conversion of one chunk: LF → CR LF, CR → CR NUL (RFC 764). Stateless
/// per byte, so file chunks convert independently.
pub fn to_netascii(chunk: &[u8], out: &mut Vec<u8>) {
    for &b in chunk {
        match b {
            b'\n' => out.extend_from_slice(b"\r\n"),
            b'\r' => out.extend_from_slice(b"\r\0"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rrq(name: &str, mode: &str, opts: &[(&str, &str)]) -> Vec<u8> {
        let mut p = OP_RRQ.to_be_bytes().to_vec();
        for f in [name, mode]
            .into_iter()
            .chain(opts.iter().flat_map(|(k, v)| [*k, *v]))
        {
            p.extend_from_slice(f.as_bytes());
            p.push(0);
        }
        p
    }

    fn opts(pairs: &[(&str, &str)]) -> Requested {
        let r = parse_request(&rrq("f", "octet", pairs)).unwrap();
        read_options(&r.options)
    }

    const LAN: Limits = Limits {
        max_blksize: 1468,
        max_window: MAX_WINDOW,
    };

    #[test]
    fn parses_edk2_request() {
        let p = rrq(
            "efi/shimx64.efi",
            "OCTET",
            &[("blksize", "1468"), ("WindowSize", "4")],
        );
        let r = parse_request(&p).unwrap();
        assert_eq!(r.kind, Kind::Read);
        assert_eq!(r.filename, b"efi/shimx64.efi");
        assert_eq!(r.mode, Mode::Octet);
        let n = negotiate(&read_options(&r.options), LAN, Some(10));
        assert_eq!((n.blksize, n.windowsize), (1468, 4));
        assert_eq!(
            oack(&n.oack),
            b"\0\x06blksize\x001468\0windowsize\x004\0".to_vec()
        );
    }

    #[test]
    fn rejects_malformed_requests() {
        assert_eq!(parse_request(b"\0\x01a"), Err(PacketError::Short(3)));
        assert_eq!(
            parse_request(b"\0\x03ab\0octet\0"),
            Err(PacketError::NotARequest(3))
        );
        assert_eq!(
            parse_request(b"\0\x01abc"),
            Err(PacketError::Unterminated("filename"))
        );
        assert_eq!(
            parse_request(b"\0\x01abc\0oct"),
            Err(PacketError::Unterminated("mode"))
        );
        assert_eq!(
            parse_request(&rrq("a", "mail", &[])),
            Err(PacketError::Mode("mail".into()))
        );
        // Trailing padding and a dangling option name are tolerated.
        for tail in [&b"\0\0\0"[..], b"blksize\0"] {
            let mut p = rrq("a", "netascii", &[("tsize", "0")]);
            p.extend_from_slice(tail);
            let r = parse_request(&p).unwrap();
            assert_eq!(r.mode, Mode::Netascii);
            assert_eq!(r.options, vec![("tsize".into(), "0".into())]);
        }
    }

    #[test]
    fn blksize_edges() {
        assert_eq!(opts(&[("blksize", "0")]).blksize, None);
        assert_eq!(opts(&[("blksize", "7")]).blksize, None);
        assert_eq!(opts(&[("blksize", "8")]).blksize, Some(8));
        assert_eq!(opts(&[("blksize", "65464")]).blksize, Some(65464));
        assert_eq!(opts(&[("blksize", "65465")]).blksize, Some(65464));
        assert_eq!(opts(&[("blksize", "99999999999999999999")]).blksize, None);
        assert_eq!(opts(&[("blksize", "abc")]).blksize, None);
        let n = negotiate(&opts(&[("blksize", "65465")]), LAN, None);
        assert_eq!(n.blksize, 1468, "clamped to the LAN MTU");
        let n = negotiate(&opts(&[("blksize", "0")]), LAN, None);
        assert_eq!((n.blksize, n.oack.len()), (512, 0), "refused: no OACK");
    }

    #[test]
    fn timeout_tsize_windowsize_and_duplicates() {
        assert_eq!(opts(&[("timeout", "0")]).timeout, None);
        assert_eq!(opts(&[("timeout", "256")]).timeout, None);
        assert_eq!(opts(&[("timeout", "255")]).timeout, Some(255));
        assert_eq!(opts(&[("windowsize", "0")]).windowsize, None);
        let r = opts(&[("blksize", "1024"), ("BLKSIZE", "8"), ("x-foo", "1")]);
        assert_eq!(r.blksize, Some(1024), "first value wins");
        assert_eq!(r.ignored.len(), 2, "{:?}", r.ignored);
        let n = negotiate(
            &opts(&[("tsize", "0"), ("timeout", "3"), ("windowsize", "1000")]),
            LAN,
            Some(1 << 20),
        );
        assert_eq!(n.timeout, Some(Duration::from_secs(3)));
        assert_eq!(n.windowsize, MAX_WINDOW);
        assert_eq!(
            n.oack,
            vec![
                ("tsize", "1048576".to_string()),
                ("timeout", "3".into()),
                ("windowsize", "64".into())
            ]
        );
        // Without a known size tsize is left out.
        assert!(
            negotiate(&opts(&[("tsize", "0")]), LAN, None)
                .oack
                .is_empty()
        );
    }

    #[test]
    fn replies_and_encodings() {
        assert_eq!(parse_reply(b"\0\x04\x01\x02"), Reply::Ack(0x0102));
        assert_eq!(
            parse_reply(b"\0\x05\0\x08no\0"),
            Reply::Error {
                code: 8,
                message: "no".into()
            }
        );
        assert_eq!(parse_reply(b"\0\x04\x01"), Reply::Other);
        assert_eq!(
            error(ErrorCode::FileNotFound, "x"),
            b"\0\x05\0\x01x\0".to_vec()
        );
        let mut out = Vec::new();
        to_netascii(b"a\nb\rc", &mut out);
        assert_eq!(out, b"a\r\nb\r\0c");
    }
}
