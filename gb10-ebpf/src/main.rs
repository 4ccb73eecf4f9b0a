//! gb10-provision's eBPF programs: the LAN ingress XDP program (count, rate-limit, drop
//! malformed, spot foreign DHCP servers) and the guard on every other interface (XDP
//! ingress + TC egress) that keeps provisioning traffic from leaking off the LAN.
#![no_std]
#![no_main]

mod guard;
mod lan;
mod parse;

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray, PerCpuHashMap},
};
use gb10_common::{
    ALLOWANCE_MAX, Bucket, CLIENTS_MAX, ClientCounters, GLOBALS, GUARD_IFACES_MAX, Global,
    GuardConfig, GuardCounters, MacKey, PORT_DHCP_SERVER, PORT_PROXY_DHCP, PORT_TFTP, Rate,
    SERVERS_MAX, ServerKey, ServerSeen, TFTP_PORTS_MAX,
};

// Map statics carry the names in gb10_common so both sides agree.
#[map]
static GB10_CLIENTS: LruPerCpuHashMap<MacKey, ClientCounters> =
    LruPerCpuHashMap::with_max_entries(CLIENTS_MAX, 0);
#[map]
static GB10_GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBALS, 0);
#[map]
static GB10_TFTP_PORTS: HashMap<u16, u8> = HashMap::with_max_entries(TFTP_PORTS_MAX, 0);
#[map]
static GB10_GUARD: Array<GuardConfig> = Array::with_max_entries(1, 0);
#[map]
static GB10_BUCKETS: LruHashMap<MacKey, Bucket> = LruHashMap::with_max_entries(CLIENTS_MAX, 0);
#[map]
static GB10_GLOBAL_BUCKET: Array<Bucket> = Array::with_max_entries(1, 0);
#[map]
static GB10_ALLOWANCE: HashMap<MacKey, Rate> = HashMap::with_max_entries(ALLOWANCE_MAX, 0);
#[map]
static GB10_SERVERS: LruHashMap<ServerKey, ServerSeen> =
    LruHashMap::with_max_entries(SERVERS_MAX, 0);
#[map]
static GB10_GUARD_COUNTERS: PerCpuHashMap<u32, GuardCounters> =
    PerCpuHashMap::with_max_entries(GUARD_IFACES_MAX, 0);

/// The guard's settings (all zero, i.e. off, until the daemon writes them).
#[inline(always)]
fn guard_config() -> GuardConfig {
    GB10_GUARD.get(0).copied().unwrap_or_default()
}

#[inline(always)]
fn bump(counter: Global, n: u64) {
    if let Some(v) = GB10_GLOBAL.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, so no other writer runs concurrently.
        unsafe { *v += n };
    }
}

/// Whether a UDP port pair is a request to one of our services.
#[inline(always)]
fn is_request_port(dport: u16) -> bool {
    dport == PORT_DHCP_SERVER || dport == PORT_PROXY_DHCP || dport == PORT_TFTP
}

/// Whether `port` is a live TFTP transfer port of the daemon.
#[inline(always)]
fn is_tftp_transfer(port: u16) -> bool {
    // SAFETY: a plain lookup; the value is not dereferenced.
    unsafe { GB10_TFTP_PORTS.get(&port) }.is_some()
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
