//! The handlers against decoded requests: every message type, both modes, the options firmware needs.

use dhcproto::v4::MessageType;

use super::{proxy::PXE_DISCOVERY_CONTROL, *};
use crate::{
    boot::{IPXE_ENCAP, IPXE_NO_PXEDHCP},
    dhcp::{
        leases::{LeaseState, Leases, Pool},
        wire,
    },
};

const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
const SERVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Through the config parser, so a new `[dhcp]` key needs nothing here.
fn dhcp() -> DhcpConfig {
    let raw = crate::config::RawConfig::from_toml(
        "lan_iface = \"lo\"\nlan_ip = \"198.18.0.1/24\"\n\
         [dhcp]\nrange = \"198.18.0.100-198.18.0.101\"\nlease_time = \"1h\"\n",
    )
    .unwrap();
    crate::config::Config::try_from(raw).unwrap().dhcp
}

fn table() -> Leases {
    Leases::new(vec![
        Pool::new("198.18.0.0/24".parse().unwrap(), dhcp().range, None),
        Pool::new(
            "198.19.1.0/24".parse().unwrap(),
            (
                "198.19.1.100".parse().unwrap(),
                "198.19.1.100".parse().unwrap(),
            ),
            Some("198.19.1.1".parse().unwrap()),
        ),
    ])
}

fn msg(options: &[(u8, &[u8])], ciaddr: [u8; 4], giaddr: [u8; 4]) -> Message {
    let mut buf = wire::tests::request(MAC, options);
    buf[12..16].copy_from_slice(&ciaddr);
    buf[24..28].copy_from_slice(&giaddr);
    wire::parse(&buf).unwrap()
}

/// `m` from its ciaddr at 1000, the test's client ([`MAC`]) answering ARP for every
/// address.
fn run(m: &Message, leases: &mut Leases, inv: &Inventory) -> Outcome {
    let src = SocketAddrV4::new(m.ciaddr(), CLIENT_PORT);
    run_seen(m, (src, &|_| Some(Mac(MAC))), 1000, leases, inv)
}

/// As [`run`], the datagram from `src` at `now`.
fn run_at(
    m: &Message,
    src: SocketAddrV4,
    now: u64,
    leases: &mut Leases,
    inv: &Inventory,
) -> Outcome {
    run_seen(m, (src, &|_| None), now, leases, inv)
}

/// As [`run_at`], with the neighbour table `neighbour`.
fn run_seen(
    m: &Message,
    (src, neighbour): (SocketAddrV4, &dyn Fn(Ipv4Addr) -> Option<Mac>),
    now: u64,
    leases: &mut Leases,
    inv: &Inventory,
) -> Outcome {
    let (d, b) = (dhcp(), BootConfig::default());
    let ctx = Ctx {
        dhcp: &d,
        boot: &b,
        inventory: inv,
        server: ServerAddr {
            ip: SERVER,
            http_port: 80,
        },
        now,
        neighbour,
        installed: &|_| false,
    };
    handle_direct(m, &ctx, src, leases)
}

fn ty(o: &Outcome) -> Option<MessageType> {
    o.reply.as_ref().and_then(|(m, _)| m.opts().msg_type())
}

#[test]
fn dora_with_pxe_boot_file_and_durable_ack() {
    let (mut l, inv) = (table(), Inventory::default());
    let d = msg(
        &[
            (53, &[1]),
            (93, &[0, 7]),
            (60, b"PXEClient:Arch:00007:UNDI:003000"),
        ],
        [0; 4],
        [0; 4],
    );
    let o = run(&d, &mut l, &inv);
    let (offer, dest) = o.reply.unwrap();
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    let ip = offer.yiaddr();
    assert_eq!(ip, Ipv4Addr::new(198, 18, 0, 100));
    assert_eq!(offer.fname(), Some(&b"ipxe.efi"[..]));
    assert_eq!(offer.siaddr(), SERVER);
    assert!(offer.opts().get(OptionCode::BootfileName).is_some());
    assert!(offer.opts().get(OptionCode::SubnetMask).is_some());
    assert!(
        offer.opts().get(OptionCode::Router).is_none(),
        "router only when configured"
    );
    assert_eq!(
        dest,
        Dest::Hardware { ip, mac: Mac(MAC) },
        "no broadcast bit: unicast to yiaddr at chaddr"
    );
    assert_eq!(o.persist, Persist::Nothing);

    let r = msg(
        &[(53, &[3]), (54, &SERVER.octets()), (50, &ip.octets())],
        [0; 4],
        [0; 4],
    );
    let o = run(&r, &mut l, &inv);
    assert_eq!(ty(&o), Some(MessageType::Ack));
    assert!(matches!(o.persist, Persist::BeforeReply(ref lease) if lease.ip == ip));
    assert_eq!(o.events, vec![ClientEvent::Leased { ip }]);
}

