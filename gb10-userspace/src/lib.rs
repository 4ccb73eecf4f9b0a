//! gb10-provision: DHCP, TFTP and HTTP for an isolated provisioning LAN, with an XDP
//! program that counts and guards what reaches it.
pub mod app;
pub mod assets;
pub mod auth;
pub mod boot;
pub mod bounded;
pub mod cli;
pub mod clients;
pub mod clock;
pub mod config;
pub mod confine;
pub mod ctl;
pub mod dhcp;
pub mod explain;
pub mod fuzz;
pub mod guard;
pub mod hosts;
pub mod http;
pub mod identity;
pub mod inventory;
pub mod lan;
pub mod live;
pub mod logging;
pub mod mac;
pub mod metrics;
pub mod netlink;
pub mod seeds;
pub mod store;
pub mod templates;
pub mod tftp;
pub mod xdp;

/// An error and its sources on one line, for log fields.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
