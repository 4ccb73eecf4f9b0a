//! The eBPF programs: the LAN XDP program (counters, DHCP identity, rate limits,
//! malformed drops, foreign DHCP servers) and the guard on other interfaces. Loads the embedded object,
//! attaches, configures and reads the maps. Dropping [`LanXdp`] detaches everything (the
//! bpf_links close with their fds).
use std::{collections::BTreeMap, sync::Mutex};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode, tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use gb10_common::{
    ALLOWANCE_MAP, CLIENTS_MAP, ClientCounters, GLOBAL_MAP, GLOBALS, GUARD_CONFIG_MAP,
    GUARD_COUNTERS_MAP, GUARD_ENFORCE, GUARD_IN_PROGRAM, GUARD_MONITOR, GUARD_OFF,
    GUARD_OUT_PROGRAM, Global, GuardConfig as WireGuard, GuardCounters, LAN_PROGRAM, MacKey, Rate,
    SERVERS_MAP, ServerKey, ServerSeen, TFTP_PORTS_MAP,
};

use crate::config::{GuardConfig, GuardMode};

/// The eBPF object gb10-userspace/build.rs built from gb10-ebpf for this binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gb10-ebpf"));

/// Why an eBPF program is not running.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error("this binary was built without its eBPF programs (AYA_BUILD_SKIP)")]
    NotBuilt,
    #[error(
        "loading the eBPF object failed (needs CAP_BPF and CAP_NET_ADMIN, or root, and a kernel with BTF)"
    )]
    Load(#[source] Box<aya::EbpfError>),
    #[error("the eBPF object has no {what} `{name}`")]
    Missing {
        what: &'static str,
        name: &'static str,
    },
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error(
        "loading eBPF program `{name}` into the kernel failed (needs CAP_BPF, or root; the verifier log follows)"
    )]
    Verify {
        name: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error(
        "attaching `{name}` to {iface} failed (needs CAP_NET_ADMIN and an interface that exists)"
    )]
    Attach {
        name: &'static str,
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// The guard's two links on one interface.
struct GuardLinks {
    ifindex: u32,
    xdp: XdpLinkId,
    tc: SchedClassifierLinkId,
}

/// The LAN program's link and the index of the interface it is on.
struct LanLink {
    ifindex: u32,
    link: XdpLinkId,
}

/// What [`LanXdp::follow_lan`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LanChange {
    /// Nothing: the program is on the interface, or the interface is still gone.
    Same,
    /// The interface is gone and the program with it.
    Gone,
    /// The program is attached again, to the interface recreated under the LAN's name.
    Attached,
}

/// The LAN program attached, the guard programs loaded, handles on the maps.
pub struct LanXdp {
    iface: String,
    guard_mode: GuardMode,
    /// `None` while the LAN interface is gone (the kernel detaches XDP with it).
    lan: Mutex<Option<LanLink>>,
    clients: PerCpuHashMap<MapData, MacKey, ClientCounters>,
    globals: PerCpuArray<MapData, u64>,
    servers: HashMap<MapData, ServerKey, ServerSeen>,
    guard_counters: PerCpuHashMap<MapData, u32, GuardCounters>,
    tftp_ports: Mutex<HashMap<MapData, u16, u8>>,
    allowance: Mutex<HashMap<MapData, MacKey, Rate>>,
    guarded: Mutex<BTreeMap<String, GuardLinks>>,
    // Declared last so it drops last: it owns the programs and their links.
    ebpf: Mutex<Ebpf>,
}

/// Counters read from the programs at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per client, summed over CPUs.
    pub clients: Vec<(MacKey, ClientCounters)>,
    /// Indexed by [`Global`].
    pub globals: [u64; GLOBALS as usize],
    /// Foreign DHCP servers seen on the LAN.
    pub servers: Vec<(ServerKey, ServerSeen)>,
    /// Guard counters by interface name (summed over CPUs), with whether the guard is
    /// attached there now.
    pub guard: Vec<(String, GuardCounters, bool)>,
    pub guard_mode: GuardMode,
    /// Whether the LAN program is on the LAN interface (not while the interface is gone).
    pub lan_attached: bool,
}