#[test]
fn naks_and_silences_where_rfc_2131_says() {
    let (mut l, inv) = (table(), Inventory::default());
    // Another server was chosen: silent.
    let r = msg(
        &[(53, &[3]), (54, &[198, 18, 0, 9]), (50, &[198, 18, 0, 100])],
        [0; 4],
        [0; 4],
    );
    assert_eq!(run(&r, &mut l, &inv).silent, Some(Silent::OtherServer));
    // INIT-REBOOT on the wrong subnet: NAK, broadcast.
    let r = msg(&[(53, &[3]), (50, &[10, 0, 0, 5])], [0; 4], [0; 4]);
    let o = run(&r, &mut l, &inv);
    assert_eq!(ty(&o), Some(MessageType::Nak));
    assert_eq!(o.reply.unwrap().1, Dest::Broadcast);
    // Address held by another client: NAK.
    l.commit(
        Ipv4Addr::new(198, 18, 0, 101),
        &ClientId(vec![9]),
        Mac([0; 6]),
        None,
        1000,
        3600,
    );
    let r = msg(&[(53, &[3])], [198, 18, 0, 101], [0; 4]);
    assert_eq!(ty(&run(&r, &mut l, &inv)), Some(MessageType::Nak));
    // RENEWING our own: ACK unicast to ciaddr.
    let r = msg(&[(53, &[3])], [198, 18, 0, 100], [0; 4]);
    let o = run(&r, &mut l, &inv);
    assert_eq!(ty(&o), Some(MessageType::Ack));
    assert_eq!(
        o.reply.unwrap().1,
        Dest::To(SocketAddrV4::new(
            Ipv4Addr::new(198, 18, 0, 100),
            CLIENT_PORT
        ))
    );
    // RELEASE from the address, naming us: no reply, written later.
    let r = msg(
        &[(53, &[7]), (54, &SERVER.octets())],
        [198, 18, 0, 100],
        [0; 4],
    );
    let o = run(&r, &mut l, &inv);
    assert!(o.reply.is_none());
    assert!(matches!(o.persist, Persist::Later(ref x) if x.state == LeaseState::Released));
}

#[test]
fn inform_and_decline() {
    let (mut l, inv) = (table(), Inventory::default());
    let i = msg(&[(53, &[8])], [198, 18, 0, 9], [0; 4]);
    let (ack, dest) = run(&i, &mut l, &inv).reply.unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert!(ack.yiaddr().is_unspecified());
    assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
    assert!(ack.opts().get(OptionCode::SubnetMask).is_some());
    assert_eq!(
        dest,
        Dest::To(SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 9), CLIENT_PORT))
    );
    // Lease .100, then decline it: no reply, probation, next DISCOVER gets .101.
    let r = msg(&[(53, &[3]), (50, &[198, 18, 0, 100])], [0; 4], [0; 4]);
    assert_eq!(ty(&run(&r, &mut l, &inv)), Some(MessageType::Ack));
    let d = msg(
        &[(53, &[4]), (54, &SERVER.octets()), (50, &[198, 18, 0, 100])],
        [0; 4],
        [0; 4],
    );
    let o = run(&d, &mut l, &inv);
    assert!(o.reply.is_none());
    assert!(matches!(o.persist, Persist::Later(ref x) if x.state == LeaseState::Declined));
    let d = msg(&[(53, &[1])], [0; 4], [0; 4]);
    let (offer, _) = run(&d, &mut l, &inv).reply.unwrap();
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(198, 18, 0, 101));
}

