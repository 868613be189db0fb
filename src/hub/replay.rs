//! Resuming a stream from history: what a `Last-Event-ID` means, and what a resumed stream is
//! sent first (the events after it still held, after a `gap` when some may be gone). Both
//! backends use it, so a resume means the same thing on one instance or many.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use super::{Event, HubCounters};
use crate::sse;

/// Where a `Last-Event-ID` says to resume: `None` for anything that is not an id this hub
/// could have issued (garbage, or from the future), which is then reported as a gap.
pub(super) fn resume_point(raw: &str, newest: u64) -> Option<u64> {
    raw.trim().parse::<u64>().ok().filter(|id| *id <= newest)
}

/// Queues every event after `after` that `history` (oldest first) still holds, preceded by a
/// gap event when events after it may have been lost: it is below `floor` (the newest id that
/// may have existed but is not in `history`), or not an id at all. `reported` is what the
/// client sent, echoed in the gap event. Returns the id to resume after. Both backends use it,
/// so a resume means the same thing on one instance or many.
pub(super) fn replay_since<'a>(
    floor: u64,
    history: impl Iterator<Item = &'a Event>,
    after: Option<u64>,
    reported: &str,
    pending: &mut VecDeque<Event>,
    counters: &HubCounters,
) -> u64 {
    let after = match after {
        Some(id) if id >= floor => id,
        _ => {
            counters.gaps.fetch_add(1, Ordering::Relaxed);
            pending.push_back(Event::broadcast(
                Some(floor),
                sse::gap_frame(reported, floor),
            ));
            floor
        }
    };
    let before = pending.len();
    pending.extend(
        history
            .filter(|e| e.id.is_some_and(|id| id > after))
            .cloned(),
    );
    let replayed = (pending.len() - before) as u64;
    counters.replayed.fetch_add(replayed, Ordering::Relaxed);
    after
}
