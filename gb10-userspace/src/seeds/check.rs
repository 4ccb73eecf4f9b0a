//! The strict-templating check: every template each host's profile uses, rendered for
//! each host (installed and not), and the global scripts once. Run by `check`, at start
//! and on every reload.
use super::{
    context::{Facts, Server, host_context},
    table::{ROUTES, Scope},
};
use crate::{
    hosts::{
        Handout,
        install::{InstallView, Secrets},
    },
    inventory::Inventory,
    mac::Mac,
    templates::{TemplateError, Templates},
};

/// Renders every template every host uses, and the global ones once; the first error.
/// Returns how many renders were done.
pub fn check_all(templates: &Templates, inv: &Inventory) -> Result<usize, TemplateError> {
    let server = Server {
        host: "192.0.2.1".into(),
        port: 80,
    };
    let mut rendered = 0;
    // An unknown client gets the global scripts and its own boot-loader scripts.
    let global = host_context(templates, inv, Mac([0; 6]), None, &server, Facts::default())?;
    for row in ROUTES
        .iter()
        .filter(|r| matches!(r.scope, Scope::Global | Scope::AnyClient))
    {
        templates.render(row.template, &global)?;
        rendered += 1;
    }
    for host in &inv.hosts {
        let kind = inv.profile_for(Some(host)).and_then(|(_, p)| p.seed);
        let for_host = |error| TemplateError::ForHost {
            host: match &host.hostname {
                Some(name) => format!("{name} ({})", host.mac),
                None => host.mac.to_string(),
            },
            error: Box::new(error),
        };
        // Before the install (with its secrets, as the installer gets them) and after
        // (a later boot: without them).
        let install = |secrets| InstallView {
            instance_id: "gb10-check".into(),
            overwrite: false,
            host_key: "ssh-ed25519 AAAA check".into(),
            secrets,
        };
        let (first, later) = (
            install(Some(Secrets {
                token: "0".repeat(64),
                host_key_private: Some("-----BEGIN OPENSSH PRIVATE KEY-----\n".into()),
            })),
            install(None),
        );
        let size = |_: &str| Some(1 << 30);
        for (installed, install) in [(false, &first), (true, &later)] {
            let facts = Facts {
                installed,
                install: Some(install),
                local_size: Some(&size),
            };
            let ctx = host_context(templates, inv, host.mac, Some(host), &server, facts)
                .map_err(for_host)?;
            // A seed that goes out once is never rendered without its secrets (a second
            // request is refused before rendering).
            let rows = ROUTES.iter().filter(|r| {
                r.scope != Scope::Global
                    && r.serves(kind)
                    && (install.secrets.is_some() || r.handout != Handout::Once)
            });
            for row in rows {
                templates.render(row.template, &ctx).map_err(for_host)?;
                rendered += 1;
            }
        }
    }
    Ok(rendered)
}

/// [`check_all`], logging the first failure with file, line, template and variable:
/// requests for that seed get a 500 until it is fixed, the others are served.
pub fn check_logged(inventory: &Inventory, templates: &Templates) {
    if let Err(err) = check_all(templates, inventory) {
        tracing::error!(
            error = %crate::error_chain(&err),
            "a seed does not render; requests for it get 500 until the inventory or template is fixed"
        );
    }
}