/// What a client on the LAN can forge in a RELEASE or DECLINE of another's lease (its
/// chaddr and client identifier, ciaddr, the requested address) ends nothing unless it
/// also comes from the leased address (RELEASE) or right after the ACK (DECLINE), names
/// this server, and the holder's identifiers all match.
#[test]
fn only_the_holder_releases_or_declines() {
    let (mut l, inv) = (table(), Inventory::default());
    let leased = [198, 18, 0, 100];
    let r = msg(&[(53, &[3]), (50, &leased)], [0; 4], [0; 4]);
    assert_eq!(ty(&run(&r, &mut l, &inv)), Some(MessageType::Ack));
    let live = |l: &Leases| l.live(Ipv4Addr::from(leased), 1001).is_some();
    let sid: &[u8] = &SERVER.octets();
    let from = |ip: [u8; 4]| SocketAddrV4::new(Ipv4Addr::from(ip), CLIENT_PORT);
    // RELEASE of the victim's address from another address, or without our server id.
    let release = msg(&[(53, &[7]), (54, sid)], leased, [0; 4]);
    for src in [[198, 18, 0, 66], [0; 4]] {
        let o = run_at(&release, from(src), 1001, &mut l, &inv);
        assert_eq!(o.silent, Some(Silent::NotHolder), "from {src:?}");
        assert_eq!(o.persist, Persist::Nothing);
    }
    // From the leased address, but another Ethernet address answers ARP for it: a
    // forged source address.
    let other = |_| Some(Mac([2, 0, 0, 0, 0, 0x66]));
    let o = run_seen(&release, (from(leased), &other), 1001, &mut l, &inv);
    assert_eq!(o.silent, Some(Silent::NotHolder));
    let no_sid = msg(&[(53, &[7])], leased, [0; 4]);
    let o = run_at(&no_sid, from(leased), 1001, &mut l, &inv);
    assert_eq!(o.silent, Some(Silent::NotHolder));
    // Another client identifier (option 61) with the holder's chaddr.
    let other_id = msg(&[(53, &[7]), (54, sid), (61, &[1, 2, 3])], leased, [0; 4]);
    let o = run_at(&other_id, from(leased), 1001, &mut l, &inv);
    assert_eq!(o.silent, Some(Silent::NotHolder));
    assert!(live(&l), "nothing forged ended the lease");
    // DECLINE long after the ACK: kept.
    let decline = msg(&[(53, &[4]), (54, sid), (50, &leased)], [0; 4], [0; 4]);
    let late = 1000 + crate::dhcp::leases::DECLINE_WINDOW_SECS + 1;
    let o = run_at(&decline, from([0; 4]), late, &mut l, &inv);
    assert_eq!(o.silent, Some(Silent::NotHolder));
    assert!(live(&l));
    // From the leased address with no neighbour entry for it: a forged source address.
    let o = run_at(&release, from(leased), 1001, &mut l, &inv);
    assert_eq!(o.silent, Some(Silent::NotHolder));
    // The holder's RELEASE, from its address, which it answers ARP for: ended, written.
    let holder = |_| Some(Mac(MAC));
    let o = run_seen(&release, (from(leased), &holder), 1002, &mut l, &inv);
    assert_eq!(o.silent, Some(Silent::Done));
    assert!(matches!(o.persist, Persist::Later(ref x) if x.state == LeaseState::Released));
    assert!(!live(&l));
}

#[test]
fn relayed_requests_use_the_relay_subnet_pool() {
    let (mut l, inv) = (table(), Inventory::default());
    let agent: &[u8] = &[1, 4, b'e', b't', b'h', b'0', 2, 2, 0xaa, 0xbb];
    let d = msg(&[(53, &[1]), (82, agent)], [0; 4], [198, 19, 1, 1]);
    let (offer, dest) = run(&d, &mut l, &inv).reply.unwrap();
    assert_eq!(
        offer.opts().get(OptionCode::RelayAgentInformation),
        d.opts().get(OptionCode::RelayAgentInformation),
        "option 82 echoed"
    );
    assert!(
        offer
            .opts()
            .get(OptionCode::RelayAgentInformation)
            .is_some()
    );
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(198, 19, 1, 100));
    assert_eq!(offer.giaddr(), Ipv4Addr::new(198, 19, 1, 1));
    assert!(matches!(
        offer.opts().get(OptionCode::Router),
        Some(DhcpOption::Router(r)) if r == &vec![Ipv4Addr::new(198, 19, 1, 1)]
    ));
    assert_eq!(
        dest,
        Dest::To(SocketAddrV4::new(Ipv4Addr::new(198, 19, 1, 1), SERVER_PORT))
    );
    let d = msg(&[(53, &[1])], [0; 4], [203, 0, 113, 1]);
    assert_eq!(run(&d, &mut l, &inv).silent, Some(Silent::NoPool));
}