impl LanXdp {
    /// Loads the object, attaches the LAN program to `iface` (the kernel picks driver or
    /// generic mode), writes the guard settings and loads the guard programs.
    pub fn attach(iface: &str, guard: &GuardConfig) -> Result<Self, XdpError> {
        if EBPF_OBJECT.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        // One parse of the kernel's BTF (/sys/kernel/btf/vmlinux, 5 MiB here), by the
        // loader itself: `Ebpf::load` parses it a second time while the loader's copy is
        // alive, which doubled the daemon's peak memory at start (about 35 MiB).
        let mut ebpf = EbpfLoader::new()
            .load(EBPF_OBJECT)
            .map_err(|e| XdpError::Load(Box::new(e)))?;
        let lan: &mut Xdp = program(&mut ebpf, LAN_PROGRAM)?;
        lan.load().map_err(verify(LAN_PROGRAM))?;
        let link = lan
            .attach(iface, XdpMode::default())
            .map_err(lan_attach_err(iface))?;
        let lan = ifindex(iface).map(|ifindex| LanLink { ifindex, link });
        if guard.mode != GuardMode::Off {
            let guard_in: &mut Xdp = program(&mut ebpf, GUARD_IN_PROGRAM)?;
            guard_in.load().map_err(verify(GUARD_IN_PROGRAM))?;
            let guard_out: &mut SchedClassifier = program(&mut ebpf, GUARD_OUT_PROGRAM)?;
            guard_out.load().map_err(verify(GUARD_OUT_PROGRAM))?;
        }
        let mut config: Array<_, WireGuard> = take(&mut ebpf, GUARD_CONFIG_MAP, Array::try_from)?;
        config
            .set(0, wire_guard(guard), 0)
            .map_err(|e| XdpError::Map {
                name: GUARD_CONFIG_MAP,
                source: Box::new(e),
            })?;
        Ok(Self {
            iface: iface.to_owned(),
            guard_mode: guard.mode,
            lan: Mutex::new(lan),
            clients: take(&mut ebpf, CLIENTS_MAP, PerCpuHashMap::try_from)?,
            globals: take(&mut ebpf, GLOBAL_MAP, PerCpuArray::try_from)?,
            servers: take(&mut ebpf, SERVERS_MAP, HashMap::try_from)?,
            guard_counters: take(&mut ebpf, GUARD_COUNTERS_MAP, PerCpuHashMap::try_from)?,
            tftp_ports: Mutex::new(take(&mut ebpf, TFTP_PORTS_MAP, HashMap::try_from)?),
            allowance: Mutex::new(take(&mut ebpf, ALLOWANCE_MAP, HashMap::try_from)?),
            guarded: Mutex::new(BTreeMap::new()),
            ebpf: Mutex::new(ebpf),
        })
    }

