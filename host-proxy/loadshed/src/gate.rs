//! Waiting, with tokio: [`Gate::acquire`] returns a [`Permit`] (let in) or
//! a [`Reject`] (refused), and never waits past the shed threshold.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::config::{Config, Mode};
use crate::core::{Admission, Arrival, ClientKey, Core, Expiry, Reject, Stats};

struct Inner {
    core: Core,
    /// Waiting requests, by ticket: told when they are let in.
    waiters: HashMap<u64, oneshot::Sender<()>>,
}

impl Inner {
    /// Releases one admission and wakes whoever it lets in.
    fn release(&mut self, a: Admission, sample: Option<Duration>, now: Instant) {
        for ticket in self.core.release(a, sample, now) {
            if let Some(tx) = self.waiters.remove(&ticket) {
                // A receiver that is gone was dropped after being let in:
                // its `Waiting` guard releases the admission.
                let _ = tx.send(());
            }
        }
    }
}

/// A snapshot for metrics.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot {
    pub limit: u32,
    pub inflight: u32,
    pub waiting: usize,
    pub stats: Stats,
}

/// The shedder in front of the enclave hop; cheap to clone.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<Mutex<Inner>>,
    /// `mode = "off"`: requests pass without touching the lock.
    off: Arc<AtomicBool>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

/// Let in: call [`Permit::done`] when the enclave answered; dropping it
/// without (a cancelled or failed request) releases it without a sample.
pub struct Permit {
    gate: Gate,
    admission: Option<Admission>,
    started: Instant,
}

impl Permit {
    /// The request completed normally: its time on the hop is a sample.
    pub fn done(mut self) {
        if let Some(a) = self.admission.take() {
            let now = Instant::now();
            let sample = now.saturating_duration_since(self.started);
            self.gate.lock().release(a, Some(sample), now);
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(a) = self.admission.take() {
            self.gate.lock().release(a, None, Instant::now());
        }
    }
}

/// Cleans up a waiting request whose future is dropped (the client left).
struct Waiting<'a> {
    gate: &'a Gate,
    ticket: u64,
    client: ClientKey,
    armed: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut inner = self.gate.lock();
        inner.waiters.remove(&self.ticket);
        if !inner.core.cancel(self.ticket) {
            // Let in just before it went away: give the place back.
            let a = Admission {
                client: self.client,
            };
            inner.release(a, None, Instant::now());
        }
    }
}

impl Gate {
    pub fn new(cfg: Config) -> Self {
        Gate {
            off: Arc::new(AtomicBool::new(cfg.mode == Mode::Off)),
            inner: Arc::new(Mutex::new(Inner {
                core: Core::new(cfg, Instant::now()),
                waiters: HashMap::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays consistent at every await point; a panic while
        // holding the lock leaves nothing half-done worth refusing over.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// New settings, effective for the next request.
    pub fn reconfigure(&self, cfg: Config) {
        let off = cfg.mode == Mode::Off;
        self.lock().core.reconfigure(cfg);
        self.off.store(off, Ordering::Relaxed);
    }

    pub fn config(&self) -> Config {
        self.lock().core.config().clone()
    }

    pub fn snapshot(&self) -> Snapshot {
        let inner = self.lock();
        Snapshot {
            limit: inner.core.limit(),
            inflight: inner.core.inflight(),
            waiting: inner.core.waiting(),
            stats: inner.core.stats(),
        }
    }

    fn permit(&self, a: Admission) -> Permit {
        Permit {
            gate: self.clone(),
            admission: Some(a),
            started: Instant::now(),
        }
    }

    /// Waits for a place on the hop, at most the shed threshold.
    pub async fn acquire(&self, client: ClientKey, flagged: bool) -> Result<Permit, Reject> {
        if self.off.load(Ordering::Relaxed) {
            return Ok(Permit {
                gate: self.clone(),
                admission: None,
                started: Instant::now(),
            });
        }
        let (ticket, deadline, rx) = {
            let mut inner = self.lock();
            match inner.core.arrive(client, flagged, Instant::now()) {
                Arrival::Admitted(a) => return Ok(self.permit(a)),
                Arrival::Rejected(r) => return Err(r),
                Arrival::Queued { ticket, deadline } => {
                    let (tx, rx) = oneshot::channel();
                    inner.waiters.insert(ticket, tx);
                    (ticket, deadline, rx)
                }
            }
        };
        let mut guard = Waiting {
            gate: self,
            ticket,
            client,
            armed: true,
        };
        let timeout = tokio::time::timeout_at(deadline.into(), rx).await;
        let mut inner = self.lock();
        guard.armed = false;
        inner.waiters.remove(&ticket);
        if !matches!(timeout, Ok(Ok(()))) {
            match inner.core.expire(ticket, Instant::now()) {
                Expiry::Admitted(_) => {}
                Expiry::Rejected(r) => return Err(r),
                // Let in at the deadline, before the timer fired.
                Expiry::NotWaiting => {}
            }
        }
        drop(inner);
        Ok(self.permit(Admission { client }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Mode;

    fn gate(limit: u32, threshold_ms: u64) -> Gate {
        Gate::new(Config {
            mode: Mode::Adaptive,
            shed_threshold_ms: threshold_ms,
            max_drop_percent: 30,
            min_limit: limit,
            max_limit: limit,
            initial_limit: limit,
        })
    }

    #[tokio::test]
    async fn a_waiter_is_let_in_when_a_place_frees() {
        let g = gate(1, 5_000);
        let p = g.acquire(ClientKey(1), false).await.expect("in");
        let g2 = g.clone();
        let waiter = tokio::spawn(async move { g2.acquire(ClientKey(2), false).await.map(|_| ()) });
        while g.snapshot().waiting == 0 {
            tokio::task::yield_now().await;
        }
        p.done();
        assert_eq!(waiter.await.expect("joins"), Ok(()));
        let s = g.snapshot();
        assert_eq!((s.inflight, s.waiting), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn nobody_waits_past_the_threshold() {
        let g = gate(1, 200);
        let _p = g.acquire(ClientKey(1), false).await.expect("in");
        // Fill the guard's window with admissions so a refusal is allowed.
        let t0 = tokio::time::Instant::now();
        let mut outcomes = Vec::new();
        for i in 0..10u64 {
            let r = g.acquire(ClientKey(10 + i), false).await;
            outcomes.push(r.map(drop).map_err(|r| r.status()));
        }
        // Each waited at most 200 ms (paused clock: exactly the deadline).
        assert!(
            t0.elapsed() <= Duration::from_millis(200 * 10),
            "{:?}",
            t0.elapsed()
        );
        assert!(outcomes.contains(&Err(503)), "{outcomes:?}");
    }

    #[tokio::test]
    async fn a_client_that_leaves_while_waiting_gives_its_place_back() {
        let g = gate(1, 5_000);
        let p = g.acquire(ClientKey(1), false).await.expect("in");
        let g2 = g.clone();
        let waiter = tokio::spawn(async move {
            let _ = g2.acquire(ClientKey(2), false).await;
        });
        while g.snapshot().waiting == 0 {
            tokio::task::yield_now().await;
        }
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(g.snapshot().waiting, 0);
        drop(p);
        assert_eq!(g.snapshot().inflight, 0);
        // The place is free again.
        let _q = g.acquire(ClientKey(3), false).await.expect("in");
    }
}