/// A frame that names a relay on the LAN's own subnet (giaddr forged by a LAN client, or
/// a misconfigured relay) gets nothing from the LAN's pool: only relay pools serve a
/// non-zero giaddr, and the reply never goes to an address a client chose.
#[test]
fn a_relayed_frame_from_the_lan_subnet_gets_no_lan_address() {
    let (mut l, inv) = (table(), Inventory::default());
    for giaddr in [[198, 18, 0, 1], [198, 18, 0, 66]] {
        let d = msg(&[(53, &[1])], [0; 4], giaddr);
        let o = run(&d, &mut l, &inv);
        assert_eq!(
            o.silent,
            Some(Silent::NoPool),
            "giaddr {giaddr:?}: {:?}",
            o.reply
        );
        let r = msg(&[(53, &[3]), (50, &[198, 18, 0, 100])], [0; 4], giaddr);
        assert!(run(&r, &mut l, &inv).reply.is_none(), "giaddr {giaddr:?}");
    }
    assert_eq!(l.iter().count(), 0, "nothing offered or leased");
}

/// Option 61 is bound to the chaddr that sent it: a client that repeats another's
/// client identifier from its own chaddr is another client (no offer of, no ACK for,
/// no RELEASE of the first one's address).
#[test]
fn a_client_identifier_does_not_impersonate_another_chaddr() {
    let (mut l, inv) = (table(), Inventory::default());
    let cid: &[u8] = &[255, 0, 0, 0, 1, 0, 2, 0, 0, 0, 9];
    let victim = [(53u8, &[3u8][..]), (61, cid), (50, &[198, 18, 0, 100])];
    let ack = run(&msg(&victim, [0; 4], [0; 4]), &mut l, &inv);
    assert_eq!(ty(&ack), Some(MessageType::Ack));
    let from_other = |options: &[(u8, &[u8])], ciaddr: [u8; 4]| {
        let mut buf = wire::tests::request([2, 0, 0, 0, 0, 0x66], options);
        buf[12..16].copy_from_slice(&ciaddr);
        wire::parse(&buf).unwrap()
    };
    // REQUEST (INIT-REBOOT and RENEWING) of the victim's address with its identifier.
    let r = from_other(&[(53, &[3]), (61, cid), (50, &[198, 18, 0, 100])], [0; 4]);
    assert_eq!(ty(&run(&r, &mut l, &inv)), Some(MessageType::Nak));
    let r = from_other(&[(53, &[3]), (61, cid)], [198, 18, 0, 100]);
    assert_eq!(ty(&run(&r, &mut l, &inv)), Some(MessageType::Nak));
    // DISCOVER with it: another address.
    let d = from_other(&[(53, &[1]), (61, cid)], [0; 4]);
    let offer = run(&d, &mut l, &inv).reply.expect("an offer").0;
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(198, 18, 0, 101));
    // RELEASE in its name from the leased address: kept.
    let sid: &[u8] = &SERVER.octets();
    let r = from_other(&[(53, &[7]), (54, sid), (61, cid)], [198, 18, 0, 100]);
    assert_eq!(run(&r, &mut l, &inv).persist, Persist::Nothing);
    let held = l
        .live(Ipv4Addr::new(198, 18, 0, 100), 1001)
        .expect("still leased");
    assert_eq!(held.mac, Mac(MAC));
}

#[test]
fn fixed_host_and_ipxe_loop_breaker() {
    let mut l = table();
    let inv: Inventory = toml::from_str(
        "[[hosts]]\nmac = \"52:54:00:12:34:56\"\nhostname = \"spark-1\"\nip = \"198.18.0.50\"\n",
    )
    .unwrap();
    let d = msg(&[(53, &[1]), (77, b"iPXE"), (93, &[0, 0])], [0; 4], [0; 4]);
    let (offer, _) = run(&d, &mut l, &inv).reply.unwrap();
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(198, 18, 0, 50));
    assert_eq!(offer.fname(), Some(&b"http://198.18.0.1:80/boot.ipxe"[..]));
    assert!(matches!(
        offer.opts().get(OptionCode::Unknown(IPXE_ENCAP)),
        Some(DhcpOption::Unknown(u)) if u.data() == [IPXE_NO_PXEDHCP, 1, 1]
    ));
    assert!(matches!(
        offer.opts().get(OptionCode::Hostname),
        Some(DhcpOption::Hostname(h)) if h == "spark-1"
    ));
    // The fixed host asking for a pool address is refused.
    let r = msg(&[(53, &[3]), (50, &[198, 18, 0, 100])], [0; 4], [0; 4]);
    assert_eq!(ty(&run(&r, &mut l, &inv)), Some(MessageType::Nak));
}

