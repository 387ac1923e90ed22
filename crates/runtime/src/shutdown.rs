//! Stopping a daemon's event loop from another thread or a signal handler.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use mio::{Registry, Token, Waker};

/// A handle that asks an event loop to stop: it sets a flag and wakes the loop's `Poll`, so
/// the loop notices at once instead of at its next timeout. Cloneable and `Send`, as a
/// Ctrl-C handler needs.
#[derive(Debug, Clone)]
pub struct Shutdown {
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Shutdown {
    /// A handle for the loop polling `registry`; the loop sees `token` come up when asked.
    pub fn new(registry: &Registry, token: Token) -> io::Result<Self> {
        Ok(Self {
            stop: Arc::new(AtomicBool::new(false)),
            waker: Arc::new(Waker::new(registry, token)?),
        })
    }

    /// Asks the loop to stop.
    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }

    /// Whether a stop was asked for (the loop's side).
    pub fn requested(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// Wakes the loop without asking it to stop (a helper thread has input for it).
    pub fn wake(&self) {
        let _ = self.waker.wake();
    }
}
