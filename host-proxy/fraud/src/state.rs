//! Per-key state of fixed size: two rings of time buckets (a short window
//! for rate and burst, a long one for ratios and login failures), small
//! bitmaps for distinct paths, subjects, addresses and user agents (linear
//! counting), a path histogram for entropy, and inter-arrival statistics.
//! Nothing in it allocates, so a table of these has a size known up front.

use crate::ua::UaClass;

/// Short window: 12 buckets of 5 s (rate and burst over the last minute).
pub const SHORT_BUCKET_MS: i64 = 5_000;
const SHORT_BUCKETS: usize = 12;
/// Long window: 15 buckets of 60 s (ratios, login failures over 15 minutes).
pub const LONG_BUCKET_MS: i64 = 60_000;
const LONG_BUCKETS: usize = 15;
/// The long window in seconds, as reported in signals.
pub const WINDOW_S: u32 = (LONG_BUCKET_MS as u32 / 1000) * LONG_BUCKETS as u32;

#[derive(Clone, Copy, Default)]
struct Bucket {
    epoch: i64,
    requests: u16,
    client_errors: u16,
    not_found: u16,
    login_attempts: u16,
    login_failures: u16,
}

#[derive(Clone, Copy)]
struct Ring<const N: usize> {
    width_ms: i64,
    buckets: [Bucket; N],
}

#[derive(Clone, Copy, Default)]
struct Sums {
    requests: u32,
    client_errors: u32,
    not_found: u32,
    login_attempts: u32,
    login_failures: u32,
    max_bucket: u32,
}

impl<const N: usize> Ring<N> {
    fn new(width_ms: i64) -> Self {
        Ring {
            width_ms,
            buckets: [Bucket {
                epoch: i64::MIN,
                ..Bucket::default()
            }; N],
        }
    }

    /// The bucket for `ts_ms`, or None when it is older than the window.
    fn bucket(&mut self, ts_ms: i64) -> Option<&mut Bucket> {
        let epoch = ts_ms.div_euclid(self.width_ms);
        let b = &mut self.buckets[epoch.rem_euclid(N as i64) as usize];
        if b.epoch == epoch {
            Some(b)
        } else if b.epoch < epoch {
            *b = Bucket {
                epoch,
                ..Bucket::default()
            };
            Some(b)
        } else {
            None
        }
    }

    fn sums(&self, now_ms: i64) -> Sums {
        let now = now_ms.div_euclid(self.width_ms);
        let mut s = Sums::default();
        for b in self
            .buckets
            .iter()
            .filter(|b| b.epoch > now - N as i64 && b.epoch <= now)
        {
            s.requests += u32::from(b.requests);
            s.client_errors += u32::from(b.client_errors);
            s.not_found += u32::from(b.not_found);
            s.login_attempts += u32::from(b.login_attempts);
            s.login_failures += u32::from(b.login_failures);
            s.max_bucket = s.max_bucket.max(u32::from(b.requests));
        }
        s
    }
}

/// A fixed-size bitmap for linear counting of distinct values.
#[derive(Clone, Copy)]
struct Distinct<const W: usize>([u64; W]);

impl<const W: usize> Default for Distinct<W> {
    fn default() -> Self {
        Distinct([0; W])
    }
}

impl<const W: usize> Distinct<W> {
    fn insert(&mut self, hash: u64) {
        let bit = (hash % (W as u64 * 64)) as usize;
        self.0[bit / 64] |= 1 << (bit % 64);
    }

    /// Linear-counting estimate (exact while values are few; saturates at m·ln m).
    fn estimate(&self) -> f64 {
        let m = (W * 64) as f64;
        let zeros = m - self.0.iter().map(|w| w.count_ones() as f64).sum::<f64>();
        if zeros == 0.0 {
            m * m.ln()
        } else {
            -m * (zeros / m).ln()
        }
    }
}

/// What one observation contributes, derived from a log record.
#[derive(Clone, Copy, Debug)]
pub struct Observation {
    pub ts_ms: i64,
    pub status: u16,
    pub path_hash: u64,
    pub subject_hash: Option<u64>,
    pub ip_hash: u64,
    pub ua_hash: u64,
    pub ua: UaClass,
    pub login_attempt: bool,
}

