//! The LAN ingress XDP program: load, attach to the LAN interface, read its counters.
//! Dropping [`LanXdp`] detaches the program (the bpf_link closes with its fd).
use std::sync::Mutex;

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap},
    programs::{Xdp, XdpMode},
};
use gb10_common::{
    CLIENTS_MAP, ClientCounters, GLOBAL_MAP, GLOBALS, Global, LAN_PROGRAM, MacKey, TFTP_PORTS_MAP,
};

/// The eBPF object gb10-userspace/build.rs built from gb10-ebpf for this binary.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/gb10-ebpf"));

/// Why the XDP program is not running.
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
        "loading XDP program `{LAN_PROGRAM}` into the kernel failed (needs CAP_BPF, or root; the verifier log follows)"
    )]
    Verify(#[source] Box<aya::programs::ProgramError>),
    #[error("attaching XDP to {iface} failed (needs CAP_NET_ADMIN and an interface that exists)")]
    Attach {
        iface: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
}

/// The XDP program attached to the LAN interface, with handles on its maps.
pub struct LanXdp {
    iface: String,
    clients: PerCpuHashMap<MapData, MacKey, ClientCounters>,
    globals: PerCpuArray<MapData, u64>,
    tftp_ports: Mutex<HashMap<MapData, u16, u8>>,
    // Declared last so it drops last: it owns the program and its link.
    _ebpf: Ebpf,
}

/// Counters read from the program at one moment.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Per client, summed over CPUs.
    pub clients: Vec<(MacKey, ClientCounters)>,
    /// Indexed by [`Global`].
    pub globals: [u64; GLOBALS as usize],
}

impl LanXdp {
    /// Loads the object and attaches the LAN program to `iface` (the kernel picks driver
    /// or generic mode).
    pub fn attach(iface: &str) -> Result<Self, XdpError> {
        if EBPF_OBJECT.is_empty() {
            return Err(XdpError::NotBuilt);
        }
        let mut ebpf = Ebpf::load(EBPF_OBJECT).map_err(|e| XdpError::Load(Box::new(e)))?;
        let program: &mut Xdp = ebpf
            .program_mut(LAN_PROGRAM)
            .ok_or(XdpError::Missing {
                what: "program",
                name: LAN_PROGRAM,
            })?
            .try_into()
            .map_err(|e| XdpError::Verify(Box::new(e)))?;
        program.load().map_err(|e| XdpError::Verify(Box::new(e)))?;
        program
            .attach(iface, XdpMode::default())
            .map_err(|e| XdpError::Attach {
                iface: iface.to_owned(),
                source: Box::new(e),
            })?;
        let clients = take(&mut ebpf, CLIENTS_MAP, PerCpuHashMap::try_from)?;
        let globals = take(&mut ebpf, GLOBAL_MAP, PerCpuArray::try_from)?;
        let tftp_ports = take(&mut ebpf, TFTP_PORTS_MAP, HashMap::try_from)?;
        Ok(Self {
            iface: iface.to_owned(),
            clients,
            globals,
            tftp_ports: Mutex::new(tftp_ports),
            _ebpf: ebpf,
        })
    }

    /// The interface the program is attached to.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Reads every counter. Entries the LRU evicts mid-walk are skipped.
    pub fn snapshot(&self) -> Snapshot {
        let mut snap = Snapshot::default();
        for entry in self.clients.iter().flatten() {
            let (key, per_cpu) = entry;
            let mut total = ClientCounters::default();
            for c in per_cpu.iter() {
                total.merge(c);
            }
            snap.clients.push((key, total));
        }
        for g in Global::ALL {
            if let Ok(per_cpu) = self.globals.get(&(g as u32), 0) {
                snap.globals[g as usize] = per_cpu.iter().sum();
            }
        }
        snap
    }

    /// Marks `port` as a live TFTP transfer port, so the program counts its ACKs as TFTP.
    pub fn add_tftp_port(&self, port: u16) {
        let mut ports = self.tftp_ports.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(err) = ports.insert(port, 1, 0) {
            tracing::debug!(port, %err, "TFTP port map full; transfer counted as other");
        }
    }

    /// Forgets a TFTP transfer port.
    pub fn remove_tftp_port(&self, port: u16) {
        let mut ports = self.tftp_ports.lock().unwrap_or_else(|p| p.into_inner());
        let _ = ports.remove(&port);
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

/// Seconds since the Unix epoch at which a `bpf_ktime_get_ns` timestamp was taken.
pub fn ktime_to_unix(ktime_ns: u64) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let now_mono = ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9;
    let now_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    now_unix - (now_mono - ktime_ns as f64 / 1e9)
}

/// Renders a MAC as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = *mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}
