//! Gives freed memory back to the operating system after many channels have been removed.
//!
//! glibc's allocator keeps freed heap pages for reuse: without this, a burst of 100,000
//! abandoned channels (~2 KiB each) would leave the process holding ~180 MB long after the
//! reaper removed them. `malloc_trim` hands whole free pages back. It runs only when the
//! channel count has dropped a lot since the last look, so a steady server never pays for it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::hub::Hub;

/// How often the channel count is looked at (64 shard locks, each held for a moment).
const PERIOD: Duration = Duration::from_secs(1);
/// Channels that must have gone since the high-water mark before a trim is worth its cost.
const DROP_WORTH_TRIMMING: usize = 2_000;

/// Watches the channel count until shutdown and trims after large drops.
pub async fn run(hub: Arc<Hub>, shutdown: CancellationToken) {
    let mut high = 0usize;
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = hub.channel_count();
        high = high.max(now);
        if high - now >= DROP_WORTH_TRIMMING {
            let trimmed = tokio::task::spawn_blocking(release_free_memory).await;
            tracing::debug!(
                from = high,
                to = now,
                ?trimmed,
                "channels removed; memory trimmed"
            );
            high = now;
        }
    }
}

/// Returns free heap pages to the OS; `true` if any were released.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_free_memory() -> bool {
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe { libc::malloc_trim(0) == 1 }
}

/// Other allocators (musl, macOS) return memory on their own or offer no such call.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_free_memory() -> bool {
    false
}
