//! The shedder's decisions, without I/O: every call takes the time.
//!
//! **The limit.** AIMD driven by latency: each completed request's time on
//! the enclave hop (queueing excluded; shed requests never sampled) is
//! compared with a no-load baseline, the windowed minimum of recent samples.
//! Slower than `TOLERANCE` × baseline (and a few milliseconds), or slower than
//! half the wait budget: the limit is cut by `DECREASE`, at most once per
//! typical request time, so one burst is one cut. Otherwise, while the limit
//! is in use, it grows by one per limit's worth of completions. AIMD over
//! Gradient2: the hop is one queue in front of a fixed number of enclave
//! workers, whose service time barely moves until they saturate, so a
//! baseline-relative threshold sees saturation as clearly as a gradient
//! does, and AIMD has two constants where Gradient2 has a smoothing window,
//! a tolerance and a queue-size function to tune on a noisy machine. The
//! baseline forgets (two windows of `BASELINE_WINDOW`), so a slower enclave
//! after a restart is not judged by an old minimum, and the limit recovers
//! after an overload by the additive increase.
//!
//! **Who waits, who is refused.** Under the limit a request goes straight
//! in. At the limit it waits in a FIFO for at most `shed_threshold_ms`; a
//! request that would be expected to wait longer is refused at once (`503`,
//! global overload). Each client (a hash of its token) has a fair share,
//! `limit / active clients`; a client already holding its share in flight
//! or waiting is refused (`429`, its own fault). Flagged clients (bots, by
//! the fraud signals) never wait: at the limit they are refused first.
//!
//! **The guard.** Over the last `GUARD_WINDOW`, refusals of requests within
//! their client's share never exceed `max_drop_percent` of those requests:
//! past it, the request is let in over the limit instead. Overload beyond
//! that is passed on to the enclave, not turned into errors for clients that
//! behaved.
//!
//! Why this size: 482 lines of code, the rest its unit tests, which drive the limit with a manual clock.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::config::{Config, Mode};

/// A cut multiplies the limit by this.
const DECREASE: f64 = 0.9;
/// Latency over `TOLERANCE` × baseline means the enclave is queueing.
const TOLERANCE: f64 = 2.0;
/// ... and at least this far over it (sub-millisecond baselines are noisy).
const MIN_EXCESS: Duration = Duration::from_millis(3);
/// The baseline is the minimum over the current and the previous window.
const BASELINE_WINDOW: Duration = Duration::from_secs(10);
/// The refusal guard's window, in `GUARD_BUCKETS` buckets.
const GUARD_WINDOW: Duration = Duration::from_secs(5);
const GUARD_BUCKETS: usize = 10;
/// Waiting requests beyond this many per unit of limit are refused.
const QUEUE_PER_LIMIT: usize = 4;
/// The longest `Retry-After` given.
const MAX_RETRY_AFTER_S: u64 = 30;

/// Who is asking: a hash of the caller's token (never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(pub u64);

/// Why a request was refused, and what the client is told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// The client is over its fair share: `429 Too Many Requests`.
    OverShare { retry_after_s: u64 },
    /// The enclave hop is saturated for everyone: `503 Service Unavailable`.
    Overloaded { retry_after_s: u64 },
}

impl Reject {
    pub fn status(&self) -> u16 {
        match self {
            Reject::OverShare { .. } => 429,
            Reject::Overloaded { .. } => 503,
        }
    }

    pub fn retry_after_s(&self) -> u64 {
        match self {
            Reject::OverShare { retry_after_s } | Reject::Overloaded { retry_after_s } => {
                *retry_after_s
            }
        }
    }
}

/// A request let in: hand it back to [`Core::release`] when it is done.
#[derive(Debug, PartialEq, Eq)]
pub struct Admission {
    pub client: ClientKey,
}

/// What [`Core::arrive`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Arrival {
    Admitted(Admission),
    /// Waits until [`Core::release`] names the ticket, or until `deadline`
    /// ([`Core::expire`]).
    Queued {
        ticket: u64,
        deadline: Instant,
    },
    Rejected(Reject),
}

