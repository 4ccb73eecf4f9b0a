//! The dashboard: `/` a grid of host tiles, `/hosts/{mac}` a timeline, both plain HTML
//! and JS embedded in the binary, kept live by Server-Sent Events on `/events`. The page
//! holds no data: its script asks for the admin token (or takes it from `#token=…` in
//! the address, which never reaches a server), keeps it in the tab's session storage and
//! sends it with every request, the event stream included.
use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    response::{
        Html,
        sse::{Event, KeepAlive, Sse},
    },
    routing::get,
};
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;

use super::Hosts;

const PAGE: &str = include_str!("dashboard.html");

/// The dashboard's pages (no data in them).
pub fn pages() -> Router {
    Router::new()
        .route("/", get(page))
        .route("/hosts/{mac}", get(page))
}

/// The dashboard's event stream (behind the admin token, with the API).
pub fn events(hosts: Arc<Hosts>) -> Router {
    Router::new()
        .route("/events", get(stream))
        .with_state(hosts)
}

/// One page for both views: the script picks by path.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}

/// Every host change as a `host` event with the record as JSON.
async fn stream(
    State(hosts): State<Arc<Hosts>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = hosts.subscribe();
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        let event = match rx.recv().await {
            Ok(record) => Event::default()
                .event("host")
                .data(serde_json::to_string(&record).unwrap_or_default()),
            // A slow browser missed some: tell it to reload the list.
            Err(RecvError::Lagged(_)) => Event::default().event("resync").data("{}"),
            Err(RecvError::Closed) => return None,
        };
        Some((Ok(event), rx))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
