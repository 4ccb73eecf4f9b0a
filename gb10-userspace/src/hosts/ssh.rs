//! Ephemeral ed25519 keys, one per install: the public half goes into the host's seed;
//! after first boot the join step logs in with it, runs the profile's join command,
//! removes the key from the host and deletes the private half here. The host's own SSH
//! host key is made here too (per install, handed out in its seed): the join accepts
//! exactly that key and aborts before any command on another.
use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::process::Command;
use tracing::{info, instrument, warn};

use super::{HostState, Hosts, Trigger};
use crate::{identity::Identity, live::Live, mac::Mac};

/// Each ssh command gets this long.
const SSH_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a key or a join step failed.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("running {program}")]
    Spawn {
        program: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} failed ({status}): {stderr}")]
    Failed {
        what: &'static str,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("{what} took longer than {} s", SSH_TIMEOUT.as_secs())]
    Timeout { what: &'static str },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no address known for the host (no lease, heartbeat ip or fixed ip)")]
    NoAddress,
    #[error("no SSH host key is pinned for this install (start it with a rebuild)")]
    NoHostKey,
    #[error(
        "the SSH server at {ip} did not present this install's host key: aborted before any command ({stderr})"
    )]
    HostKey { ip: Ipv4Addr, stderr: String },
}

/// Where keys live: `data_path/state/keys`.
pub fn key_dir(data_path: &Path) -> PathBuf {
    data_path.join("state").join("keys")
}

/// The comment that marks a rebuild's key in authorized_keys.
fn comment(mac: Mac) -> String {
    format!("gb10-ephemeral-{}", mac.to_string().replace(':', "-"))
}

fn key_path(data_path: &Path, mac: Mac) -> PathBuf {
    key_dir(data_path).join(mac.to_string().replace(':', "-"))
}

