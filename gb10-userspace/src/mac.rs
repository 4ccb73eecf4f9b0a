//! The MAC address: how clients, hosts, leases and metrics name a machine.
use serde::{Deserialize, Serialize};

/// A MAC address (parsed from `aa:bb:cc:dd:ee:ff` or `aa-bb-…`, any case).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Mac(pub [u8; 6]);

impl std::fmt::Display for Mac {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// `mac` as a log field: the address, or `-` when nobody knows it.
pub fn or_dash(mac: Option<Mac>) -> String {
    mac.map_or_else(|| "-".into(), |m| m.to_string())
}

impl std::str::FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut mac = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for b in &mut mac {
            let part = parts
                .next()
                .ok_or_else(|| format!("`{s}` is not a MAC address"))?;
            if part.len() != 2 {
                return Err(format!("`{s}` is not a MAC address"));
            }
            *b = u8::from_str_radix(part, 16).map_err(|_| format!("`{s}` is not a MAC address"))?;
        }
        if parts.next().is_some() {
            return Err(format!("`{s}` is not a MAC address"));
        }
        Ok(Mac(mac))
    }
}

impl Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