#[test]
fn proxy_answers_pxe_clients_only_and_never_an_address() {
    let (d, b, inv) = (dhcp(), BootConfig::default(), Inventory::default());
    let ctx = Ctx {
        dhcp: &d,
        boot: &b,
        inventory: &inv,
        server: ServerAddr {
            ip: SERVER,
            http_port: 80,
        },
        now: 0,
        neighbour: &|_| None,
        installed: &|_| false,
    };
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
    let plain = msg(&[(53, &[1])], [0; 4], [0; 4]);
    assert_eq!(
        handle_proxy(&plain, &ctx, src, false).silent,
        Some(Silent::NotPxe)
    );
    let uuid = [[0u8].as_slice(), &[7; 16]].concat();
    let pxe = msg(
        &[
            (53, &[1]),
            (93, &[0, 7]),
            (60, b"PXEClient:Arch:00007:UNDI:003000"),
            (97, &uuid),
        ],
        [0; 4],
        [0; 4],
    );
    let (offer, _) = handle_proxy(&pxe, &ctx, src, false).reply.unwrap();
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(offer.fname(), Some(&b"ipxe.efi"[..]));
    assert!(matches!(
        offer.opts().get(OptionCode::VendorExtensions),
        Some(DhcpOption::VendorExtensions(v)) if v == &PXE_DISCOVERY_CONTROL
    ));
    assert!(
        offer
            .opts()
            .get(OptionCode::ClientMachineIdentifier)
            .is_some()
    );
    let req = msg(
        &[
            (53, &[3]),
            (93, &[0, 7]),
            (60, b"PXEClient:Arch:00007:UNDI:003000"),
        ],
        [198, 18, 0, 77],
        [0; 4],
    );
    let from = SocketAddrV4::new(Ipv4Addr::new(198, 18, 0, 77), CLIENT_PORT);
    let (ack, dest) = handle_proxy(&req, &ctx, from, true).reply.unwrap();
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(dest, Dest::To(from));
    assert_eq!(
        handle_proxy(&req, &ctx, from, false).silent,
        Some(Silent::NotForUs)
    );
}

#[test]
fn discover_failures_say_why_for_the_fleet_view() {
    use crate::clients::{ClientEvent, Stage};
    let failures = |o: &Outcome| -> Vec<(Stage, String)> {
        o.events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Failure { stage, reason, .. } => Some((*stage, reason.clone())),
                _ => None,
            })
            .collect()
    };
    let (mut l, inv) = (table(), Inventory::default());
    // An architecture no boot file exists for: an address, and the reason on record.
    let d = msg(&[(53, &[1]), (93, &[0x12, 0x34])], [0; 4], [0; 4]);
    let o = run(&d, &mut l, &inv);
    assert_eq!(ty(&o), Some(MessageType::Offer));
    assert_eq!(failures(&o), vec![(Stage::Dhcp, "no_boot_file".into())]);
    let ClientEvent::Failure { what, .. } = &o.events[1] else {
        panic!("{:?}", o.events)
    };
    assert!(
        what.contains("4660") && what.contains("no boot file"),
        "{what}"
    );
    // A plain DHCP client (no option 93) is not a failure.
    let plain = msg(&[(53, &[1])], [0; 4], [0; 4]);
    assert_eq!(failures(&run(&plain, &mut l, &inv)), vec![]);
    // Both addresses held by others: silent, and the reason on record.
    for (i, last) in [(1u8, 100u8), (2, 101)] {
        l.commit(
            Ipv4Addr::new(198, 18, 0, last),
            &ClientId(vec![i]),
            Mac([2, 0, 0, 0, 0, i]),
            None,
            1000,
            3600,
        );
    }
    let o = run(&d, &mut l, &inv);
    assert_eq!(o.silent, Some(Silent::PoolExhausted));
    assert_eq!(o.events[0], ClientEvent::Discover { arch: Some(0x1234) });
    assert_eq!(
        failures(&o),
        vec![
            (Stage::Dhcp, "no_boot_file".into()),
            (Stage::Dhcp, "pool_exhausted".into())
        ]
    );
}

