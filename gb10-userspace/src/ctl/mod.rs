//! `clients` and `hosts`: the operator's command line over the admin API (the same
//! API as the dashboard): tables, one machine's timeline, its boot chain live in the
//! terminal, rebuilds; `--json` for scripts. The admin token comes from a file or the
//! environment, never from the command line.
mod api;
pub mod render;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, bail};
use hyper::Method;
use serde_json::Value;

use self::api::Api;
use crate::mac::Mac;

/// Where the admin API is and how to authenticate.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The admin API: `[admin] listen` as `http://127.0.0.1:9190`, or the LAN listener
    /// with `/admin` (`http://10.88.0.1/admin`). Default: from the config file, else
    /// http://127.0.0.1:9190.
    #[arg(long, env = "GB10_SERVER", global = true)]
    pub server: Option<String>,
    /// A file holding the admin token (every call needs it, reads too). The token can
    /// also come from GB10_ADMIN_TOKEN, or from the config file; never from a flag.
    #[arg(long, env = "GB10_ADMIN_TOKEN_FILE", global = true)]
    pub token_file: Option<PathBuf>,
    /// The daemon's config file, read for `[admin]` listen and token (and the LAN
    /// address) when --server or a token are not given.
    #[arg(long, env = "GB10_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Print JSON (one object per line when watching) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
}

/// `clients`: every machine seen, or one, or its chain live.
#[derive(clap::Args, Debug)]
pub struct ClientsArgs {
    #[command(subcommand)]
    pub command: Option<ClientsCommand>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum ClientsCommand {
    /// One client: what the inventory says and its whole timeline.
    Show { mac: String },
    /// Follow the boot chain live (DHCP → TFTP → HTTP → seed → heartbeat): one client's
    /// timeline so far and then each event as it happens, or every client's events.
    Watch {
        mac: Option<String>,
        /// Exit (0) once the client reaches this state (`pxe_booted`, `onboarded`, …).
        #[arg(long, requires = "mac")]
        until: Option<String>,
        /// Give up (exit 1) after this long, like `10m`.
        #[arg(long, value_parser = humantime::parse_duration)]
        timeout: Option<Duration>,
    },
}

/// `hosts`: registered hosts and their life cycle.
#[derive(clap::Args, Debug)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub command: Option<HostsCommand>,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum HostsCommand {
    /// One host with its state history.
    Show { mac: String },
    /// Reinstall a host: `pxe_ready` and, with a BMC, a one-time PXE boot and a reset.
    Rebuild { mac: String },
}