/// The features a rule looks at, computed from a state at a time.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Features {
    /// Requests in the short window (last 60 s).
    pub short_requests: u32,
    /// Requests per second over the short window.
    pub rate: f64,
    /// Most requests in one 5 s bucket of the short window.
    pub burst: u32,
    /// Requests in the long window (last 15 min).
    pub requests: u32,
    pub ratio_4xx: f64,
    pub ratio_404: f64,
    pub login_attempts: u32,
    pub login_failures: u32,
    pub login_failure_ratio: f64,
    pub distinct_paths: f64,
    /// Shannon entropy (bits, at most 4) of paths hashed into 16 buckets.
    pub path_entropy: f64,
    pub distinct_subjects: f64,
    pub distinct_ips: f64,
    pub distinct_uas: f64,
    /// Inter-arrival gaps seen and their coefficient of variation (low = machine-regular).
    pub gaps: u32,
    pub gap_cv: f64,
    /// The most frequent user-agent class.
    pub ua: Option<UaClass>,
    /// Share of requests whose user agent is a declared crawler, scanner or script.
    pub automated_ua_ratio: f64,
}

#[derive(Clone, Copy)]
pub struct EntityState {
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    short: Ring<SHORT_BUCKETS>,
    long: Ring<LONG_BUCKETS>,
    paths: Distinct<4>,
    path_hist: [u16; 16],
    subjects: Distinct<2>,
    ips: Distinct<4>,
    uas: Distinct<1>,
    ua_counts: [u32; UaClass::COUNT],
    seen: u32,
    gap_n: u32,
    gap_mean: f64,
    gap_m2: f64,
}

impl EntityState {
    pub fn new(ts_ms: i64) -> Self {
        EntityState {
            first_seen_ms: ts_ms,
            last_seen_ms: ts_ms,
            short: Ring::new(SHORT_BUCKET_MS),
            long: Ring::new(LONG_BUCKET_MS),
            paths: Distinct::default(),
            path_hist: [0; 16],
            subjects: Distinct::default(),
            ips: Distinct::default(),
            uas: Distinct::default(),
            ua_counts: [0; UaClass::COUNT],
            seen: 0,
            gap_n: 0,
            gap_mean: 0.0,
            gap_m2: 0.0,
        }
    }

    /// Counts one request. With `behaviour` false only the identity
    /// sketches (distinct subjects, addresses, user agents and their
    /// classes) learn from it:
    /// address and subnet keys judge anonymous traffic only, because
    /// signed-in traffic is judged by its subject token (so a scraper signed
    /// in behind a shared NAT gets its account blocked, not the NAT).
    pub fn observe(&mut self, o: &Observation, behaviour: bool) {
        if !behaviour {
            if let Some(s) = o.subject_hash {
                self.subjects.insert(s);
            }
            self.ips.insert(o.ip_hash);
            self.uas.insert(o.ua_hash);
            // What software is behind the key counts either way (a scanner
            // signed in is still a scanner).
            self.ua_counts[o.ua.index()] = self.ua_counts[o.ua.index()].saturating_add(1);
            return;
        }
        let long_idle =
            o.ts_ms.saturating_sub(self.last_seen_ms) > LONG_BUCKET_MS * LONG_BUCKETS as i64;
        if long_idle {
            // A new episode: the lifetime sketches describe the last one only.
            *self = EntityState::new(o.ts_ms);
        }
        if self.seen > 0 {
            let gap = o.ts_ms.saturating_sub(self.last_seen_ms).max(0) as f64;
            self.gap_n += 1;
            let d = gap - self.gap_mean;
            self.gap_mean += d / f64::from(self.gap_n);
            self.gap_m2 += d * (gap - self.gap_mean);
        }
        self.seen = self.seen.saturating_add(1);
        self.last_seen_ms = self.last_seen_ms.max(o.ts_ms);
        let client_error = (400..500).contains(&o.status);
        let failed_login = o.login_attempt && matches!(o.status, 401 | 403);
        for b in [self.short.bucket(o.ts_ms), self.long.bucket(o.ts_ms)]
            .into_iter()
            .flatten()
        {
            b.requests = b.requests.saturating_add(1);
            b.client_errors = b.client_errors.saturating_add(u16::from(client_error));
            b.not_found = b.not_found.saturating_add(u16::from(o.status == 404));
            b.login_attempts = b.login_attempts.saturating_add(u16::from(o.login_attempt));
            b.login_failures = b.login_failures.saturating_add(u16::from(failed_login));
        }
        self.paths.insert(o.path_hash);
        let h = &mut self.path_hist[(o.path_hash >> 60) as usize];
        *h = h.saturating_add(1);
        if let Some(s) = o.subject_hash {
            self.subjects.insert(s);
        }
        self.ips.insert(o.ip_hash);
        self.uas.insert(o.ua_hash);
        self.ua_counts[o.ua.index()] = self.ua_counts[o.ua.index()].saturating_add(1);
    }