/// What became of a waiting request at its deadline.
#[derive(Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Let in over the limit by the guard.
    Admitted(Admission),
    Rejected(Reject),
    /// No longer waiting: it was admitted (or cancelled) before.
    NotWaiting,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub admitted: u64,
    pub queued: u64,
    pub over_share: u64,
    pub overloaded: u64,
    pub queue_timeouts: u64,
    pub guard_admits: u64,
    pub cancelled: u64,
    pub decreases: u64,
}

#[derive(Debug, Default)]
struct ClientState {
    inflight: u32,
    queued: u32,
}

#[derive(Debug)]
struct Waiter {
    ticket: u64,
    client: ClientKey,
}

/// Refusals of within-share requests over a sliding window.
#[derive(Debug)]
struct Guard {
    start: Instant,
    /// (within-share arrivals, of them refused), one pair per bucket.
    buckets: [(u64, u64); GUARD_BUCKETS],
    current: usize,
}

impl Guard {
    fn new(now: Instant) -> Self {
        Guard {
            start: now,
            buckets: [(0, 0); GUARD_BUCKETS],
            current: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let width = GUARD_WINDOW / GUARD_BUCKETS as u32;
        while now.saturating_duration_since(self.start) >= width {
            self.start += width;
            self.current = (self.current + 1) % GUARD_BUCKETS;
            self.buckets[self.current] = (0, 0);
            // A long idle gap: everything is old; start over.
            if now.saturating_duration_since(self.start) > GUARD_WINDOW {
                self.buckets = [(0, 0); GUARD_BUCKETS];
                self.start = now;
            }
        }
    }

    fn arrival(&mut self, now: Instant) {
        self.roll(now);
        self.buckets[self.current].0 += 1;
    }

    /// Whether one more refusal stays within `max_percent` of the
    /// within-share arrivals in the window.
    fn may_refuse(&mut self, now: Instant, max_percent: u8) -> bool {
        self.roll(now);
        let (n, r) = self
            .buckets
            .iter()
            .fold((0u64, 0u64), |(n, r), b| (n + b.0, r + b.1));
        (r + 1) * 100 <= n * u64::from(max_percent)
    }

    fn refusal(&mut self, now: Instant) {
        self.roll(now);
        self.buckets[self.current].1 += 1;
    }
}

/// The minimum latency over the current and the previous window.
#[derive(Debug)]
struct Baseline {
    window_start: Instant,
    current: Option<Duration>,
    previous: Option<Duration>,
}

impl Baseline {
    fn update(&mut self, sample: Duration, now: Instant) {
        if now.saturating_duration_since(self.window_start) >= BASELINE_WINDOW {
            let gap = now.saturating_duration_since(self.window_start);
            self.previous = if gap >= 2 * BASELINE_WINDOW {
                None
            } else {
                self.current
            };
            self.current = None;
            self.window_start = now;
        }
        self.current = Some(self.current.map_or(sample, |c| c.min(sample)));
    }

    fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The shedder's state. Not thread-safe by itself: [`crate::Gate`] holds it
/// behind a lock.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    limit: f64,
    inflight: u32,
    clients: HashMap<ClientKey, ClientState>,
    queue: VecDeque<Waiter>,
    next_ticket: u64,
    baseline: Baseline,
    /// Exponentially weighted mean of the samples.
    mean: Option<Duration>,
    /// Completions counted towards the next +1.
    credit: f64,
    last_decrease: Option<Instant>,
    guard: Guard,
    stats: Stats,
}

impl Core {
    pub fn new(cfg: Config, now: Instant) -> Self {
        let limit = f64::from(cfg.initial_limit.clamp(cfg.min_limit, cfg.max_limit));
        Core {
            cfg,
            limit,
            inflight: 0,
            clients: HashMap::new(),
            queue: VecDeque::new(),
            next_ticket: 0,
            baseline: Baseline {
                window_start: now,
                current: None,
                previous: None,
            },
            mean: None,
            credit: 0.0,
            last_decrease: None,
            guard: Guard::new(now),
            stats: Stats::default(),
        }
    }

