//! The one way this crate locks a std `Mutex`.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, taking over a poisoned lock. Every critical section in this crate leaves its
/// data consistent at each step (and none awaits while holding it), so a panic in one task
/// must not take the hub, the limits or the TURN quotas down for everyone else.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
