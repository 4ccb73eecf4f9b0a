//! Client onboarding API: `POST /heartbeat` (JSON or form), and, with the admin token,
//! `GET /clients` and `GET /clients/{mac}`. A heartbeat for a host with an install moves
//! it only with the install's token (`token`); one without an install to prove moves
//! only the client whose address sent it; installers add their progress (`written`,
//! `total`).
use std::{net::Ipv4Addr, sync::Arc};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    middleware,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde::Deserialize;
use tracing::{info, instrument, warn};

use super::Peer;
use crate::{
    clients::{ClientEvent, Clients, Progress, Recorded},
    config::Secret,
    hosts::{Hosts, Proof},
    identity::Identity,
    mac::Mac,
};

/// Longest heartbeat `phase`, in bytes.
const PHASE_MAX: usize = 32;
/// Longest heartbeat `message`, in bytes.
const MESSAGE_MAX: usize = 1024;

/// Longest install token accepted, in bytes (ours are 64 hex digits).
const TOKEN_MAX: usize = 128;

/// What the heartbeat routes use.
#[derive(Clone)]
pub struct Beats {
    /// Where heartbeats are recorded; `/clients` reads them.
    pub clients: Arc<Clients>,
    /// Whose installs heartbeats prove themselves to.
    pub hosts: Arc<Hosts>,
    /// Whether the sender's address speaks for the MAC of an anonymous heartbeat.
    pub identity: Identity,
    /// `[http] seed_owner_check`: off, any address speaks for any MAC.
    pub owner_check: bool,
}

/// The routes; the client records (MACs, addresses, timelines) only with `token`.
pub fn routes(beats: Beats, token: Option<Secret>) -> Router {
    let clients = beats.clients.clone();
    let beats = Router::new()
        .route("/heartbeat", post(heartbeat))
        .with_state(beats);
    Router::new()
        .route("/clients", get(list))
        .route("/clients/{mac}", get(one))
        .route_layer(middleware::from_fn_with_state(token, crate::auth::require))
        .with_state(clients)
        .merge(beats)
}

/// A heartbeat as posted: `{"mac": "...", "phase": "...", "message": "...", "ip": "..."}`
/// or the same keys form-encoded (what the onboard unit's `curl -d` sends).
#[derive(Debug, Default, Deserialize)]
struct Beat {
    mac: String,
    phase: String,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    ip: Option<Ipv4Addr>,
    /// The install's token, which only its seed carries.
    #[serde(default)]
    token: Option<String>,
    /// Bytes written to disk so far (an installer's progress).
    #[serde(default)]
    written: Option<u64>,
    /// Bytes of the whole image.
    #[serde(default)]
    total: Option<u64>,
}

