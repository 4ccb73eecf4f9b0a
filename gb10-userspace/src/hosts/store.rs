//! Host records and their history in the redb store: one row per host, written on every
//! change (host changes are rare, so each is its own transaction).
use redb::{ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use super::{install::Install, machine::Machine};
use crate::{inventory::HostIdentity, mac::Mac, store::Store};

/// MAC text → JSON of a [`HostRecord`].
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");

/// MAC text → JSON of the current install's secrets ([`super::install::Secrets`]): kept
/// out of the record, which the API, the dashboard and the logs show.
const SECRETS: TableDefinition<&str, &[u8]> = TableDefinition::new("install_secrets");

/// Why host records could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum HostStoreError {
    #[error("host store")]
    Store {
        #[source]
        source: Box<redb::Error>,
    },
    #[error("host record `{key}` in the store is not valid")]
    Decode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl<E: Into<redb::Error>> From<E> for HostStoreError {
    fn from(e: E) -> Self {
        Self::Store {
            source: Box::new(e.into()),
        }
    }
}

/// Where a host's registration comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `inventory.toml`: declarative; the API may rebuild it but not delete it.
    Inventory,
    /// Registered through the API.
    Api,
}

/// A host's baseboard controller and the name of its credentials (never the secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bmc {
    /// Redfish base, like `https://198.18.1.2` (its certificate must name that host or
    /// IP address) or, warned at each use, `http://198.18.1.2:8000`.
    pub url: String,
    /// A file name under `[admin] credentials_dir` holding `user:password`.
    pub credentials: String,
    /// The system's Redfish path; the first member of `/redfish/v1/Systems` when unset.
    #[serde(default)]
    pub system: Option<String>,
    /// For an https URL: a PEM bundle of the CA(s) that sign this BMC's certificate (its
    /// own self-signed certificate will do), a file name under `credentials_dir`; when
    /// unset, `[admin] bmc_ca_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// For an https URL: skip certificate verification (whoever answers at the address
    /// gets the credentials); warned at each use. Only when no CA can be had.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_skip_verify: bool,
}

/// Everything known about one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    pub mac: Mac,
    #[serde(flatten)]
    pub identity: HostIdentity,
    #[serde(default)]
    pub bmc: Option<Bmc>,
    pub source: Source,
    /// The ephemeral public key of the current rebuild, served in the seed until joined.
    #[serde(default)]
    pub ssh_public_key: Option<String>,
    /// The last heartbeat (Unix ms) and its phase, for the dashboard.
    #[serde(default)]
    pub last_heartbeat: Option<(u64, String)>,
    /// The current install: instance id, what was handed out, alarms. Its secrets are
    /// never serialised with the record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install: Option<Install>,
    #[serde(flatten)]
    pub machine: Machine,
}

/// Every saved host.
pub fn load(store: &Store) -> Result<Vec<HostRecord>, HostStoreError> {
    let txn = store.db().begin_read()?;
    let table = match txn.open_table(HOSTS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let secrets = match txn.open_table(SECRETS) {
        Ok(t) => Some(t),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for row in table.iter()? {
        let (key, value) = row?;
        let decode_err = |source| HostStoreError::Decode {
            key: key.value().to_owned(),
            source,
        };
        let mut record: HostRecord = serde_json::from_slice(value.value()).map_err(decode_err)?;
        if let (Some(install), Some(table)) = (record.install.as_mut(), &secrets)
            && let Some(s) = table.get(key.value())?
        {
            install.secrets = serde_json::from_slice(s.value()).map_err(decode_err)?;
        }
        out.push(record);
    }
    Ok(out)
}

/// Saves `record`.
pub fn save(store: &Store, record: &HostRecord) -> Result<(), HostStoreError> {
    // A record of plain data always serialises.
    let value = serde_json::to_vec(record).unwrap_or_default();
    let key = record.mac.to_string();
    let txn = store.db().begin_write()?;
    txn.open_table(HOSTS)?
        .insert(key.as_str(), value.as_slice())?;
    {
        let mut secrets = txn.open_table(SECRETS)?;
        match &record.install {
            Some(install) => {
                let value = serde_json::to_vec(&install.secrets).unwrap_or_default();
                secrets.insert(key.as_str(), value.as_slice())?;
            }
            None => {
                secrets.remove(key.as_str())?;
            }
        }
    }
    txn.commit()?;
    Ok(())
}

/// Deletes the record of `mac`.
pub fn remove(store: &Store, mac: Mac) -> Result<(), HostStoreError> {
    let txn = store.db().begin_write()?;
    txn.open_table(HOSTS)?.remove(mac.to_string().as_str())?;
    txn.open_table(SECRETS)?.remove(mac.to_string().as_str())?;
    txn.commit()?;
    Ok(())
}
