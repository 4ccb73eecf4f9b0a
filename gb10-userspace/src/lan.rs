//! The live LAN address and the one way every listener follows it: serve on the current
//! address, stop when it goes away, re-bind when it changes.
use std::{future::Future, net::Ipv4Addr};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The LAN interface's current IPv4 address, `None` while it has none.
pub type LanAddr = watch::Receiver<Option<Ipv4Addr>>;

/// Runs `serve(addr, stop)` for the current LAN address until `token` is cancelled.
/// When the address changes or goes away, `stop` is cancelled, the serving future is
/// awaited (it must return promptly once `stop` fires), and it starts again on the new
/// address. A serving future that fails (e.g. cannot bind) is retried after a second, so
/// a transient error never ends the service.
pub async fn follow<F, Fut, E>(
    name: &'static str,
    mut addr: LanAddr,
    token: CancellationToken,
    mut serve: F,
) where
    F: FnMut(Ipv4Addr, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
{
    loop {
        let current = *addr.borrow_and_update();
        let Some(ip) = current else {
            tokio::select! {
                _ = token.cancelled() => return,
                changed = addr.changed() => if changed.is_err() { return },
            }
            continue;
        };
        let stop = token.child_token();
        let mut run = std::pin::pin!(serve(ip, stop.clone()));
        let mut failed = false;
        tokio::select! {
            // Shutdown first: a service that returns because shutdown cancelled its
            // `stop` must not be taken for one that ended on its own and restarted.
            biased;
            _ = token.cancelled() => { stop.cancel(); let _ = run.await; return; }
            result = &mut run => {
                if token.is_cancelled() {
                    return;
                }
                if let Err(err) = result {
                    warn!(service = name, %ip, error = %err, "service failed; retrying in 1 s");
                    failed = true;
                }
            }
            changed = addr.changed() => {
                stop.cancel();
                let _ = run.await;
                if changed.is_err() { return }
                info!(service = name, old = %ip, new = ?*addr.borrow(), "LAN address changed; re-binding");
            }
        }
        if failed {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                _ = addr.changed() => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[tokio::test]
    async fn rebinds_on_change_and_pauses_without_address() {
        let (tx, rx) = watch::channel(Some(Ipv4Addr::new(198, 18, 0, 1)));
        let token = CancellationToken::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn(follow("test", rx, token.clone(), {
            let seen = seen.clone();
            move |ip, stop: CancellationToken| {
                let seen = seen.clone();
                async move {
                    seen.lock().unwrap().push(ip);
                    stop.cancelled().await;
                    Ok::<(), std::io::Error>(())
                }
            }
        }));
        // Wait on what the service saw, not on the clock: a loaded machine is slow.
        let saw = |n: usize| {
            let seen = seen.clone();
            async move {
                for _ in 0..500 {
                    if seen.lock().unwrap().len() >= n {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                panic!(
                    "service did not see {n} addresses: {:?}",
                    seen.lock().unwrap()
                );
            }
        };
        saw(1).await;
        tx.send(None).unwrap();
        // With no address the service must be stopped: the next start is for the new one.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tx.send(Some(Ipv4Addr::new(198, 18, 0, 9))).unwrap();
        saw(2).await;
        token.cancel();
        task.await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            vec![Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 0, 9)]
        );
    }
}
