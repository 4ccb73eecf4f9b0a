//! Client onboarding events: DHCP, TFTP and HTTP report what a client did, by MAC.
//! The record of each client (timeline, state, persistence) hangs off [`Clients::record`].
use std::sync::Mutex;

use serde::Serialize;

use crate::inventory::Mac;

/// Something a client did that moves its onboarding along.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum ClientEvent {
    /// A DHCPDISCOVER (or proxy request) arrived; `arch` is option 93 when sent.
    Discover { arch: Option<u16> },
    /// An address was leased (direct mode).
    Leased { ip: std::net::Ipv4Addr },
    /// A boot file was fetched over TFTP or HTTP.
    BootFile { path: String },
    /// A kernel or initrd was fetched.
    Kernel { path: String },
    /// A seed (cloud-init, answer file, ...) was fetched.
    Seed { path: String },
    /// The client POSTed a heartbeat.
    Heartbeat {
        phase: String,
        message: Option<String>,
    },
}

/// Where events go. Cheap to call from any task.
#[derive(Default)]
pub struct Clients {
    events: Mutex<Vec<(Mac, ClientEvent)>>,
}

impl Clients {
    /// Records that `mac` did `event`.
    pub fn record(&self, mac: Mac, event: ClientEvent) {
        tracing::debug!(%mac, ?event, "client event");
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((mac, event));
    }

    /// Events recorded for `mac`, oldest first.
    pub fn events(&self, mac: Mac) -> Vec<ClientEvent> {
        let events = self.events.lock().unwrap_or_else(|p| p.into_inner());
        events
            .iter()
            .filter(|(m, _)| *m == mac)
            .map(|(_, e)| e.clone())
            .collect()
    }
}
