//! A node's lifecycle state: whether it is draining, the signal that tells
//! sessions to wind down, and the tracker the drain waits on. The drain
//! itself is run by one owner, [`crate::server`]; everything else only
//! reads this state or registers with it.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Draining flag, shutdown signal and session tracker of one node.
#[derive(Default)]
pub(crate) struct Lifecycle {
    /// False while draining; `/readyz` reports it.
    draining: AtomicBool,
    /// Cancelled when sessions must wind down (drain).
    pub shutdown: CancellationToken,
    /// Tracks every session task, so the drain can wait for them.
    pub sessions: TaskTracker,
}

impl Lifecycle {
    /// Whether a drain has started.
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks the node as draining (`/readyz` turns 503, upgrades are refused).
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }
}
