//! Seeds and boot-loader scripts: what a client gets rendered, from the live inventory
//! and templates, the host life cycle and the client's own state. HTTP and TFTP both
//! serve from here (the route table in [`table`]); each records its own events.
mod check;
mod context;
pub mod table;

use std::sync::Arc;

pub use self::{
    check::{check_all, check_logged},
    context::{Server, host_context},
    table::{BUILTIN, RESERVED, ROUTES, Record, Scope, SeedKind, SeedRoute, templates_for},
};
use crate::{
    clients::{ClientState, Clients},
    hosts::Hosts,
    inventory::Host,
    live::Live,
    mac::Mac,
    templates::TemplateError,
};

/// Renders seeds for clients. Cheap to clone.
#[derive(Clone)]
pub struct Seeds {
    live: Live,
    hosts: Arc<Hosts>,
    clients: Arc<Clients>,
}

impl Seeds {
    pub fn new(live: Live, hosts: Arc<Hosts>, clients: Arc<Clients>) -> Self {
        Self {
            live,
            hosts,
            clients,
        }
    }

    /// The host `mac`'s seeds render for: its inventory entry or, for an API host, one
    /// made from its record (with the rebuild's key).
    fn host(&self, mac: Mac) -> Option<Host> {
        self.hosts.effective_host(&self.live.now().inventory, mac)
    }

    /// The seed kind of `mac`'s profile (the default profile for an unknown client).
    pub fn kind(&self, mac: Mac) -> Option<SeedKind> {
        let snapshot = self.live.now();
        let host = self.hosts.effective_host(&snapshot.inventory, mac);
        snapshot
            .inventory
            .profile_for(host.as_ref())
            .and_then(|(_, p)| p.seed)
    }

    /// The row at the route `path` that `mac` gets: the one for its profile's seed kind.
    pub fn row(&self, path: &str, mac: Option<Mac>) -> Option<&'static SeedRoute> {
        let kind = mac.and_then(|m| self.kind(m));
        table::rows_at(path).find(|r| r.serves(kind))
    }

    /// Renders `template` for `mac` (`None`: the global scripts) with the current
    /// inventory, templates, host life cycle and client state. Strict: an undefined
    /// variable is an error, never a partial text.
    pub fn render(
        &self,
        mac: Option<Mac>,
        server: &Server,
        template: &str,
    ) -> Result<String, TemplateError> {
        let snapshot = self.live.now();
        // The host life cycle decides when it knows the host (a rebuild clears
        // `installed`); otherwise the client's own onboarding state.
        let installed = mac
            .and_then(|m| self.hosts.boots_local(m))
            .unwrap_or_else(|| {
                mac.and_then(|m| self.clients.state(m))
                    .is_some_and(|s| matches!(s, ClientState::Installed | ClientState::Onboarded))
            });
        let host = mac.and_then(|m| self.host(m));
        let ctx = host_context(
            &snapshot.templates,
            &snapshot.inventory,
            mac.unwrap_or(Mac([0; 6])),
            host.as_ref(),
            server,
            installed,
        )?;
        snapshot.templates.render(template, &ctx)
    }

    /// A path served over TFTP that is rendered (GRUB's `grub/grub.cfg` and
    /// `grub/hosts/<mac>.cfg`): the MAC it names and the rendering. `None` for any other
    /// path (the TFTP root serves it).
    pub fn tftp(
        &self,
        path: &str,
        server: &Server,
    ) -> Option<(Option<Mac>, Result<String, TemplateError>)> {
        let path = format!("/{}", path.trim_start_matches('/'));
        ROUTES.iter().filter(|r| r.tftp).find_map(|row| {
            let mac = row.matches(&path)?;
            Some((mac, self.render(mac, server, row.template)))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{inventory::Inventory, live::Snapshot};

    fn seeds(inventory: &str) -> Seeds {
        let inv = Inventory::parse(std::path::Path::new("inventory.toml"), inventory).unwrap();
        Seeds::new(
            Live::fixed(Snapshot::builtin(inv)),
            Arc::new(Hosts::default()),
            Arc::new(Clients::in_memory()),
        )
    }

    #[test]
    fn grub_scripts_over_tftp() {
        let seeds = seeds(
            "[profiles.deb]\nkernel = \"d/linux\"\ninitrd = \"d/initrd.gz\"\ncmdline = \"ds=nocloud;s={{ seed_url }}\"\n\
             [[hosts]]\nmac = \"02:00:00:00:00:01\"\nhostname = \"h1\"\nprofile = \"deb\"\n",
        );
        let server = Server {
            host: Ipv4Addr::new(198, 18, 0, 1).to_string(),
            port: 80,
        };
        let (mac, cfg) = seeds.tftp("/grub/grub.cfg", &server).unwrap();
        assert_eq!(mac, None);
        assert!(cfg.unwrap().contains("${net_default_mac}"));
        let (mac, host) = seeds
            .tftp("grub/hosts/02:00:00:00:00:01.cfg", &server)
            .unwrap();
        assert_eq!(mac, Some("02:00:00:00:00:01".parse().unwrap()));
        let host = host.unwrap();
        assert!(
            host.contains("linux (http,198.18.0.1)/d/linux 'ds=nocloud;s=http://198.18.0.1/cloud-init/02:00:00:00:00:01/'"),
            "{host}"
        );
        assert!(seeds.tftp("grub/x86_64-efi/normal.mod", &server).is_none());
    }

    #[test]
    fn the_profile_picks_the_row() {
        let seeds = seeds(
            "[profiles.a]\nseed = \"autoinstall\"\n[profiles.t]\nseed = \"talos\"\n\
             [[hosts]]\nmac = \"02:00:00:00:00:01\"\nprofile = \"a\"\n\
             [[hosts]]\nmac = \"02:00:00:00:00:02\"\nprofile = \"t\"\n",
        );
        let (a, t) = (
            Some("02:00:00:00:00:01".parse().unwrap()),
            Some("02:00:00:00:00:02".parse().unwrap()),
        );
        let user_data = "/cloud-init/{mac}/user-data";
        assert_eq!(seeds.row(user_data, a).unwrap().template, "autoinstall.j2");
        assert!(seeds.row(user_data, t).is_none());
        assert!(seeds.row("/talos/{mac}/config.yaml", t).is_some());
        assert!(seeds.row("/talos/{mac}/config.yaml", a).is_none());
        assert!(seeds.row("/ipxe/{mac}", t).is_some());
    }
}
