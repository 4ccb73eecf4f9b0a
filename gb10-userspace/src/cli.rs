//! Command line: `serve` and `check`, each taking the config file and a flag per key;
//! `explain`; `assets` (boot files into data_path); `clients` and `hosts` (the admin API).
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::config::{Config, RawConfig};

#[derive(Parser, Debug)]
#[command(
    name = "gb10-provision",
    version,
    about = "PXE/onboarding control plane for an isolated provisioning LAN"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as `text` (coloured only on a terminal) or `json` (one object per line).
    #[arg(
        long,
        global = true,
        env = "GB10_LOG_FORMAT",
        value_enum,
        default_value_t
    )]
    pub log_format: crate::logging::LogFormat,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the DHCP/TFTP/HTTP responder on the LAN interface.
    Serve(ConfigArgs),
    /// Validate the configuration, the inventory and every template rendered for every
    /// host; exit non-zero naming file, line and variable when something is wrong.
    Check(ConfigArgs),
    /// What DHCP, TFTP and HTTP would answer one client, and why.
    Explain(ExplainArgs),
    /// Place a boot chain (shim, GRUB, iPXE, kernel, initrd) into data_path from
    /// downloaded packages and installer ISOs, with a sha256 manifest.
    Assets(crate::assets::AssetsArgs),
    /// Clients seen on the LAN: a table, one client's timeline, or its boot chain live.
    Clients(crate::ctl::ClientsArgs),
    /// Registered hosts: a table, one host's history, or a rebuild.
    Hosts(crate::ctl::HostsArgs),
}

/// `explain`: the client as its firmware would present itself.
#[derive(clap::Args, Debug)]
pub struct ExplainArgs {
    /// The client's MAC address.
    #[arg(long = "mac")]
    pub client_mac: String,
    /// Option 93 architecture (0 BIOS, 7 x86 UEFI, 11 arm64 UEFI, 16/19 HTTP boot).
    #[arg(long)]
    pub arch: Option<u16>,
    /// Option 77 user class, e.g. iPXE.
    #[arg(long)]
    pub user_class: Option<String>,
    /// Option 60 vendor class (default derived from --arch).
    #[arg(long)]
    pub vendor_class: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Where the configuration comes from: a TOML file, then env, then flags.
#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// TOML config file; its keys are the long flags below with `-` as `_`.
    #[arg(long, env = "GB10_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub keys: RawConfig,
}

impl ConfigArgs {
    /// The file (if any) with flags and env laid over it, validated.
    pub fn load(self) -> anyhow::Result<Config> {
        let file = match &self.config {
            Some(path) => RawConfig::from_file(path)?,
            None => RawConfig::default(),
        };
        Ok(Config::try_from(file.overlay(self.keys))?)
    }
}

/// Parses the command line and runs it.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = args.load()?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(crate::app::serve(config))
        }
        Command::Assets(args) => crate::assets::run(args),
        Command::Clients(args) => crate::ctl::clients(args),
        Command::Hosts(args) => crate::ctl::hosts(args),
        Command::Explain(args) => {
            let ExplainArgs {
                client_mac,
                arch,
                user_class,
                vendor_class,
                json,
                config,
            } = args;
            let config = config.load()?;
            let inventory = crate::inventory::Inventory::load(&config.data_path)?;
            let query = crate::explain::Query {
                mac: Some(client_mac),
                arch,
                user_class,
                vendor_class,
            };
            let e = crate::explain::explain(&config, &inventory, config.lan_ip.addr(), &query)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                print!("{e}");
            }
            Ok(())
        }
        Command::Check(args) => {
            let config = args.load()?;
            println!(
                "config ok: lan_iface={} lan_ip={} mode={:?} data_path={} http_port={}",
                config.lan_iface,
                config.lan_ip,
                config.mode,
                config.data_path.display(),
                config.http_port
            );
            // Every template, rendered for every host of the inventory: the same test the
            // daemon runs at start and on each reload.
            let crate::live::Snapshot {
                inventory,
                templates,
            } = crate::live::Snapshot::load(&config.data_path)?;
            let rendered = crate::seeds::check_all(&templates, &inventory)?;
            println!(
                "inventory ok: {} hosts, {} profiles; templates ok: {} renders",
                inventory.hosts.len(),
                inventory.profiles.len(),
                rendered
            );
            let missing = crate::assets::check::missing_boot_files(&config, &inventory);
            for line in &missing {
                eprintln!("warning: {line}");
            }
            if !missing.is_empty() {
                eprintln!(
                    "warning: {} boot files missing; `gb10-provision assets` places them from packages or an ISO",
                    missing.len()
                );
            }
            Ok(())
        }
    }
}
