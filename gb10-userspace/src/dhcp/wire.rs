//! Strict reading of DHCP requests off the wire: every length checked, then only the
//! options the responder uses are handed to dhcproto, rebuilt in canonical form.
//!
//! Why not decode with dhcproto directly: it accepts a missing END and a wrong magic
//! cookie, keeps the last of two option 53s, and trusts fixed option lengths (an option
//! 53 of length 3 shifts every following option; some lengths are `debug_assert`s).
//! Network input gets a strict walk first and a counter per reason when it fails.
use dhcproto::{Decodable as _, Decoder, v4::Message};

/// BOOTP header size (RFC 951/2131): op through file.
pub const BOOTP_HEADER: usize = 236;
/// The DHCP magic cookie (RFC 2131 §3).
pub const MAGIC: [u8; 4] = [99, 130, 83, 99];
/// Longest client identifier accepted (Kea's limit; RFC 2132 sets none).
pub const MAX_CLIENT_ID: usize = 128;
/// iPXE's encapsulated options.
const IPXE_ENCAP: u8 = crate::boot::IPXE_ENCAP;

/// Why a datagram was dropped. `label()` names the metric series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("shorter than the BOOTP header and cookie ({0} bytes)")]
    TooShort(usize),
    #[error("not a BOOTREQUEST (op {0})")]
    NotRequest(u8),
    #[error("hardware address length {0} > 16")]
    Hlen(u8),
    #[error("bad magic cookie")]
    Cookie,
    #[error("option {0} runs past the end of the packet")]
    Overrun(u8),
    #[error("no END option")]
    NoEnd,
    #[error("option 53 appears more than once")]
    DuplicateType,
    #[error("no option 53 (message type)")]
    NoType,
    #[error("option {code} has length {len}")]
    BadLength { code: u8, len: usize },
    #[error("client identifier longer than {MAX_CLIENT_ID} bytes ({0})")]
    ClientIdTooLong(usize),
    #[error("dhcproto could not decode the canonical form")]
    Decode,
}

impl Malformed {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::TooShort(_) => "too_short",
            Self::NotRequest(_) => "not_request",
            Self::Hlen(_) => "hlen",
            Self::Cookie => "bad_cookie",
            Self::Overrun(_) => "option_overrun",
            Self::NoEnd => "no_end",
            Self::DuplicateType => "duplicate_message_type",
            Self::NoType => "no_message_type",
            Self::BadLength { .. } => "bad_option_length",
            Self::ClientIdTooLong(_) => "client_id_too_long",
            Self::Decode => "decode",
        }
    }

    /// Every label, for rendering zero series.
    pub const LABELS: [&'static str; 11] = [
        "too_short",
        "not_request",
        "hlen",
        "bad_cookie",
        "option_overrun",
        "no_end",
        "duplicate_message_type",
        "no_message_type",
        "bad_option_length",
        "client_id_too_long",
        "decode",
    ];
}

/// The options a request may carry that the responder reads, and how long each must be:
/// `(code, min, max, multiple_of)`. Everything else is skipped.
const KEPT: &[(u8, usize, usize, usize)] = &[
    (12, 1, 255, 1),           // host name
    (50, 4, 4, 4),             // requested IP
    (51, 4, 4, 4),             // lease time
    (53, 1, 1, 1),             // message type
    (54, 4, 4, 4),             // server identifier
    (55, 1, 255, 1),           // parameter request list
    (57, 2, 2, 2),             // max message size
    (60, 1, 255, 1),           // vendor class
    (61, 2, MAX_CLIENT_ID, 1), // client identifier
    (77, 1, 255, 1),           // user class
    (93, 2, 255, 2),           // client architecture(s)
    (94, 3, 3, 3),             // client network interface id
    (97, 1, 255, 1),           // client machine id
    (175, 0, 255, 1),          // iPXE encapsulated options
    (82, 2, 255, 1),           // relay agent information (echoed; kept last)
];

/// Checks `buf` strictly and decodes its canonical form.
pub fn parse(buf: &[u8]) -> Result<Message, Malformed> {
    let canon = canonical(buf)?;
    Message::decode(&mut Decoder::new(&canon)).map_err(|_| Malformed::Decode)
}