    /// The interface the LAN program is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    pub fn guard_mode(&self) -> GuardMode {
        self.guard_mode
    }

    /// Whether the LAN program is on the LAN interface now.
    pub fn lan_attached(&self) -> bool {
        lock(&self.lan).is_some()
    }

    /// Keeps the LAN program on the LAN interface, whose index is `ifindex` now (`None`:
    /// it does not exist). The kernel detaches XDP from an interface it deletes; the
    /// interface recreated under the same name gets the program again, with the same maps.
    pub fn follow_lan(&self, ifindex: Option<u32>) -> Result<LanChange, XdpError> {
        let mut lan = lock(&self.lan);
        if lan.as_ref().map(|l| l.ifindex) == ifindex {
            return Ok(LanChange::Same);
        }
        let mut ebpf = lock(&self.ebpf);
        let program: &mut Xdp = program(&mut ebpf, LAN_PROGRAM)?;
        let had = lan.take().map(|old| {
            // An error means the link went with its interface.
            let _ = program.detach(old.link);
        });
        let Some(ifindex) = ifindex else {
            return Ok(if had.is_some() {
                LanChange::Gone
            } else {
                LanChange::Same
            });
        };
        let link = program
            .attach(&self.iface, XdpMode::default())
            .map_err(lan_attach_err(&self.iface))?;
        *lan = Some(LanLink { ifindex, link });
        Ok(LanChange::Attached)
    }

    /// Reads every counter. Entries an LRU evicts mid-walk are skipped.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot {
            guard_mode: self.guard_mode,
            lan_attached: self.lan_attached(),
            ..Snapshot::default()
        };
        snap.clients = self.clients();
        for g in Global::ALL {
            if let Ok(per_cpu) = self.globals.get(&(g as u32), 0) {
                snap.globals[g as usize] = per_cpu.iter().sum();
            }
        }
        snap.servers = self.snapshot_servers();
        let guarded = lock(&self.guarded);
        for (ifindex, per_cpu) in self.guard_counters.iter().flatten() {
            let total = per_cpu
                .iter()
                .fold(GuardCounters::default(), |a, c| GuardCounters {
                    inbound: a.inbound + c.inbound,
                    outbound: a.outbound + c.outbound,
                });
            let (name, attached) = match guarded.iter().find(|(_, l)| l.ifindex == ifindex) {
                Some((name, _)) => (name.clone(), true),
                None => (
                    ifname(ifindex).unwrap_or_else(|| format!("ifindex{ifindex}")),
                    false,
                ),
            };
            snap.guard.push((name, total, attached));
        }
        for name in guarded.keys() {
            if !snap.guard.iter().any(|(n, _, _)| n == name) {
                snap.guard
                    .push((name.clone(), GuardCounters::default(), true));
            }
        }
        snap
    }

    /// Every client's counters, summed over CPUs: one walk of the map (a lookup per
    /// entry, up to [`gb10_common::CLIENTS_MAX`]). Entries an LRU evicts mid-walk are
    /// skipped.
    pub fn clients(&self) -> Vec<(MacKey, ClientCounters)> {
        self.clients
            .iter()
            .flatten()
            .map(|(key, per_cpu)| (key, sum(&per_cpu)))
            .collect()
    }

    /// One client's counters, summed over CPUs; `None` when the program has none for it
    /// (never seen, or evicted by the LRU).
    pub fn client(&self, mac: [u8; 6]) -> Option<ClientCounters> {
        self.clients
            .get(&MacKey::new(mac), 0)
            .ok()
            .map(|per_cpu| sum(&per_cpu))
    }

    /// Foreign DHCP servers seen so far.
    pub fn snapshot_servers(&self) -> Vec<(ServerKey, ServerSeen)> {
        self.servers.iter().flatten().collect()
    }

    /// Marks `port` as a live TFTP transfer port: its ACKs count as TFTP, and the guard
    /// treats packets from it as TFTP replies.
    pub fn add_tftp_port(&self, port: u16) {
        if let Err(err) = lock(&self.tftp_ports).insert(port, 1, 0) {
            tracing::debug!(port, %err, "TFTP port map full; transfer counted as other");
        }
    }

    /// Forgets a TFTP transfer port.
    pub fn remove_tftp_port(&self, port: u16) {
        let _ = lock(&self.tftp_ports).remove(&port);
    }

    /// Gives exactly these MACs (the inventory's hosts) their own rate, exempt from the
    /// global cap; others lose it.
    pub fn set_allowances(&self, macs: &[[u8; 6]], rate: Rate) {
        let mut map = lock(&self.allowance);
        let want: std::collections::HashSet<MacKey> =
            macs.iter().map(|m| MacKey::new(*m)).collect();
        let stale: Vec<MacKey> = map.keys().flatten().filter(|k| !want.contains(k)).collect();
        for key in stale {
            let _ = map.remove(&key);
        }
        for key in want {
            if let Err(err) = map.insert(key, rate, 0) {
                tracing::warn!(%err, "guard allowance map full; host gets the default rate");
                break;
            }
        }
    }

    /// Attaches the guard (XDP ingress, TC egress) to `iface` with index `ifindex`;
    /// re-attaches when the interface was recreated under the same name.
    pub fn guard_attach(&self, iface: &str, ifindex: u32) -> Result<bool, XdpError> {
        let mut guarded = lock(&self.guarded);
        if guarded.get(iface).is_some_and(|l| l.ifindex == ifindex) {
            return Ok(false);
        }
        let mut ebpf = lock(&self.ebpf);
        if let Some(old) = guarded.remove(iface) {
            detach(&mut ebpf, old);
        }
        let attach_err = |name| {
            move |e| XdpError::Attach {
                name,
                iface: iface.to_owned(),
                source: Box::new(e),
            }
        };
        let xdp: &mut Xdp = program(&mut ebpf, GUARD_IN_PROGRAM)?;
        let xdp_link = xdp
            .attach(iface, XdpMode::default())
            .map_err(attach_err(GUARD_IN_PROGRAM))?;
        // Kernels before 6.6 attach TC programs through a clsact qdisc; it may be there.
        let _ = aya::programs::tc::qdisc_add_clsact(iface);
        let tc: &mut SchedClassifier = program(&mut ebpf, GUARD_OUT_PROGRAM)?;
        let tc_link = match tc.attach(iface, TcAttachType::Egress) {
            Ok(link) => link,
            Err(e) => {
                let xdp: &mut Xdp = program(&mut ebpf, GUARD_IN_PROGRAM)?;
                let _ = xdp.detach(xdp_link);
                return Err(attach_err(GUARD_OUT_PROGRAM)(e));
            }
        };
        guarded.insert(
            iface.to_owned(),
            GuardLinks {
                ifindex,
                xdp: xdp_link,
                tc: tc_link,
            },
        );
        Ok(true)
    }

    /// Detaches the guard from `iface` (a no-op when it is not there).
    pub fn guard_detach(&self, iface: &str) -> bool {
        let Some(links) = lock(&self.guarded).remove(iface) else {
            return false;
        };
        detach(&mut lock(&self.ebpf), links);
        true
    }

    /// Interfaces the guard is attached to, with their indexes.
    pub fn guarded(&self) -> Vec<(String, u32)> {
        lock(&self.guarded)
            .iter()
            .map(|(n, l)| (n.clone(), l.ifindex))
            .collect()
    }
}