/// The token from `--token-file`, else GB10_ADMIN_TOKEN, else the config file (`token`
/// or `token_file`), else the one the daemon made in `data_path/state/admin-token`.
/// Every route of the admin API needs it, reads too.
fn token(args: &ApiArgs, raw: Option<&crate::config::RawConfig>) -> anyhow::Result<Option<String>> {
    if let Some(path) = &args.token_file {
        return read_token(path).map(Some);
    }
    if let Some(t) = std::env::var("GB10_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
    {
        return Ok(Some(t));
    }
    if let Some(admin) = raw.map(|r| &r.admin) {
        if let Some(t) = &admin.token {
            return Ok(Some(t.expose().to_owned()));
        }
        if let Some(path) = &admin.token_file {
            return read_token(path).map(Some);
        }
    }
    // None configured: the one the daemon made at first start, when this user can read
    // it (on the daemon's host, as its user).
    let data_path = raw
        .and_then(|r| r.data_path.clone())
        .unwrap_or_else(|| crate::config::DEFAULT_DATA_PATH.into());
    let made = crate::store::Store::dir(&data_path).join(crate::auth::TOKEN_FILE);
    Ok(read_token(&made).ok())
}

/// The first line of a token file, trimmed.
fn read_token(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the token file {}", path.display()))?;
    let t = text.lines().next().unwrap_or("").trim();
    if t.is_empty() {
        bail!("the token file {} is empty", path.display());
    }
    Ok(t.to_owned())
}

/// The API's URL: `--server`, else where the config file says the admin API is.
fn server(args: &ApiArgs, raw: Option<&crate::config::RawConfig>) -> String {
    if let Some(s) = &args.server {
        return s.clone();
    }
    let Some(raw) = raw else {
        return "http://127.0.0.1:9190".into();
    };
    if let Some(listen) = raw.admin.listen {
        return format!("http://{listen}");
    }
    let ip = raw
        .lan_ip
        .as_deref()
        .unwrap_or(crate::config::DEFAULT_LAN_IP)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let port = raw.http_port.unwrap_or(crate::config::DEFAULT_HTTP_PORT);
    format!("http://{ip}:{port}/admin")
}

fn connect(args: &ApiArgs) -> anyhow::Result<Api> {
    let raw = match &args.config {
        Some(path) => Some(crate::config::RawConfig::from_file(path)?),
        None => None,
    };
    Api::new(&server(args, raw.as_ref()), token(args, raw.as_ref())?)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn parse_mac(text: &str) -> anyhow::Result<Mac> {
    text.parse::<Mac>().map_err(anyhow::Error::msg)
}

fn print_json(v: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// `GET path` as JSON, or as the table `render` makes, or `empty` when there are no rows.
async fn list(
    api: &Api,
    path: &str,
    json: bool,
    empty: &str,
    render: fn(&[Value], u64) -> String,
) -> anyhow::Result<()> {
    let rows = api.json(Method::GET, path).await?;
    if json {
        return print_json(&rows);
    }
    match rows.as_array() {
        Some(list) if !list.is_empty() => print!("{}", render(list, crate::clock::now_ms())),
        _ => println!("{empty}"),
    }
    Ok(())
}

/// Runs `clients …`.
pub fn clients(args: ClientsArgs) -> anyhow::Result<()> {
    let api = connect(&args.api)?;
    let json = args.api.json;
    runtime()?.block_on(async move {
        match args.command {
            None => {
                let empty = "no clients seen yet, and no hosts in the inventory";
                list(&api, "/api/clients", json, empty, render::clients).await
            }
            Some(ClientsCommand::Show { mac }) => {
                let mac = parse_mac(&mac)?;
                let one = api
                    .json(Method::GET, &format!("/api/clients/{mac}"))
                    .await?;
                if json {
                    return print_json(&one);
                }
                print_client(&one);
                Ok(())
            }
            Some(ClientsCommand::Watch {
                mac,
                until,
                timeout,
            }) => {
                let mac = mac.as_deref().map(parse_mac).transpose()?;
                let watch = watch(&api, mac, until.as_deref(), json);
                match timeout {
                    Some(t) => tokio::time::timeout(t, watch).await.map_err(|_| {
                        anyhow::anyhow!(
                            "gave up after {}{}",
                            humantime::format_duration(t),
                            until
                                .map(|u| format!(" waiting for {u}"))
                                .unwrap_or_default()
                        )
                    })?,
                    None => watch.await,
                }
            }
        }
    })
}

fn print_client(one: &Value) {
    let s = |k: &str| one.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
    println!(
        "{}  {}  state {}  ip {}  host {}  profile {}",
        s("mac"),
        if one["known"].as_bool() == Some(false) {
            "(not in the inventory)".into()
        } else {
            s("hostname")
        },
        s("state"),
        s("lease_ip"),
        s("host_state"),
        s("profile")
    );
    let mut prev = None;
    for e in one["timeline"].as_array().into_iter().flatten() {
        println!("{}", render::event_line(e, prev, None, None));
        prev = e.get("at_ms").and_then(Value::as_u64);
    }
}

/// Follows the event stream: subscribe first, then read the snapshot, so nothing that
/// happens in between is lost.
async fn watch(api: &Api, mac: Option<Mac>, until: Option<&str>, json: bool) -> anyhow::Result<()> {
    let path = match mac {
        Some(m) => format!("/api/clients/events?mac={m}"),
        None => "/api/clients/events".into(),
    };
    let mut events = api.events(&path).await?;
    // Per client: the last event's time and the state, for "+time" and "→ state".
    let mut last: std::collections::BTreeMap<String, (Option<u64>, String)> = Default::default();
    if let Some(m) = mac {
        let (status, one) = api.call(Method::GET, &format!("/api/clients/{m}")).await?;
        if status.is_success() {
            let state = one["state"].as_str().unwrap_or("").to_owned();
            if json {
                println!("{}", serde_json::to_string(&one)?);
            } else {
                print_client(&one);
            }
            let at = one["timeline"]
                .as_array()
                .and_then(|t| t.last())
                .and_then(|e| e["at_ms"].as_u64());
            if until.is_some_and(|u| u == state) {
                return Ok(());
            }
            last.insert(m.to_string(), (at, state));
        } else if status == hyper::StatusCode::NOT_FOUND {
            if !json {
                println!("{m}: not seen yet; waiting for it (Ctrl-C to stop)");
            }
        } else {
            bail!("{status}: {}", api::error_text(&one));
        }
    } else if !json {
        println!("watching every client on {} (Ctrl-C to stop)", api.base());
    }
    while let Some(ev) = events.next().await? {
        match ev.event.as_str() {
            "client" => {
                let e: Value = serde_json::from_str(&ev.data)
                    .with_context(|| format!("an event that is not JSON: {}", ev.data))?;
                let who = e["mac"].as_str().unwrap_or("").to_owned();
                let state = e["state"].as_str().unwrap_or("").to_owned();
                let (prev_at, prev_state) = last.get(&who).cloned().unwrap_or_default();
                if json {
                    println!("{}", ev.data);
                } else {
                    let name = match e["hostname"].as_str() {
                        Some(h) => format!("{who} {h}"),
                        None => who.clone(),
                    };
                    let moved =
                        (state != prev_state && !state.is_empty()).then_some(state.as_str());
                    println!(
                        "{}",
                        render::event_line(
                            &e,
                            prev_at,
                            mac.is_none().then_some(name.as_str()),
                            moved
                        )
                    );
                }
                last.insert(who, (e["at_ms"].as_u64(), state.clone()));
                if until.is_some_and(|u| u == state) {
                    return Ok(());
                }
            }
            "resync" if !json => {
                println!("(fell behind and missed events: {})", ev.data);
            }
            _ => {}
        }
    }
    bail!("the server closed the event stream")
}

/// Runs `hosts …`.
pub fn hosts(args: HostsArgs) -> anyhow::Result<()> {
    let api = connect(&args.api)?;
    let json = args.api.json;
    runtime()?.block_on(async move {
        match args.command {
            None => {
                let empty = "no hosts: add [[hosts]] to inventory.toml or POST /api/hosts";
                list(&api, "/api/hosts", json, empty, render::hosts).await
            }
            Some(HostsCommand::Show { mac }) => {
                let mac = parse_mac(&mac)?;
                let one = api.json(Method::GET, &format!("/api/hosts/{mac}")).await?;
                if json {
                    return print_json(&one);
                }
                print!(
                    "{}",
                    render::hosts(std::slice::from_ref(&one), crate::clock::now_ms())
                );
                for t in one["history"].as_array().into_iter().flatten() {
                    let at = t["at_ms"].as_u64().unwrap_or(0);
                    println!(
                        "{}  {} → {}  ({})",
                        render::clock(at),
                        t["from"].as_str().unwrap_or("-"),
                        t["to"].as_str().unwrap_or("-"),
                        t["trigger"]
                    );
                }
                Ok(())
            }
            Some(HostsCommand::Rebuild { mac }) => {
                let mac = parse_mac(&mac)?;
                let (status, body) = api
                    .call(Method::POST, &format!("/api/hosts/{mac}/rebuild"))
                    .await?;
                if json {
                    print_json(&body)?;
                }
                if status == hyper::StatusCode::UNAUTHORIZED {
                    bail!("401: {}", api::TOKEN_HINT);
                }
                if !status.is_success() {
                    let reason = body["reason"].as_str().map(str::to_owned);
                    bail!(
                        "{status}: {}",
                        reason.unwrap_or_else(|| api::error_text(&body))
                    );
                }
                if !json {
                    println!(
                        "{mac}: {} — {}",
                        body["state"].as_str().unwrap_or("?"),
                        if body.get("bmc").is_some_and(|b| !b.is_null()) {
                            "one-time PXE boot set and reset sent to its BMC"
                        } else {
                            "no BMC: power-cycle the machine by hand"
                        }
                    );
                }
                Ok(())
            }
        }
    })
}