/// The header and cookie as received, then the kept options (RFC 3396 split options
/// joined, clamped to 255 bytes, option 93 cut to its first entry), then END.
pub fn canonical(buf: &[u8]) -> Result<Vec<u8>, Malformed> {
    if buf.len() < BOOTP_HEADER + MAGIC.len() {
        return Err(Malformed::TooShort(buf.len()));
    }
    if buf[0] != 1 {
        return Err(Malformed::NotRequest(buf[0]));
    }
    if buf[2] > 16 {
        return Err(Malformed::Hlen(buf[2]));
    }
    if buf[BOOTP_HEADER..BOOTP_HEADER + 4] != MAGIC {
        return Err(Malformed::Cookie);
    }
    // Values per kept code, concatenated in arrival order (RFC 3396).
    let mut values: Vec<(u8, Vec<u8>)> = Vec::new();
    let mut seen_type = false;
    let mut i = BOOTP_HEADER + 4;
    let mut ended = false;
    while i < buf.len() {
        let code = buf[i];
        match code {
            0 => {
                i += 1;
                continue;
            }
            255 => {
                ended = true;
                break;
            }
            _ => {}
        }
        let len = usize::from(*buf.get(i + 1).ok_or(Malformed::Overrun(code))?);
        let value = buf
            .get(i + 2..i + 2 + len)
            .ok_or(Malformed::Overrun(code))?;
        i += 2 + len;
        if code == 53 {
            if seen_type {
                return Err(Malformed::DuplicateType);
            }
            seen_type = true;
        }
        if !KEPT.iter().any(|k| k.0 == code) {
            continue;
        }
        match values.iter_mut().find(|(c, _)| *c == code) {
            Some((_, v)) => v.extend_from_slice(value),
            None => values.push((code, value.to_vec())),
        }
    }
    if !ended {
        return Err(Malformed::NoEnd);
    }
    if !seen_type {
        return Err(Malformed::NoType);
    }
    let mut out = Vec::with_capacity(BOOTP_HEADER + 4 + 64);
    out.extend_from_slice(&buf[..BOOTP_HEADER + 4]);
    // Option 82 last (RFC 3046 §2.1), so nothing after it is lost if it fails to decode.
    values.sort_by_key(|(code, _)| *code == 82);
    for (code, mut value) in values {
        let &(_, min, max, multiple) = KEPT.iter().find(|k| k.0 == code).expect("kept");
        if code == 61 && value.len() > MAX_CLIENT_ID {
            return Err(Malformed::ClientIdTooLong(value.len()));
        }
        if code == 93 && value.len() >= 2 {
            // dhcproto reads one architecture; the first is the preferred one.
            value.truncate(2);
        }
        if max == 255 {
            // Joined split options (RFC 3396) longer than one option: keep what fits.
            value.truncate(255);
        }
        if value.len() < min || value.len() > max || value.len() % multiple != 0 {
            return Err(Malformed::BadLength {
                code,
                len: value.len(),
            });
        }
        // Strings dhcproto decodes as UTF-8: a bad one would end option parsing early.
        if code == 12 && std::str::from_utf8(&value).is_err() {
            continue;
        }
        // Option 82 is echoed as dhcproto re-encodes it: one it cannot reproduce
        // exactly would come back altered, so it is left out.
        if code == 82 && !relay_info_round_trips(&value) {
            continue;
        }
        // dhcproto writes an option of unknown code in 255-byte chunks, so an empty one
        // is never written: an empty 175 (iPXE saying only "I am iPXE") would vanish
        // from any message re-encoded from this one. It becomes 175 holding one PAD
        // sub-option, which encodes; what the boot decision reads of 175 (whether it is
        // there) is the same either way.
        if code == IPXE_ENCAP && value.is_empty() {
            value.push(0);
        }
        out.push(code);
        out.push(value.len() as u8);
        out.extend_from_slice(&value);
    }
    out.push(255);
    Ok(out)
}

fn relay_info_round_trips(value: &[u8]) -> bool {
    use dhcproto::{Encodable as _, Encoder, v4::relay::RelayAgentInformation};
    let Ok(info) = RelayAgentInformation::decode(&mut Decoder::new(value)) else {
        return false;
    };
    let mut again = Vec::with_capacity(value.len());
    info.encode(&mut Encoder::new(&mut again)).is_ok() && again == value
}

#[cfg(test)]
pub(crate) mod tests {
    use dhcproto::v4::{DhcpOption, MessageType, OptionCode};

    use super::*;