/// Runs `ssh-keygen` for a fresh ed25519 pair at `path` (0600, no passphrase) in the key
/// directory, which it makes.
async fn keygen(data_path: &Path, path: &Path, comment: &str) -> Result<(), SshError> {
    let dir = key_dir(data_path);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|source| SshError::Read { path: dir, source })?;
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .await
        .map_err(|source| SshError::Spawn {
            program: "ssh-keygen",
            source,
        })?;
    if !out.status.success() {
        return Err(SshError::Failed {
            what: "ssh-keygen",
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

async fn read(path: PathBuf) -> Result<String, SshError> {
    tokio::fs::read_to_string(&path)
        .await
        .map_err(|source| SshError::Read { path, source })
}

/// Makes a fresh key pair for `mac` (0600, replacing an older one); returns the public key.
pub async fn generate(data_path: &Path, mac: Mac) -> Result<String, SshError> {
    let path = key_path(data_path, mac);
    delete(data_path, mac).await;
    keygen(data_path, &path, &comment(mac)).await?;
    Ok(read(path.with_extension("pub")).await?.trim().to_owned())
}

/// Deletes both halves of `mac`'s key and its pinned host key file, if any.
pub async fn delete(data_path: &Path, mac: Mac) {
    let path = key_path(data_path, mac);
    let _ = tokio::fs::remove_file(&path).await;
    let _ = tokio::fs::remove_file(path.with_extension("pub")).await;
    let _ = tokio::fs::remove_file(known_hosts_path(data_path, mac)).await;
}

/// Deletes the files in the key directory that belong to no host `registered` (keys and
/// known_hosts of hosts gone while the daemon was down), and host key files left
/// half-made (ssh-keygen's output is read back and removed at once). Returns how many.
pub async fn prune(data_path: &Path, registered: &dyn Fn(Mac) -> bool) -> usize {
    let dir = key_dir(data_path);
    let Ok(mut entries) = tokio::fs::read_dir(&dir).await else {
        return 0;
    };
    let mut removed = 0;
    // Bounded: one entry per host and kind, at most this many looked at.
    for _ in 0..100_000 {
        let Ok(Some(entry)) = entries.next_entry().await else {
            break;
        };
        let name = entry.file_name().to_string_lossy().into_owned();
        let (stem, kind) = name.split_once('.').unwrap_or((&name, ""));
        let owner = stem.replace('-', ":").parse::<Mac>().ok();
        let stale = kind.starts_with("hostkey-") || owner.is_some_and(|mac| !registered(mac));
        if stale && tokio::fs::remove_file(entry.path()).await.is_ok() {
            removed += 1;
        }
    }
    if removed > 0 {
        info!(removed, dir = %dir.display(), "removed keys and known_hosts of hosts that are gone");
    }
    removed
}

/// A fresh ed25519 SSH host key for an install of `mac`: (private half in OpenSSH
/// format, public line). Made by ssh-keygen in the key directory and read back; no file
/// of it is left.
pub async fn host_key(data_path: &Path, mac: Mac) -> Result<(String, String), SshError> {
    let name = mac.to_string().replace(':', "-");
    let random = super::install::random_hex(6);
    let path = key_dir(data_path).join(format!("{name}.hostkey-{random}"));
    let public = key_dir(data_path).join(format!("{name}.hostkey-{random}.pub"));
    let made = keygen(data_path, &path, &format!("gb10-host-{name}")).await;
    let keys = match made {
        Ok(()) => match (read(path.clone()).await, read(public.clone()).await) {
            (Ok(private), Ok(public)) => Ok((private, public.trim().to_owned())),
            (Err(e), _) | (_, Err(e)) => Err(e),
        },
        Err(e) => Err(e),
    };
    let _ = tokio::fs::remove_file(&path).await;
    let _ = tokio::fs::remove_file(&public).await;
    keys
}

/// The known_hosts file of `mac`'s join: its install's host key alone.
fn known_hosts_path(data_path: &Path, mac: Mac) -> PathBuf {
    key_path(data_path, mac).with_extension("known_hosts")
}

/// The name the join's known_hosts gives the host (not its address, which may move).
fn host_alias(mac: Mac) -> String {
    format!("gb10-{}", mac.to_string().replace(':', "-"))
}

/// Whether the private key of `mac` is in the store.
pub fn has_key(data_path: &Path, mac: Mac) -> bool {
    key_path(data_path, mac).exists()
}

/// What the join step needs: the host records, where hosts are reached, their profiles
/// (join command and user), and the key store.
#[derive(Clone)]
pub struct Joiner {
    pub hosts: Arc<Hosts>,
    pub identity: Identity,
    pub live: Live,
    pub data_path: PathBuf,
}

impl Joiner {
    /// Starts the join step when `mac` has just reached `first_boot`.
    pub fn maybe_join(&self, mac: Mac) {
        let Some(record) = self.hosts.get(mac) else {
            return;
        };
        if record.machine.state != HostState::FirstBoot {
            return;
        }
        // Moving to `joining` first means a second event cannot start a second join.
        if self.hosts.apply(mac, Trigger::JoinStarted, |_| {}).is_err() {
            return;
        }
        tokio::spawn(self.clone().join(mac));
    }

    #[instrument(skip_all, fields(mac = %mac))]
    async fn join(self, mac: Mac) {
        let outcome = self.join_steps(mac).await;
        // The private keys go whatever happened (ours, and the host's own, whose seed is
        // out): a failed join needs a rebuild anyway.
        delete(&self.data_path, mac).await;
        let forget = |r: &mut super::HostRecord| {
            r.ssh_public_key = None;
            if let Some(i) = r.install.as_mut() {
                i.secrets.host_key_private = None;
            }
        };
        let result = match outcome {
            Ok(()) => self.hosts.apply(mac, Trigger::Joined, forget),
            Err(err) => {
                let reason = format!("join: {}", crate::error_chain(&err));
                self.hosts.apply(mac, Trigger::Fail { reason }, forget)
            }
        };
        match result {
            Ok(r) => info!(state = r.machine.state.label(), "join step done"),
            Err(err) => warn!(error = %crate::error_chain(&err), "join step outcome not recorded"),
        }
    }

    async fn join_steps(&self, mac: Mac) -> Result<(), SshError> {
        let snapshot = self.live.now();
        let inv = &snapshot.inventory;
        let record = self.hosts.get(mac);
        let profile = record
            .as_ref()
            .and_then(|r| r.identity.profile.as_deref())
            .and_then(|p| inv.profiles.get(p))
            .or_else(|| inv.profile_for(inv.host(mac)).map(|(_, p)| p));
        let var = |k: &str| {
            profile
                .and_then(|p| p.vars.get(k))
                .and_then(|v| v.as_str())
                .map(str::to_owned)
        };
        // Where the seed put the key on the host (the profile may say; default root's file).
        let keys_file =
            var("join_authorized_keys").unwrap_or_else(|| "$HOME/.ssh/authorized_keys".into());
        let ip = self.identity.address(mac).ok_or(SshError::NoAddress)?;
        // Exactly this install's host key: a machine at that address with another key
        // (someone holding the lease) gets no command.
        let host_key = record
            .as_ref()
            .and_then(|r| r.install.as_ref())
            .map(|i| i.host_key.clone())
            .ok_or(SshError::NoHostKey)?;
        let target = Target::new(
            &self.data_path,
            mac,
            ip,
            &var("join_user"),
            &var("join_port"),
        );
        target.pin(mac, &host_key).await?;
        match var("join_command") {
            Some(command) => {
                target.run("the join command", &command).await?;
                info!(%ip, "join command succeeded");
            }
            None => info!("profile has no join_command: nothing to run, only the key to remove"),
        }
        target
            .run("removing the key", &remove_command(mac, &keys_file))
            .await
    }
}

/// Deletes the line of this rebuild's key (matched by its comment) from `file`.
fn remove_command(mac: Mac, file: &str) -> String {
    format!("sed -i '/ {}$/d' \"{file}\"", comment(mac))
}

struct Target {
    key: PathBuf,
    /// Holds this install's host key alone, under `alias`.
    known_hosts: PathBuf,
    alias: String,
    user: String,
    port: String,
    ip: Ipv4Addr,
}

impl Target {
    fn new(
        data_path: &Path,
        mac: Mac,
        ip: Ipv4Addr,
        user: &Option<String>,
        port: &Option<String>,
    ) -> Self {
        Self {
            key: key_path(data_path, mac),
            known_hosts: known_hosts_path(data_path, mac),
            alias: host_alias(mac),
            user: user.clone().unwrap_or_else(|| "root".into()),
            port: port.clone().unwrap_or_else(|| "22".into()),
            ip,
        }
    }

    /// Writes the known_hosts that holds only `host_key` (type and key, under the
    /// host's alias).
    async fn pin(&self, mac: Mac, host_key: &str) -> Result<(), SshError> {
        let mut words = host_key.split_whitespace();
        let (Some(kind), Some(key)) = (words.next(), words.next()) else {
            return Err(SshError::NoHostKey);
        };
        let line = format!("{} {kind} {key}\n", self.alias);
        tokio::fs::write(&self.known_hosts, line)
            .await
            .map_err(|source| SshError::Read {
                path: self.known_hosts.clone(),
                source,
            })?;
        tracing::debug!(%mac, "join pinned to the install's host key");
        Ok(())
    }

    async fn run(&self, what: &'static str, command: &str) -> Result<(), SshError> {
        let mut cmd = Command::new("ssh");
        cmd.arg("-i")
            .arg(&self.key)
            .args(["-p", &self.port])
            .args(["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"])
            // The pinned key only: no trust on first use, no other file, no update.
            .args(["-o", "StrictHostKeyChecking=yes"])
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts.display()))
            .args(["-o", "GlobalKnownHostsFile=/dev/null"])
            .args(["-o", &format!("HostKeyAlias={}", self.alias)])
            .args([
                "-o",
                "HostKeyAlgorithms=ssh-ed25519",
                "-o",
                "UpdateHostKeys=no",
            ])
            .args(["-o", "ConnectTimeout=10"])
            // `--` first: nothing after it (the user name above all) is read as an option.
            .arg("--")
            .arg(format!("{}@{}", self.user, self.ip))
            .arg(command)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = tokio::time::timeout(SSH_TIMEOUT, cmd.output())
            .await
            .map_err(|_| SshError::Timeout { what })?
            .map_err(|source| SshError::Spawn {
                program: "ssh",
                source,
            })?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            // The tail is enough to tell why; the host's output holds no secret of ours.
            let tail: String = stderr.trim().chars().rev().take(300).collect();
            let tail: String = tail.chars().rev().collect();
            // ssh checks the host key before it authenticates, so before any command.
            if stderr.contains("Host key verification failed")
                || stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
                || stderr.contains("no matching host key type")
            {
                return Err(SshError::HostKey {
                    ip: self.ip,
                    stderr: tail,
                });
            }
            return Err(SshError::Failed {
                what,
                status: out.status,
                stderr: tail,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEPT: Mac = Mac([2, 0, 0, 0, 0, 1]);
    const GONE: Mac = Mac([2, 0, 0, 0, 0, 2]);

    /// Every file of `mac` in the key directory.
    fn files_of(data: &Path, mac: Mac) -> Vec<String> {
        let stem = mac.to_string().replace(':', "-");
        let mut names: Vec<String> = std::fs::read_dir(key_dir(data))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&stem))
            .collect();
        names.sort();
        names
    }

    /// A host's private key, public key and known_hosts go together: when it is deleted
    /// or times out ([`delete`]), when a new install replaces them ([`generate`]), and at
    /// start when the host is gone from the records ([`prune`]), with half-made host key
    /// files.
    #[tokio::test]
    async fn keys_and_known_hosts_go_with_their_host() {
        let data = std::env::temp_dir().join(format!("gb10-ssh-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&data);
        for mac in [KEPT, GONE] {
            generate(&data, mac).await.unwrap();
            std::fs::write(known_hosts_path(&data, mac), "gb10-x ssh-ed25519 AAAA\n").unwrap();
            assert_eq!(files_of(&data, mac).len(), 3, "{:?}", files_of(&data, mac));
        }
        // A new install: the old known_hosts goes with the old key, a new key is made.
        let old = read(key_path(&data, KEPT).with_extension("pub"))
            .await
            .unwrap();
        let new = generate(&data, KEPT).await.unwrap();
        assert_ne!(old.trim(), new);
        assert!(!known_hosts_path(&data, KEPT).exists());
        let stray = key_dir(&data).join("02-00-00-00-00-01.hostkey-abcdef");
        std::fs::write(&stray, "half-made").unwrap();
        assert_eq!(prune(&data, &|mac| mac == KEPT).await, 4);
        assert!(files_of(&data, GONE).is_empty());
        assert_eq!(
            files_of(&data, KEPT),
            ["02-00-00-00-00-01", "02-00-00-00-00-01.pub"]
        );
        delete(&data, KEPT).await;
        assert!(files_of(&data, KEPT).is_empty());
        assert_eq!(prune(&data, &|_| true).await, 0);
        let _ = std::fs::remove_dir_all(&data);
    }
}
