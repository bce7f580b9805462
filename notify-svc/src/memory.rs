//! Giving memory back after a crowd of trackers leaves.
//!
//! Every idle WebSocket session holds about 10 KB. When thousands close,
//! glibc's allocator keeps the freed chunks in its arenas (only the top of
//! the heap is ever returned by `free`), so the resident set stays at its
//! peak. Once at least [`TRIM_AFTER_CLOSED`] sessions have closed since the
//! last look, `malloc_trim(0)` hands the free pages back to the kernel.
//! Cheap (it walks the allocator's free lists) and rare.

use std::{sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;

use crate::api::Sessions;

/// Closed sessions (since the last trim's high-water mark) that trigger a trim.
pub const TRIM_AFTER_CLOSED: usize = 1_000;
/// How often the session count is looked at.
pub const CHECK_EVERY: Duration = Duration::from_secs(5);

/// Trims until `shutdown` whenever enough sessions have closed.
pub async fn trim_after_crowds(sessions: Arc<Sessions>, shutdown: CancellationToken) {
    let mut high = sessions.open();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let open = sessions.open();
        high = high.max(open);
        if high - open >= TRIM_AFTER_CLOSED {
            let returned = trim();
            tracing::debug!(
                closed = high - open,
                returned,
                "returned freed memory to the system"
            );
            high = open;
        }
    }
}

/// Returns free heap pages to the kernel; whether any were.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() -> bool {
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own free
    // lists under its arena locks; it is safe to call from any thread.
    unsafe { libc::malloc_trim(0) == 1 }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() -> bool {
    false
}