/// Whether the LAN program, attached, checks that a DHCP frame not relayed names its own
/// Ethernet source in `chaddr`: whenever the guard is not off (monitor counts, enforce
/// drops). Without it any LAN client can ask for leases in another's name.
pub fn checks_identity(mode: GuardMode) -> bool {
    mode != GuardMode::Off
}

fn lan_attach_err(iface: &str) -> impl FnOnce(aya::programs::ProgramError) -> XdpError + '_ {
    move |e| XdpError::Attach {
        name: LAN_PROGRAM,
        iface: iface.to_owned(),
        source: Box::new(e),
    }
}

/// The index of interface `name`, if it exists.
fn ifindex(name: &str) -> Option<u32> {
    let name = std::ffi::CString::new(name).ok()?;
    // SAFETY: a NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// Detaches both links; errors mean the interface (and its links) are gone already.
fn detach(ebpf: &mut Ebpf, links: GuardLinks) {
    if let Ok(xdp) = program::<Xdp>(ebpf, GUARD_IN_PROGRAM) {
        let _ = xdp.detach(links.xdp);
    }
    if let Ok(tc) = program::<SchedClassifier>(ebpf, GUARD_OUT_PROGRAM) {
        let _ = tc.detach(links.tc);
    }
}

fn sum(per_cpu: &[ClientCounters]) -> ClientCounters {
    let mut total = ClientCounters::default();
    for c in per_cpu {
        total.merge(c);
    }
    total
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn program<'a, P>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut P, XdpError>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(XdpError::Missing {
            what: "program",
            name,
        })?
        .try_into()
        .map_err(verify(name))
}

fn verify(name: &'static str) -> impl Fn(aya::programs::ProgramError) -> XdpError {
    move |e| XdpError::Verify {
        name,
        source: Box::new(e),
    }
}

fn take<M>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<M, aya::maps::MapError>,
) -> Result<M, XdpError> {
    let map = ebpf
        .take_map(name)
        .ok_or(XdpError::Missing { what: "map", name })?;
    convert(map).map_err(|e| XdpError::Map {
        name,
        source: Box::new(e),
    })
}

/// The guard settings as the programs read them.
fn wire_guard(g: &GuardConfig) -> WireGuard {
    WireGuard {
        mode: match g.mode {
            GuardMode::Off => GUARD_OFF,
            GuardMode::Monitor => GUARD_MONITOR,
            GuardMode::Enforce => GUARD_ENFORCE,
        },
        pad: 0,
        client: Rate::new(g.client.0, g.client.1),
        global: Rate::new(g.global.0, g.global.1),
    }
}

/// The name of interface `ifindex`, if it exists.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE long, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success buf holds a NUL-terminated name.
    Some(
        unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
            .to_string_lossy()
            .into_owned(),
    )
}

/// `bpf_ktime_get_ns` now: CLOCK_MONOTONIC in nanoseconds.
pub fn ktime_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Seconds since the Unix epoch at which a `bpf_ktime_get_ns` timestamp was taken.
pub fn ktime_to_unix(ktime_ns: u64) -> f64 {
    let now_mono = ktime_now_ns() as f64 / 1e9;
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    now_unix - (now_mono - ktime_ns as f64 / 1e9)
}