    /// A request with the given options (code, value) after the cookie, then END.
    pub(crate) fn request(chaddr: [u8; 6], options: &[(u8, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; BOOTP_HEADER];
        b[0] = 1;
        b[1] = 1;
        b[2] = 6;
        b[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        b[28..34].copy_from_slice(&chaddr);
        b.extend_from_slice(&MAGIC);
        for (code, value) in options {
            b.push(*code);
            b.push(value.len() as u8);
            b.extend_from_slice(value);
        }
        b.push(255);
        b
    }

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    /// The fuzzer's first find (issue 16): an empty option 175 vanished when the
    /// message was re-encoded. It now survives the round trip, and the boot decision
    /// still sees an iPXE client.
    #[test]
    fn empty_option_175_survives_a_round_trip() {
        use dhcproto::{Encodable as _, Encoder};
        let buf = request(MAC, &[(53, &[1]), (175, &[])]);
        let msg = parse(&buf).unwrap();
        assert!(msg.opts().get(OptionCode::Unknown(IPXE_ENCAP)).is_some());
        assert!(crate::boot::BootRequest::from_message(&msg).ipxe_options);
        let mut bytes = Vec::new();
        msg.encode(&mut Encoder::new(&mut bytes)).unwrap();
        assert_eq!(parse(&bytes).unwrap(), msg);
        let corpus = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/dhcp_message/ipxe_empty_175");
        assert_eq!(std::fs::read(corpus).unwrap(), buf, "the corpus entry");
    }

    #[test]
    fn good_request_decodes_with_pxe_options() {
        let buf = request(
            MAC,
            &[
                (53, &[1]),
                (93, &[0, 7, 0, 11]),
                (60, b"PXEClient:Arch:00007:UNDI:003000"),
                (43, &[1, 2, 3]),
                (175, &[1, 1, 1]),
                (94, &[1, 3, 0]),
            ],
        );
        let msg = parse(&buf).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Discover));
        assert!(matches!(
            msg.opts().get(OptionCode::ClientSystemArchitecture),
            Some(DhcpOption::ClientSystemArchitecture(a)) if u16::from(*a) == 7
        ));
        assert!(msg.opts().get(OptionCode::Unknown(175)).is_some());
        assert!(msg.opts().get(OptionCode::VendorExtensions).is_none());
    }

    /// The malformed kinds the issue lists, each with its reason.
    pub(crate) fn malformed_cases() -> Vec<(Vec<u8>, Malformed)> {
        let good = request(MAC, &[(53, &[1])]);
        let mut short = good.clone();
        short.truncate(235);
        let mut cookie = good.clone();
        cookie[BOOTP_HEADER] = 0;
        let mut overrun = request(MAC, &[(53, &[1])]);
        overrun.pop();
        overrun.extend_from_slice(&[60, 200, b'P']);
        let mut no_end = good.clone();
        no_end.pop();
        let mut hlen = good.clone();
        hlen[2] = 17;
        let two_types = request(MAC, &[(53, &[1]), (53, &[3])]);
        let long_id = request(MAC, &[(53, &[1]), (61, &[1; 200])]);
        let split_long_id = request(MAC, &[(53, &[1]), (61, &[1; 100]), (61, &[1; 100])]);
        let bad_len = request(MAC, &[(53, &[1, 2, 3])]);
        vec![
            (short, Malformed::TooShort(235)),
            (cookie, Malformed::Cookie),
            (overrun, Malformed::Overrun(60)),
            (no_end, Malformed::NoEnd),
            (hlen, Malformed::Hlen(17)),
            (two_types, Malformed::DuplicateType),
            (long_id, Malformed::ClientIdTooLong(200)),
            (split_long_id, Malformed::ClientIdTooLong(200)),
            (bad_len, Malformed::BadLength { code: 53, len: 3 }),
        ]
    }

    #[test]
    fn every_malformed_kind_is_named() {
        for (buf, want) in malformed_cases() {
            assert_eq!(parse(&buf).unwrap_err(), want);
            assert!(Malformed::LABELS.contains(&want.label()));
        }
    }

    #[test]
    fn bad_hostname_is_dropped_not_fatal() {
        let buf = request(
            MAC,
            &[(12, &[0xff, 0xfe]), (53, &[3]), (50, &[198, 18, 0, 5])],
        );
        let msg = parse(&buf).unwrap();
        assert_eq!(msg.opts().msg_type(), Some(MessageType::Request));
        assert!(msg.opts().get(OptionCode::RequestedIpAddress).is_some());
    }
}