/// Why a heartbeat was refused; the text goes back to the client.
#[derive(Debug, thiserror::Error)]
enum BeatError {
    #[error("body is not a heartbeat: {0}")]
    Json(#[from] serde_json::Error),
    #[error("`{0}` is missing")]
    Missing(&'static str),
    #[error("`mac` {0:?} is not a MAC address")]
    Mac(String),
    #[error("`ip` {0:?} is not an IPv4 address")]
    Ip(String),
    #[error("`phase` must be 1-{PHASE_MAX} characters of a-z, 0-9, `_` and `-`")]
    Phase,
    #[error("`message` is longer than {MESSAGE_MAX} bytes")]
    Message,
    #[error("`token` is longer than {TOKEN_MAX} bytes")]
    Token,
    #[error("`{0}` is not a byte count")]
    Count(&'static str),
}

fn parse_beat(headers: &HeaderMap, body: &[u8]) -> Result<(Mac, Beat), BeatError> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    let beat = if form {
        let mut beat = Beat::default();
        let (mut mac, mut phase) = (false, false);
        for (k, v) in form_urlencoded::parse(body) {
            match &*k {
                "mac" => (beat.mac, mac) = (v.into_owned(), true),
                "phase" => (beat.phase, phase) = (v.into_owned(), true),
                "message" => beat.message = Some(v.into_owned()),
                "ip" if !v.is_empty() => {
                    beat.ip = Some(v.parse().map_err(|_| BeatError::Ip(v.into_owned()))?)
                }
                "token" if !v.is_empty() => beat.token = Some(v.into_owned()),
                "written" if !v.is_empty() => {
                    beat.written = Some(v.parse().map_err(|_| BeatError::Count("written"))?)
                }
                "total" if !v.is_empty() => {
                    beat.total = Some(v.parse().map_err(|_| BeatError::Count("total"))?)
                }
                _ => {}
            }
        }
        if !mac {
            return Err(BeatError::Missing("mac"));
        }
        if !phase {
            return Err(BeatError::Missing("phase"));
        }
        beat
    } else {
        serde_json::from_slice(body)?
    };
    let mac: Mac = beat
        .mac
        .parse()
        .map_err(|_| BeatError::Mac(beat.mac.clone()))?;
    if beat.phase.is_empty()
        || beat.phase.len() > PHASE_MAX
        || !beat
            .phase
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(BeatError::Phase);
    }
    if beat.message.as_ref().is_some_and(|m| m.len() > MESSAGE_MAX) {
        return Err(BeatError::Message);
    }
    if beat.token.as_ref().is_some_and(|t| t.len() > TOKEN_MAX) {
        return Err(BeatError::Token);
    }
    Ok((mac, beat))
}

async fn heartbeat(
    State(beats): State<Beats>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match parse_beat(&headers, &body) {
        Ok((mac, beat)) => record(&beats, mac, beat, peer),
        Err(err) => {
            warn!(peer = ?peer.0, error = %err, "bad heartbeat");
            (StatusCode::BAD_REQUEST, format!("{err}\n")).into_response()
        }
    }
}

/// Records the heartbeat under its MAC with what its token proved; the answer names
/// the client's state and the proof (an installer waits for `installed` to be recorded
/// before it reboots).
#[instrument(skip_all, fields(mac = %mac))]
fn record(beats: &Beats, mac: Mac, beat: Beat, peer: Peer) -> Response {
    let Beat {
        mac: _,
        phase,
        message,
        ip,
        token,
        written,
        total,
    } = beat;
    let mut proof = beats.hosts.prove(mac, token.as_deref(), &phase);
    if proof == Proof::Anonymous && beats.owner_check && !beats.identity.speaks_for(mac, peer.0) {
        proof = Proof::Stranger;
        beats
            .hosts
            .install_stats()
            .stranger_heartbeats
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    // Not `message`: that is the field tracing keeps the line's own text in.
    if written.is_some() {
        tracing::debug!(%phase, ?proof, written, total, "progress heartbeat");
    } else {
        info!(%phase, ?proof, text = ?message, "heartbeat");
    }
    let recorded = beats.clients.record(
        mac,
        ClientEvent::Heartbeat {
            phase,
            message,
            ip: ip.or(peer.0),
            proof,
            progress: written.map(|written| Progress { written, total }),
        },
    );
    if recorded == Recorded::Refused {
        return (
            StatusCode::FORBIDDEN,
            "heartbeat not kept: the MAC is not an inventory host, holds no lease and was \
             never seen booting ([clients] strays = 0)\n",
        )
            .into_response();
    }
    let state = beats.clients.state(mac).map(|s| s.label());
    let status = if !proof.moves() {
        StatusCode::FORBIDDEN
    } else {
        StatusCode::OK
    };
    (
        status,
        Json(serde_json::json!({ "mac": mac, "state": state, "proof": proof })),
    )
        .into_response()
}

async fn list(State(clients): State<Arc<Clients>>) -> Response {
    Json(clients.all()).into_response()
}

async fn one(State(clients): State<Arc<Clients>>, Path(mac): Path<String>) -> Response {
    let Ok(mac) = mac.parse::<Mac>() else {
        return (StatusCode::BAD_REQUEST, "not a MAC address\n").into_response();
    };
    match clients.get(mac) {
        Some(record) => Json(record).into_response(),
        None => (StatusCode::NOT_FOUND, "no such client\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_form_heartbeats() {
        let mut h = HeaderMap::new();
        let (mac, beat) = parse_beat(
            &h,
            br#"{"mac":"02-00-00-00-00-01","phase":"installed","ip":"198.18.0.2"}"#,
        )
        .unwrap();
        assert_eq!(mac.to_string(), "02:00:00:00:00:01");
        assert_eq!(beat.ip, Some(Ipv4Addr::new(198, 18, 0, 2)));
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        let (_, beat) = parse_beat(&h, b"mac=02:00:00:00:00:01&phase=onboarded").unwrap();
        assert_eq!(beat.phase, "onboarded");
        assert!(matches!(
            parse_beat(&h, b"mac=02:00:00:00:00:01&phase=Bad%20Phase"),
            Err(BeatError::Phase)
        ));
        assert!(matches!(
            parse_beat(&h, b"phase=x"),
            Err(BeatError::Missing("mac"))
        ));
    }
}
