//! Every HTTP listener's accept loop (LAN, admin, loopback health): connection slots, a
//! cap per client address, and a stop that waits a bounded time for open connections.
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::Router;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use super::conn;
use crate::config::HttpLimits;

/// How long open connections may finish after a stop (a renumber must not wait on a
/// slow client; event streams never end by themselves).
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What a connection beyond its address's share gets before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 39\r\nConnection: close\r\n\r\ntoo many connections from your address\n";

/// Refusals being answered at once; beyond it a refused connection is just closed.
const MAX_REFUSING: usize = 64;
/// How long a refused connection is read before it is closed: closing with unread
/// bytes would send a reset that can overtake the 503.
const REFUSE_LINGER: Duration = Duration::from_millis(200);

/// Accepts connections until `stop` fires, serves each with [`conn::serve`], then
/// gives the open ones [`STOP_GRACE`] to finish and closes the rest. At most
/// `limits.max_connections` are served at once (the next waits in the kernel's accept
/// queue until one ends) and at most `limits.max_per_address` from one address (the
/// next gets 503), so one client cannot take every slot.
pub async fn serve(
    name: &'static str,
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    stop: CancellationToken,
) {
    let mut connections = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let per_address = PerAddress::default();
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    loop {
        // Finished connections leave the set as we go.
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            () = stop.cancelled() => break,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let (tcp, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of descriptors and the like: pause instead of spinning.
                    tracing::warn!(%err, "{name}: HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(share) = per_address.take(peer.ip(), limits.max_per_address) else {
            tracing::debug!(%peer, "{name}: connection beyond the per-address cap refused");
            drop(slot);
            refuse(tcp, &refusing);
            continue;
        };
        // Headers and a small body may go out as separate writes (hyper's path):
        // without TCP_NODELAY Nagle holds the body until the client's delayed ACK,
        // ~40 ms a request.
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(%err, "TCP_NODELAY not set");
        }
        let (app, stop) = (app.clone(), stop.clone());
        connections.spawn(async move {
            conn::serve(tcp, peer, app, limits, stop).await;
            drop((slot, share));
        });
    }
    drop(listener);
    if tokio::time::timeout(STOP_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::info!(
            open = connections.len(),
            "{name}: connections still open {STOP_GRACE:?} after stop: closed"
        );
        connections.shutdown().await;
    }
}

/// Answers a refused connection 503 and closes it, within [`REFUSE_LINGER`], without
/// holding a connection slot.
fn refuse(tcp: tokio::net::TcpStream, refusing: &Arc<tokio::sync::Semaphore>) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let mut tcp = tcp;
        let _ = tokio::time::timeout(REFUSE_LINGER, async {
            tcp.write_all(BUSY).await?;
            // The answer, then a FIN; what the client sends meanwhile is read away.
            tcp.shutdown().await?;
            let mut sink = [0u8; 4096];
            while tcp.read(&mut sink).await? > 0 {}
            Ok::<_, std::io::Error>(())
        })
        .await;
        drop(permit);
    });
}

/// Open connections by client address; an entry lives while its address has one, so
/// the table holds at most `max_connections` entries.
#[derive(Clone, Default)]
struct PerAddress(Arc<Mutex<HashMap<IpAddr, usize>>>);

impl PerAddress {
    /// One more connection for `ip`, unless it has `max` already.
    fn take(&self, ip: IpAddr, max: usize) -> Option<Share> {
        let mut open = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Share {
            table: self.clone(),
            ip,
        })
    }
}

/// One connection's place in [`PerAddress`], given back on drop.
struct Share {
    table: PerAddress,
    ip: IpAddr,
}

impl Drop for Share {
    fn drop(&mut self) {
        let mut open = self.table.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_shares_are_counted_and_given_back() {
        let table = PerAddress::default();
        let (a, b): (IpAddr, IpAddr) =
            ("198.18.0.2".parse().unwrap(), "198.18.0.3".parse().unwrap());
        let first = table.take(a, 2).unwrap();
        let _second = table.take(a, 2).unwrap();
        assert!(table.take(a, 2).is_none(), "a third from one address");
        let _other = table.take(b, 2).unwrap();
        drop(first);
        let _again = table.take(a, 2).unwrap();
        assert_eq!(table.0.lock().unwrap().len(), 2);
        let text = std::str::from_utf8(BUSY).unwrap();
        let (_, after) = text.split_once("\r\n\r\n").unwrap();
        assert!(text.contains(&format!("Content-Length: {}\r\n", after.len())));
    }
}
