//! The follower of the relay's inbox stream behind the resource `formica://inbox`: one per
//! session, shared by every subscription (see `mod.rs`).

use super::Config;
use crate::output::Out;
use crate::{online, watch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Follows the inbox after `from` until `stop`, waking the subscribers per new item (a burst
/// while a wake-up is pending adds none); reconnects with backoff after failures that can pass,
/// resuming after the last item seen; after `cursor_too_old` it starts again from the oldest
/// item kept, and says so with a wake-up.
pub(super) fn follow_inbox(
    cfg: &Config,
    from: Option<String>,
    stop: &AtomicBool,
    tx: &tokio::sync::broadcast::Sender<()>,
) {
    let out = Out::capturing();
    let ctx = online::Ctx {
        out: &out,
        home: &cfg.home,
        relay: cfg.relay.as_deref(),
    };
    let mut last = from;
    let mut pause = Duration::from_secs(1);
    while !stop.load(Ordering::SeqCst) {
        let res = online::session(&ctx, &cfg.identity).and_then(|s| {
            pause = Duration::from_secs(1);
            watch::follow(&s, last.clone(), None, false, Some(stop), |cursor, _| {
                last = Some(cursor);
                let _ = tx.send(());
                Ok(true)
            })
        });
        match res {
            Ok(()) => {}
            Err(f) if f.code == Some(formica_protocol::ErrorCode::CursorTooOld) => {
                last = None;
                let _ = tx.send(());
            }
            Err(f) => {
                eprintln!(
                    "keytool mcp: following the inbox: {}; again in {} s",
                    f.message,
                    pause.as_secs()
                );
                let until = std::time::Instant::now() + pause;
                while std::time::Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(200));
                }
                pause = (pause * 2).min(Duration::from_secs(60));
            }
        }
    }
}
