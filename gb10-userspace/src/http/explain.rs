//! `/explain?mac=…&arch=…&user_class=…`: the boot decision for a client as JSON, with its
//! DHCP counters and lease; with the admin token (it tells who holds which address).
use std::{net::Ipv4Addr, sync::Arc};

use axum::{
    Router,
    extract::{Query, State},
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::{
    config::{Config, Secret},
    dhcp::{self, LeaseTable},
    lan::LanAddr,
    live::Live,
};

/// What `/explain` uses.
#[derive(Clone)]
pub struct Explain {
    /// The boot, DHCP and mode settings the decision is made with.
    pub config: Arc<Config>,
    pub live: Live,
    pub lan_addr: LanAddr,
    pub dhcp: Arc<dhcp::Stats>,
    pub leases: LeaseTable,
}

impl Explain {
    pub fn routes(self, token: Option<Secret>) -> Router {
        Router::new()
            .route("/explain", get(explain))
            .route_layer(middleware::from_fn_with_state(token, crate::auth::require))
            .with_state(self)
    }
}

async fn explain(State(e): State<Explain>, Query(query): Query<crate::explain::Query>) -> Response {
    let server: Ipv4Addr = (*e.lan_addr.borrow()).unwrap_or(e.config.lan_ip.addr());
    let snapshot = e.live.now();
    match crate::explain::explain(&e.config, &snapshot.inventory, server, &query) {
        Ok(answer) => {
            let types = |counts: &[u64; 9]| {
                dhcp::TYPE_LABELS
                    .iter()
                    .zip(counts)
                    .filter(|(_, n)| **n > 0)
                    .map(|(t, n)| (t.to_string(), *n))
                    .collect::<std::collections::BTreeMap<_, _>>()
            };
            let counters = e.dhcp.client(answer.mac).map(|c| {
                serde_json::json!({
                    "received": types(&c.received),
                    "sent": types(&c.sent),
                    "offers_unanswered": c.unanswered(std::time::Instant::now()),
                })
            });
            let mut body = serde_json::to_value(&answer).unwrap_or_default();
            body["dhcp_counters"] = counters.unwrap_or_default();
            body["lease"] = serde_json::to_value(e.leases.of(answer.mac)).unwrap_or_default();
            axum::Json(body).into_response()
        }
        Err(err) => (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({ "error": err.to_string() })),
        )
            .into_response(),
    }
}
