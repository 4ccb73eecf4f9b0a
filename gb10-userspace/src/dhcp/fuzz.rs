//! One entry for the fuzz target and its corpus replay: a datagram through the strict
//! parser, a decode/encode round trip, both handlers, and the replies' encoding.
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::{Decodable as _, Decoder, Encodable as _, Encoder, v4::Message};

use super::{
    handler::{self, Ctx},
    leases::{Leases, Pool},
    wire,
};
use crate::{
    boot::ServerAddr,
    config::{BootConfig, Config, RawConfig},
    inventory::Inventory,
};

/// The configuration the fuzzed handlers run with (parsed once, as a file would be).
fn config() -> &'static Config {
    static CONFIG: std::sync::OnceLock<Config> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let raw = RawConfig::from_toml(
            "lan_iface = \"lo\"\nlan_ip = \"198.18.0.1/24\"\n[dhcp]\n\
             range = \"198.18.0.100-198.18.0.103\"\nlease_time = \"1h\"\n\
             router = \"198.18.0.1\"\ndns = [\"198.18.0.1\"]\ndomain = \"lab\"\n",
        )
        .expect("the fuzz configuration parses");
        Config::try_from(raw).expect("the fuzz configuration is valid")
    })
}

/// Runs `data` through everything a datagram from the network reaches. Panics on a
/// broken invariant: a message that parses must survive encode → parse unchanged, and
/// every reply must encode and decode again.
pub fn exercise(data: &[u8]) {
    let Ok(msg) = wire::parse(data) else { return };
    let mut bytes = Vec::new();
    msg.encode(&mut Encoder::new(&mut bytes))
        .expect("a parsed request encodes");
    let again = wire::parse(&bytes).expect("an encoded request parses");
    assert_eq!(again, msg, "decode → encode → decode changed the message");

    let dhcp = &config().dhcp;
    let boot = BootConfig::default();
    let inventory = Inventory::default();
    let ctx = Ctx {
        dhcp,
        boot: &boot,
        inventory: &inventory,
        server: ServerAddr {
            ip: Ipv4Addr::new(198, 18, 0, 1),
            http_port: 80,
        },
        now: 1_000_000,
        neighbour: &|_| None,
        installed: &|_| false,
    };
    let mut leases = Leases::new(vec![Pool::new(
        "198.18.0.0/24".parse().expect("subnet"),
        dhcp.range,
        dhcp.router,
    )]);
    let src = SocketAddrV4::new(msg.ciaddr(), handler::CLIENT_PORT);
    let outcomes = [
        handler::handle_direct(&msg, &ctx, src, &mut leases),
        handler::handle_direct(&msg, &ctx, src, &mut leases),
        handler::handle_proxy(&msg, &ctx, src, false),
        handler::handle_proxy(&msg, &ctx, src, true),
    ];
    for outcome in outcomes {
        if let Some((reply, _)) = outcome.reply {
            let mut out = Vec::new();
            reply
                .encode(&mut Encoder::new(&mut out))
                .expect("a reply encodes");
            let decoded = Message::decode(&mut Decoder::new(&out)).expect("a reply decodes");
            assert_eq!(decoded.opts().msg_type(), reply.opts().msg_type());
        }
    }
}

#[cfg(test)]
mod tests {
    /// Replays `fuzz/corpus/dhcp_message/*` (what the fuzzer found interesting, plus the
    /// seeds) through [`super::exercise`] in the normal test run.
    #[test]
    fn corpus_replays() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dhcp_message");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).expect("fuzz corpus directory") {
            let path = entry.expect("corpus entry").path();
            let data = std::fs::read(&path).expect("corpus file");
            let result = std::panic::catch_unwind(|| super::exercise(&data));
            assert!(result.is_ok(), "corpus file {} panicked", path.display());
            n += 1;
        }
        assert!(n >= 10, "corpus has only {n} files");
    }

    /// A bounded, deterministic stand-in for the fuzzer where cargo-fuzz is missing:
    /// byte flips, truncations and option-length lies on every corpus file.
    #[test]
    fn mutated_corpus_does_not_panic() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/dhcp_message");
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for entry in std::fs::read_dir(&dir).expect("fuzz corpus directory") {
            let base = std::fs::read(entry.expect("entry").path()).expect("corpus file");
            for _ in 0..500 {
                let mut data = base.clone();
                for _ in 0..(next() % 4 + 1) {
                    if data.is_empty() {
                        break;
                    }
                    let at = (next() as usize) % data.len();
                    match next() % 3 {
                        0 => data[at] = next() as u8,
                        1 => data.truncate(at.max(1)),
                        _ => data.insert(at, next() as u8),
                    }
                }
                super::exercise(&data);
            }
        }
    }
}