/// `[boot] installed = "no_boot_file"`: an installed host's firmware gets
/// its address and no boot file (direct) or no proxy offer at all (proxy), with
/// `local_boot` on record; `loader` and a host not installed still get the boot file.
#[test]
fn installed_hosts_get_no_boot_file_when_configured() {
    use crate::{clients::ClientEvent, config::InstalledBoot};
    let d = dhcp();
    let inv = Inventory::default();
    let pxe = msg(
        &[
            (53, &[1]),
            (93, &[0, 7]),
            (60, b"PXEClient:Arch:00007:UNDI:003000"),
        ],
        [0; 4],
        [0; 4],
    );
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
    let asked = std::cell::Cell::new(0);
    let installed_mac = |mac: Mac| {
        asked.set(asked.get() + 1);
        mac == Mac(MAC)
    };
    let direct = |b: &BootConfig, installed: &dyn Fn(Mac) -> bool| {
        let ctx = Ctx {
            dhcp: &d,
            boot: b,
            inventory: &inv,
            server: ServerAddr {
                ip: SERVER,
                http_port: 80,
            },
            now: 1000,
            neighbour: &|_| None,
            installed,
        };
        (
            handle_direct(&pxe, &ctx, src, &mut table()),
            handle_proxy(&pxe, &ctx, src, false),
        )
    };
    // `loader`: the boot loader is served (its script sends the host on), and the life
    // cycle is not even asked.
    assert_eq!(BootConfig::default().installed, InstalledBoot::NotFound);
    let loader = BootConfig {
        installed: InstalledBoot::Loader,
        ..BootConfig::default()
    };
    let (o, p) = direct(&loader, &installed_mac);
    assert_eq!(o.reply.unwrap().0.fname(), Some(&b"ipxe.efi"[..]));
    assert!(p.reply.is_some());
    assert_eq!(asked.get(), 0);

    let withhold = BootConfig {
        installed: InstalledBoot::NoBootFile,
        ..BootConfig::default()
    };
    let (o, p) = direct(&withhold, &installed_mac);
    let (offer, _) = o.reply.unwrap();
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(offer.yiaddr(), Ipv4Addr::new(198, 18, 0, 100));
    assert_eq!(offer.fname(), None);
    assert!(offer.opts().get(OptionCode::BootfileName).is_none());
    assert_eq!(offer.siaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(
        o.events,
        vec![
            ClientEvent::Discover { arch: Some(7) },
            ClientEvent::LocalBoot {
                path: "dhcp: no boot file".into()
            }
        ],
        "local boot, not a no_boot_file failure"
    );
    assert_eq!(p.silent, Some(Silent::LocalBoot));
    assert!(p.reply.is_none());
    assert!(matches!(p.events[1], ClientEvent::LocalBoot { .. }));

    // A host that is not installed gets its boot file with the setting on.
    let (o, p) = direct(&withhold, &|_| false);
    assert_eq!(o.reply.unwrap().0.fname(), Some(&b"ipxe.efi"[..]));
    assert!(p.reply.is_some());

    // `not_found`: a boot file that TFTP answers "not found", from the same server, so
    // the firmware fails this boot option at once instead of waiting for a better offer.
    let not_found = BootConfig {
        installed: InstalledBoot::NotFound,
        ..BootConfig::default()
    };
    let (o, p) = direct(&not_found, &installed_mac);
    let (offer, _) = o.reply.unwrap();
    assert_eq!(offer.fname(), Some(crate::boot::LOCAL_BOOT_FILE.as_bytes()));
    assert_eq!(offer.siaddr(), SERVER);
    assert_eq!(
        o.events[1],
        ClientEvent::LocalBoot {
            path: "dhcp: gb10-local-boot (not found)".into()
        }
    );
    let (proxy_offer, _) = p.reply.expect("a proxy offer naming the missing file");
    assert_eq!(
        proxy_offer.fname(),
        Some(crate::boot::LOCAL_BOOT_FILE.as_bytes())
    );
    assert!(matches!(p.events[1], ClientEvent::LocalBoot { .. }));
    let (o, _) = direct(&not_found, &|_| false);
    assert_eq!(o.reply.unwrap().0.fname(), Some(&b"ipxe.efi"[..]));
}

/// `not_found` keeps a URL's scheme, host and port and replaces its path (UEFI HTTP
/// boot, iPXE scripts); a TFTP name becomes the bare file name.
#[test]
fn not_found_keeps_the_server_of_a_url() {
    use crate::{
        boot::{BootDecision, LOCAL_BOOT_FILE, ToDisk, send_to_disk},
        config::InstalledBoot,
    };
    let b = BootConfig {
        installed: InstalledBoot::NotFound,
        ..BootConfig::default()
    };
    for (file, want) in [
        (
            "http://198.18.0.1:8080/shimx64.efi",
            "http://198.18.0.1:8080/gb10-local-boot",
        ),
        (
            "http://198.18.0.1/boot.ipxe?mac=x",
            "http://198.18.0.1/gb10-local-boot",
        ),
        ("https://a.example", "https://a.example/gb10-local-boot"),
        ("grub/shimx64.efi", LOCAL_BOOT_FILE),
    ] {
        let mut d = BootDecision {
            action: crate::boot::Action::Serve,
            firmware: None,
            boot_file: Some(file.into()),
            next_server: None,
            vendor_class: None,
            ipxe_no_proxy_wait: false,
            hostname: None,
            profile: None,
            uuid: None,
            why: Vec::new(),
        };
        assert_eq!(send_to_disk(&mut d, &b, || true), Some(ToDisk::NotFound));
        assert_eq!(d.boot_file.as_deref(), Some(want), "{file}");
    }
    assert!(crate::boot::is_local_boot_file("/gb10-local-boot"));
    assert!(crate::boot::is_local_boot_file("gb10-local-boot"));
    assert!(!crate::boot::is_local_boot_file("/x/gb10-local-boot"));
}

/// A port rotating made-up MACs keeps the pool on offer, so a newcomer's offer is taken
/// for the next DISCOVER; a client that answers its offer later than the flood churns
/// through the pool (a loaded machine, slow firmware) must still get its address, and
/// the REQUEST that comes first wins it.
#[test]
fn a_taken_back_offer_is_still_the_clients_to_request() {
    let (mut l, inv) = (table(), Inventory::default());
    let from = |mac: [u8; 6], options: &[(u8, &[u8])]| {
        wire::parse(&wire::tests::request(mac, options)).unwrap()
    };
    let src = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, CLIENT_PORT);
    let newcomer = [2, 0, 0, 0xee, 0, 1];
    let o = run_at(&from(newcomer, &[(53, &[1])]), src, 1000, &mut l, &inv);
    let ip = o.reply.unwrap().0.yiaddr();
    // The flood: more made-up MACs than the pool has addresses, each taking the oldest
    // offer once the pool is exhausted.
    let mut flood_got = Vec::new();
    for n in 0..5u8 {
        let o = run_at(
            &from([2, 0, 0, 0xdd, 0, n], &[(53, &[1])]),
            src,
            1001 + u64::from(n),
            &mut l,
            &inv,
        );
        flood_got.push(o.reply.unwrap().0.yiaddr());
    }
    assert!(
        flood_got.contains(&ip),
        "the flood took the newcomer's offer"
    );
    let request = |mac, ip: Ipv4Addr| {
        from(
            mac,
            &[(53, &[3]), (54, &SERVER.octets()), (50, &ip.octets())],
        )
    };
    let o = run_at(&request(newcomer, ip), src, 1010, &mut l, &inv);
    assert_eq!(
        ty(&o),
        Some(MessageType::Ack),
        "the newcomer's late REQUEST"
    );
    // The flood MAC now on offer for it lost the race.
    let n = flood_got.iter().rposition(|x| *x == ip).unwrap() as u8;
    let o = run_at(&request([2, 0, 0, 0xdd, 0, n], ip), src, 1011, &mut l, &inv);
    assert_eq!(ty(&o), Some(MessageType::Nak));
    // Only the offer that was taken from a client: another address is not its to claim.
    let other = flood_got.iter().copied().find(|x| *x != ip).unwrap();
    let stranger = [2, 0, 0, 0xee, 0, 2];
    let o = run_at(&request(stranger, other), src, 1012, &mut l, &inv);
    assert_eq!(
        ty(&o),
        Some(MessageType::Nak),
        "a stranger's REQUEST for another's offer"
    );
}