    pub fn features(&self, now_ms: i64) -> Features {
        let short = self.short.sums(now_ms);
        let long = self.long.sums(now_ms);
        let ratio = |a: u32, b: u32| {
            if b == 0 {
                0.0
            } else {
                f64::from(a) / f64::from(b)
            }
        };
        let hist_total: f64 = self.path_hist.iter().map(|&c| f64::from(c)).sum();
        let path_entropy = if hist_total == 0.0 {
            0.0
        } else {
            self.path_hist
                .iter()
                .filter(|&&c| c > 0)
                .map(|&c| {
                    let p = f64::from(c) / hist_total;
                    -p * p.log2()
                })
                .sum()
        };
        let gap_cv = if self.gap_n < 2 || self.gap_mean <= 0.0 {
            0.0
        } else {
            (self.gap_m2 / f64::from(self.gap_n - 1)).sqrt() / self.gap_mean
        };
        let ua_total: u32 = self.ua_counts.iter().sum();
        let automated = self.ua_counts[UaClass::Crawler.index()]
            + self.ua_counts[UaClass::Scanner.index()]
            + self.ua_counts[UaClass::Script.index()]
            + self.ua_counts[UaClass::FakeCrawler.index()];
        const CLASSES: [UaClass; UaClass::COUNT] = [
            UaClass::Browser,
            UaClass::Crawler,
            UaClass::Scanner,
            UaClass::Script,
            UaClass::Empty,
            UaClass::FakeCrawler,
        ];
        let ua = CLASSES
            .iter()
            .copied()
            .filter(|c| self.ua_counts[c.index()] > 0)
            .max_by_key(|c| self.ua_counts[c.index()]);
        Features {
            short_requests: short.requests,
            rate: f64::from(short.requests)
                / (SHORT_BUCKET_MS as f64 * SHORT_BUCKETS as f64 / 1000.0),
            burst: short.max_bucket,
            requests: long.requests,
            ratio_4xx: ratio(long.client_errors, long.requests),
            ratio_404: ratio(long.not_found, long.requests),
            login_attempts: long.login_attempts,
            login_failures: long.login_failures,
            login_failure_ratio: ratio(long.login_failures, long.login_attempts),
            distinct_paths: self.paths.estimate(),
            path_entropy,
            distinct_subjects: self.subjects.estimate(),
            distinct_ips: self.ips.estimate(),
            distinct_uas: self.uas.estimate(),
            gaps: self.gap_n,
            gap_cv,
            ua,
            automated_ua_ratio: ratio(automated, ua_total),
        }
    }
}

/// FNV-1a, 64 bit, with a final avalanche (MurmurHash3's fmix64) so the
/// top bits are as good as the bottom ones: a stable hash for the sketches
/// (the same on every platform and release, so drill figures reproduce).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs(ts_ms: i64, status: u16, path: &str) -> Observation {
        Observation {
            ts_ms,
            status,
            path_hash: fnv1a(path.as_bytes()),
            subject_hash: None,
            ip_hash: 1,
            ua_hash: 2,
            ua: UaClass::Browser,
            login_attempt: false,
        }
    }

    #[test]
    fn windows_slide() {
        let mut s = EntityState::new(0);
        for i in 0..120 {
            s.observe(&obs(i * 500, 200, "/a"), true);
        }
        // 120 requests over 60 s; the short window at 59.5 s holds all of them.
        let f = s.features(59_500);
        assert_eq!(f.short_requests, 120);
        assert!((f.rate - 2.0).abs() < 1e-9);
        assert_eq!(f.burst, 10);
        // Two minutes later the short window is empty, the long one is not.
        let f = s.features(180_000);
        assert_eq!(f.short_requests, 0);
        assert_eq!(f.requests, 120);
        // After the long window, nothing.
        assert_eq!(s.features(60_000 * 20).requests, 0);
    }

    #[test]
    fn ratios_distinct_counts_and_regularity() {
        let mut s = EntityState::new(0);
        for i in 0..40 {
            let status = if i % 4 == 0 { 404 } else { 200 };
            s.observe(&obs(i * 1000, status, &format!("/p{i}")), true);
        }
        let f = s.features(40_000);
        assert_eq!(f.ratio_404, 0.25);
        assert!(
            (f.distinct_paths - 40.0).abs() < 5.0,
            "{}",
            f.distinct_paths
        );
        assert!(f.gap_cv < 0.01, "evenly spaced requests: cv {}", f.gap_cv);
        assert!(f.path_entropy > 3.0);
    }

    #[test]
    fn out_of_order_and_ancient_records_are_safe() {
        let mut s = EntityState::new(1_000_000);
        s.observe(&obs(1_000_000, 200, "/"), true);
        s.observe(&obs(0, 200, "/"), true);
        s.observe(&obs(i64::MIN / 2, 200, "/"), true);
        s.observe(&obs(i64::MAX / 2, 200, "/"), true);
        let f = s.features(i64::MAX / 2);
        assert_eq!(f.requests, 1);
    }
}