    /// New settings (a reload): the limit is kept within the new bounds;
    /// waiting requests keep their deadlines.
    pub fn reconfigure(&mut self, cfg: Config) {
        self.limit = self
            .limit
            .clamp(f64::from(cfg.min_limit), f64::from(cfg.max_limit));
        self.cfg = cfg;
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The current concurrency limit (whole requests).
    pub fn limit(&self) -> u32 {
        self.limit as u32
    }

    pub fn inflight(&self) -> u32 {
        self.inflight
    }

    pub fn waiting(&self) -> usize {
        self.queue.len()
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    fn threshold(&self) -> Duration {
        Duration::from_millis(self.cfg.shed_threshold_ms)
    }

    fn admit(&mut self, client: ClientKey) -> Admission {
        self.inflight += 1;
        self.clients.entry(client).or_default().inflight += 1;
        self.stats.admitted += 1;
        Admission { client }
    }

    fn forget_if_idle(&mut self, client: ClientKey) {
        if let Some(c) = self.clients.get(&client) {
            if c.inflight == 0 && c.queued == 0 {
                self.clients.remove(&client);
            }
        }
    }

    /// How long a request joining the queue now would wait, roughly.
    fn expected_wait(&self) -> Duration {
        let mean = self.mean.unwrap_or(Duration::from_millis(1));
        let ahead = (self.waiting() + 1) as f64;
        mean.mul_f64(ahead / self.limit.max(1.0))
    }

    fn retry_after(&self) -> u64 {
        self.expected_wait()
            .as_secs()
            .saturating_add(1)
            .min(MAX_RETRY_AFTER_S)
    }

    /// A request arrives from `client`; `flagged`: the fraud signals name it.
    pub fn arrive(&mut self, client: ClientKey, flagged: bool, now: Instant) -> Arrival {
        if self.cfg.mode == Mode::Off {
            return Arrival::Admitted(self.admit(client));
        }
        let limit = self.limit as u32;
        let saturated = self.inflight >= limit || self.waiting() > 0;
        if !saturated {
            if !flagged {
                self.guard.arrival(now);
            }
            return Arrival::Admitted(self.admit(client));
        }
        // Flagged clients are refused first, before anyone else waits.
        if flagged {
            self.stats.over_share += 1;
            return Arrival::Rejected(Reject::OverShare { retry_after_s: 1 });
        }
        let active = self.clients.len() + usize::from(!self.clients.contains_key(&client));
        let share = (limit as usize).div_ceil(active.max(1)).max(1);
        let held = self
            .clients
            .get(&client)
            .map_or(0, |c| (c.inflight + c.queued) as usize);
        if held >= share {
            self.stats.over_share += 1;
            return Arrival::Rejected(Reject::OverShare { retry_after_s: 1 });
        }
        self.guard.arrival(now);
        let full = self.waiting() >= QUEUE_PER_LIMIT * limit.max(1) as usize;
        if full || self.expected_wait() > self.threshold() {
            if self.guard.may_refuse(now, self.cfg.max_drop_percent) {
                self.guard.refusal(now);
                self.stats.overloaded += 1;
                return Arrival::Rejected(Reject::Overloaded {
                    retry_after_s: self.retry_after(),
                });
            }
            self.stats.guard_admits += 1;
            return Arrival::Admitted(self.admit(client));
        }
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        self.clients.entry(client).or_default().queued += 1;
        // Only requests within their share wait.
        self.queue.push_back(Waiter { ticket, client });
        self.stats.queued += 1;
        Arrival::Queued {
            ticket,
            deadline: now + self.threshold(),
        }
    }

    fn take_waiter(&mut self, ticket: u64) -> Option<Waiter> {
        let i = self.queue.iter().position(|w| w.ticket == ticket)?;
        self.queue.remove(i)
    }

    fn unqueue(&mut self, w: &Waiter) {
        if let Some(c) = self.clients.get_mut(&w.client) {
            c.queued = c.queued.saturating_sub(1);
        }
    }

    /// A waiting request's deadline passed.
    pub fn expire(&mut self, ticket: u64, now: Instant) -> Expiry {
        let Some(w) = self.take_waiter(ticket) else {
            return Expiry::NotWaiting;
        };
        self.unqueue(&w);
        if !self.guard.may_refuse(now, self.cfg.max_drop_percent) {
            self.stats.guard_admits += 1;
            return Expiry::Admitted(self.admit(w.client));
        }
        self.guard.refusal(now);
        self.stats.queue_timeouts += 1;
        self.forget_if_idle(w.client);
        Expiry::Rejected(Reject::Overloaded {
            retry_after_s: self.retry_after(),
        })
    }

    /// A waiting request gave up (its client went away).
    pub fn cancel(&mut self, ticket: u64) -> bool {
        match self.take_waiter(ticket) {
            Some(w) => {
                self.unqueue(&w);
                self.stats.cancelled += 1;
                self.forget_if_idle(w.client);
                true
            }
            None => false,
        }
    }

    /// A request finished. `sample`: its time on the hop when it completed
    /// normally (None when it was cancelled or failed before the enclave
    /// answered; those say nothing about the enclave's speed). Returns the
    /// tickets now admitted, oldest first.
    pub fn release(&mut self, a: Admission, sample: Option<Duration>, now: Instant) -> Vec<u64> {
        let was_inflight = self.inflight;
        self.inflight = self.inflight.saturating_sub(1);
        if let Some(c) = self.clients.get_mut(&a.client) {
            c.inflight = c.inflight.saturating_sub(1);
        }
        self.forget_if_idle(a.client);
        if let (Some(s), Mode::Adaptive) = (sample, self.cfg.mode) {
            self.learn(s, was_inflight, now);
        }
        let mut admitted = Vec::new();
        while self.inflight < self.limit as u32 {
            let Some(w) = self.queue.pop_front() else {
                break;
            };
            self.unqueue(&w);
            self.admit(w.client);
            admitted.push(w.ticket);
        }
        admitted
    }

    fn learn(&mut self, sample: Duration, inflight: u32, now: Instant) {
        self.baseline.update(sample, now);
        self.mean = Some(match self.mean {
            None => sample,
            Some(m) => m.mul_f64(0.9) + sample.mul_f64(0.1),
        });
        let base = self.baseline.get().unwrap_or(sample);
        let slow_at = base.mul_f64(TOLERANCE).max(base + MIN_EXCESS);
        let slow = sample > slow_at || sample > self.threshold() / 2;
        let (min, max) = (f64::from(self.cfg.min_limit), f64::from(self.cfg.max_limit));
        if slow {
            let spacing = self.mean.unwrap_or(sample);
            let due = self
                .last_decrease
                .is_none_or(|t| now.saturating_duration_since(t) >= spacing);
            if due {
                self.limit = (self.limit * DECREASE).max(min);
                self.last_decrease = Some(now);
                self.credit = 0.0;
                self.stats.decreases += 1;
            }
        } else if f64::from(inflight) >= self.limit / 2.0 {
            // Grow only while the limit is used: an idle service's limit
            // says nothing about what it could take.
            self.credit += 1.0;
            if self.credit >= self.limit {
                self.credit = 0.0;
                self.limit = (self.limit + 1.0).min(max);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(initial: u32) -> Config {
        Config {
            mode: Mode::Adaptive,
            shed_threshold_ms: 1500,
            max_drop_percent: 30,
            min_limit: 1,
            max_limit: 64,
            initial_limit: initial,
        }
    }

    fn admitted(a: Arrival) -> Admission {
        match a {
            Arrival::Admitted(a) => a,
            other => panic!("not admitted: {other:?}"),
        }
    }

    const A: ClientKey = ClientKey(1);
    const B: ClientKey = ClientKey(2);

    #[test]
    fn under_the_limit_requests_go_straight_in_and_the_rest_wait_in_order() {
        let t = Instant::now();
        let mut c = Core::new(cfg(2), t);
        c.mean = Some(Duration::from_millis(10));
        let a1 = admitted(c.arrive(A, false, t));
        let _b1 = admitted(c.arrive(B, false, t));
        let (cc, d) = (ClientKey(3), ClientKey(4));
        let Arrival::Queued {
            ticket: tc,
            deadline,
        } = c.arrive(cc, false, t)
        else {
            panic!("C waits")
        };
        assert_eq!(deadline, t + Duration::from_millis(1500));
        let Arrival::Queued { ticket: td, .. } = c.arrive(d, false, t) else {
            panic!("D waits")
        };
        assert_eq!(c.waiting(), 2);
        // One finishes: the oldest waiter goes in.
        let woken = c.release(a1, Some(Duration::from_millis(10)), t);
        assert_eq!(woken, vec![tc]);
        assert_eq!(c.inflight(), 2);
        assert_eq!(c.expire(tc, t + Duration::from_secs(2)), Expiry::NotWaiting);
        assert!(c.cancel(td));
        assert!(!c.cancel(td));
        assert_eq!(c.waiting(), 0);
    }

    #[test]
    fn a_client_over_its_share_gets_429_and_others_still_wait() {
        let t = Instant::now();
        let mut c = Core::new(cfg(4), t);
        c.mean = Some(Duration::from_millis(10));
        for _ in 0..4 {
            admitted(c.arrive(A, false, t));
        }
        // A holds everything; B is alone with a share of 2 (4 / 2 clients).
        let r = c.arrive(A, false, t);
        assert_eq!(r, Arrival::Rejected(Reject::OverShare { retry_after_s: 1 }));
        assert!(matches!(c.arrive(B, false, t), Arrival::Queued { .. }));
        assert!(matches!(c.arrive(B, false, t), Arrival::Queued { .. }));
        assert_eq!(
            c.arrive(B, false, t),
            Arrival::Rejected(Reject::OverShare { retry_after_s: 1 })
        );
        assert_eq!(c.stats().over_share, 2);
        assert_eq!(Reject::OverShare { retry_after_s: 1 }.status(), 429);
    }

    #[test]
    fn flagged_clients_are_refused_first_when_busy_and_let_in_when_idle() {
        let t = Instant::now();
        let mut c = Core::new(cfg(1), t);
        let a = admitted(c.arrive(ClientKey(9), true, t));
        assert!(matches!(
            c.arrive(ClientKey(9), true, t),
            Arrival::Rejected(Reject::OverShare { .. })
        ));
        assert!(matches!(c.arrive(A, false, t), Arrival::Queued { .. }));
        assert_eq!(c.release(a, None, t).len(), 1);
    }

    #[test]
    fn a_wait_longer_than_the_budget_is_refused_at_once_within_the_guard() {
        let t = Instant::now();
        let mut c = Core::new(cfg(1), t);
        // Each request takes a second: a second waiter would wait 2 s > 1.5 s.
        c.mean = Some(Duration::from_secs(1));
        let mut statuses = Vec::new();
        for i in 0..20 {
            match c.arrive(ClientKey(100 + i), false, t) {
                Arrival::Admitted(_) => statuses.push(200),
                Arrival::Queued { .. } => statuses.push(0),
                Arrival::Rejected(r) => statuses.push(r.status()),
            }
        }
        let refused = statuses.iter().filter(|&&s| s == 503).count();
        let guard_admits = c.stats().guard_admits as usize;
        assert!(refused > 0, "{statuses:?}");
        // Never more than 30 % of within-share requests refused.
        assert!(refused * 100 <= 20 * 30, "{statuses:?}");
        assert_eq!(refused + guard_admits + 2, 20, "{statuses:?}");
    }

    #[test]
    fn a_waiter_past_its_deadline_is_refused_or_let_in_by_the_guard() {
        let t = Instant::now();
        let mut c = Core::new(cfg(1), t);
        c.mean = Some(Duration::from_millis(100));
        let _a = admitted(c.arrive(A, false, t));
        let Arrival::Queued { ticket, deadline } = c.arrive(B, false, t) else {
            panic!()
        };
        // 2 within-share arrivals, no refusal yet: one refusal is 50 % > 30 %.
        assert!(matches!(c.expire(ticket, deadline), Expiry::Admitted(_)));
        let mut c = Core::new(cfg(1), t);
        c.mean = Some(Duration::from_millis(100));
        for _ in 0..10 {
            c.guard.arrival(t);
        }
        let _a = admitted(c.arrive(A, false, t));
        let Arrival::Queued { ticket, deadline } = c.arrive(B, false, t) else {
            panic!()
        };
        assert_eq!(
            c.expire(ticket, deadline),
            Expiry::Rejected(Reject::Overloaded { retry_after_s: 1 })
        );
        assert_eq!(c.stats().queue_timeouts, 1);
    }

    /// One request completing while the limit is fully used.
    fn busy(c: &mut Core, t: Instant, sample: Duration) {
        let a = admitted(c.arrive(A, false, t));
        let others = c.limit().saturating_sub(c.inflight);
        c.inflight += others;
        c.release(a, Some(sample), t);
        c.inflight -= others;
    }

    #[test]
    fn slow_answers_cut_the_limit_once_per_request_time_and_it_recovers() {
        let mut t = Instant::now();
        let mut c = Core::new(cfg(32), t);
        let ms = Duration::from_millis;
        // A baseline of 2 ms under load: the limit grows while it is used.
        for _ in 0..64 {
            busy(&mut c, t, ms(2));
            t += ms(1);
        }
        let before = c.limit();
        assert_eq!(before, 33);
        // A burst of slow answers at one instant: one cut.
        for _ in 0..10 {
            busy(&mut c, t, ms(50));
        }
        assert_eq!(c.limit(), (f64::from(before) * DECREASE) as u32);
        assert_eq!(c.stats().decreases, 1);
        // Slow for a few seconds: cut again and again, never below the minimum.
        for _ in 0..100 {
            t += ms(60);
            busy(&mut c, t, ms(50));
        }
        assert_eq!(c.limit(), 1);
        // Fast again: it climbs back, one step per limit's worth of answers.
        for _ in 0..400 {
            t += ms(1);
            busy(&mut c, t, ms(2));
        }
        assert!(c.limit() >= 20, "recovered to {}", c.limit());
    }

    #[test]
    fn an_enclave_that_stays_slower_becomes_the_new_baseline() {
        let mut t = Instant::now();
        let mut c = Core::new(cfg(16), t);
        let ms = Duration::from_millis;
        busy(&mut c, t, ms(2));
        // Slower for good (a smaller instance, say): after two windows the
        // old minimum is gone and the limit grows again.
        for _ in 0..1000 {
            t += ms(60);
            busy(&mut c, t, ms(50));
        }
        assert!(c.limit() > 1, "{}", c.limit());
        assert_eq!(c.baseline.get(), Some(ms(50)));
    }

    #[test]
    fn off_admits_everything_and_learns_nothing() {
        let t = Instant::now();
        let mut c = Core::new(
            Config {
                mode: Mode::Off,
                ..cfg(1)
            },
            t,
        );
        let all: Vec<_> = (0..100).map(|_| admitted(c.arrive(A, false, t))).collect();
        assert_eq!(c.inflight(), 100);
        for a in all {
            assert!(c.release(a, Some(Duration::from_secs(5)), t).is_empty());
        }
        assert_eq!(c.limit(), 1);
        assert_eq!(c.stats().decreases, 0);
    }

    #[test]
    fn the_baseline_forgets_old_windows() {
        let t = Instant::now();
        let mut b = Baseline {
            window_start: t,
            current: None,
            previous: None,
        };
        b.update(Duration::from_millis(1), t);
        b.update(Duration::from_millis(5), t + BASELINE_WINDOW);
        assert_eq!(b.get(), Some(Duration::from_millis(1)));
        b.update(Duration::from_millis(6), t + 2 * BASELINE_WINDOW);
        assert_eq!(b.get(), Some(Duration::from_millis(5)));
        b.update(Duration::from_millis(7), t + 10 * BASELINE_WINDOW);
        assert_eq!(b.get(), Some(Duration::from_millis(7)));
    }

    #[test]
    fn the_client_table_holds_only_clients_with_requests() {
        let t = Instant::now();
        let mut c = Core::new(cfg(8), t);
        for i in 0..1000 {
            let a = admitted(c.arrive(ClientKey(i), false, t));
            c.release(a, None, t);
        }
        assert!(c.clients.is_empty());
    }
}
