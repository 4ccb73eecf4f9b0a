//! Seeds and boot-loader scripts: what a client gets rendered, from the live inventory
//! and templates, the host life cycle and the client's own state. HTTP and TFTP both
//! serve from here (the route table in [`table`]); each records its own events.
mod check;
mod context;
pub mod table;

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
};

pub use self::{
    check::{check_all, check_logged},
    context::{Facts, Server, SizeOf, host_context},
    table::{
        BUILTIN, IMAGE_FORMATS, RESERVED, ROUTES, Record, Scope, SeedKind, SeedRoute, format_of,
        templates_for,
    },
};
use crate::{
    clients::{ClientState, Clients},
    hosts::{
        Hosts, HostsError,
        install::{self, AlreadyHandedOut, Granted, InstallView},
    },
    inventory::Host,
    live::Live,
    mac::Mac,
    templates::TemplateError,
};

/// The size of a file under the HTTP root or a mount, by URL path.
pub type LocalSize = Arc<SizeOf>;

/// Why a seed was not served.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Render(#[from] TemplateError),
    /// Its secrets went out already: an alarm.
    #[error(transparent)]
    Refused(#[from] AlreadyHandedOut),
    #[error("starting the host's install")]
    Install(#[source] HostsError),
}

/// Whether a network boot goes to the disk. The one answer seeds (boot scripts) and
/// DHCP (`[boot] installed = "not_found"`, `"no_boot_file"`) give. Cheap to clone.
#[derive(Clone)]
pub struct LocalDisk {
    hosts: Arc<Hosts>,
    clients: Arc<Clients>,
}

impl LocalDisk {
    /// Whether a network boot of `mac` goes to its disk: the host life cycle decides
    /// for a registered host (a rebuild clears it), the client's own state otherwise.
    pub fn installed(&self, mac: Mac) -> bool {
        self.hosts.boots_local(mac).unwrap_or_else(|| {
            self.clients
                .state(mac)
                .is_some_and(|s| matches!(s, ClientState::Installed | ClientState::Onboarded))
        })
    }
}

/// Renders seeds for clients. Cheap to clone.
#[derive(Clone)]
pub struct Seeds {
    live: Live,
    hosts: Arc<Hosts>,
    clients: Arc<Clients>,
    /// Where installs keep their keys (`state/keys`).
    data_path: PathBuf,
    local_size: Option<LocalSize>,
    /// One first install started at a time (key generation runs outside the hosts lock).
    starting: Arc<tokio::sync::Mutex<()>>,
}

impl Seeds {
    pub fn new(
        live: Live,
        hosts: Arc<Hosts>,
        clients: Arc<Clients>,
        data_path: &Path,
        local_size: Option<LocalSize>,
    ) -> Self {
        Self {
            live,
            hosts,
            clients,
            data_path: data_path.to_owned(),
            local_size,
            starting: Arc::default(),
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

    /// Whether a network boot of `mac` goes to its disk (see [`LocalDisk`]).
    pub fn installed(&self, mac: Mac) -> bool {
        self.local_disk().installed(mac)
    }

    /// The installed-or-not answer alone, for DHCP.
    pub fn local_disk(&self) -> LocalDisk {
        LocalDisk {
            hosts: self.hosts.clone(),
            clients: self.clients.clone(),
        }
    }

    /// Renders `template` for `mac` (`None`: the global scripts) with the current
    /// inventory, templates, host life cycle and client state, and `install` (the
    /// host's current install, with the secrets when they go out). Strict: an undefined
    /// variable is an error, never a partial text.
    pub fn render(
        &self,
        mac: Option<Mac>,
        server: &Server,
        template: &str,
        install: Option<&InstallView>,
    ) -> Result<String, TemplateError> {
        let snapshot = self.live.now();
        let host = mac.and_then(|m| self.host(m));
        let facts = Facts {
            installed: mac.is_some_and(|m| self.installed(m)),
            install,
            local_size: self.local_size.as_deref(),
        };
        let ctx = host_context(
            &snapshot.templates,
            &snapshot.inventory,
            mac.unwrap_or(Mac([0; 6])),
            host.as_ref(),
            server,
            facts,
        )?;
        snapshot.templates.render(template, &ctx)
    }

    /// Renders `row` for `mac` as `peer` asked for it. A seed of a registered host rides
    /// on its current install (the first one starts here when there is none): the row's
    /// hand-out rule decides whether its secrets go with it, and a second request for
    /// them is refused (an alarm, see [`Hosts::hand_out`]).
    pub async fn seed(
        &self,
        mac: Option<Mac>,
        row: &SeedRoute,
        server: &Server,
        peer: Option<Ipv4Addr>,
    ) -> Result<String, SeedError> {
        let Some(mac) =
            mac.filter(|m| matches!(row.scope, Scope::Kinds(_)) && self.hosts.get(*m).is_some())
        else {
            return Ok(self.render(mac, server, row.template, None)?);
        };
        if self.hosts.install_view(mac).is_none() {
            let _one = self.starting.lock().await;
            install::begin(&self.hosts, &self.data_path, mac, false)
                .await
                .map_err(SeedError::Install)?;
        }
        let (view, secrets) = match self.hosts.hand_out(mac, row.path, row.handout, peer) {
            None => (None, false),
            Some(Ok(Granted::Secrets(v))) => (Some(*v), true),
            Some(Ok(Granted::Withheld(v))) => (Some(*v), false),
            Some(Err(refused)) => return Err(refused.into()),
        };
        self.render(Some(mac), server, row.template, view.as_ref())
            .inspect_err(|_| {
                // The client got none of it: asking again is no alarm.
                if secrets {
                    self.hosts.take_back(mac, row.path);
                }
            })
            .map_err(SeedError::from)
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
            Some((mac, self.render(mac, server, row.template, None)))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::{inventory::Inventory, live::Snapshot};

    fn seeds(inventory: &str) -> Seeds {
        let inv = Inventory::parse(Path::new("inventory.toml"), inventory).unwrap();
        Seeds::new(
            Live::fixed(Snapshot::builtin(inv)),
            Arc::new(Hosts::default()),
            Arc::new(Clients::in_memory()),
            Path::new("/nonexistent"),
            None,
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

    /// An image host's seeds all render at load (the install script only with its
    /// secrets: it is never served without them).
    #[test]
    fn an_image_host_checks_clean() {
        let inv = Inventory::parse(
            Path::new("inventory.toml"),
            &format!(
                "[profiles.img]\nkernel = \"i/vmlinuz\"\nseed = \"image\"\n\
                 vars = {{ image = \"images/d.raw.zst\", image_sha256 = \"{}\" }}\n\
                 [[hosts]]\nmac = \"02:00:00:00:00:01\"\nprofile = \"img\"\n",
                "ab".repeat(32)
            ),
        )
        .unwrap();
        let templates = crate::templates::Templates::builtin(BUILTIN);
        check_all(&templates, &inv).unwrap();
    }
}
