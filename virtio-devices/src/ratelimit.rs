//! Rate limits for what a hostile guest can make the monitor do without pause: a byte
//! [`TokenBucket`] (the serial console log) and a per-call-site [`LogLimiter`] behind the
//! `*_limited!` logging macros (every `tracing` line a guest access or a bad descriptor
//! reaches).
//!
//! Both take the time as an argument (`*_at(.., now)`), so tests drive them with a fake clock;
//! the plain methods use [`Instant::now`] (a vDSO call, allowed under every seccomp filter).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A token bucket over bytes (or any unit): `capacity` tokens at most, refilled at `rate` tokens
/// per second, starting full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: u64,
    rate: u64,
    /// Tokens in nano-units (tokens * 1e9), so a refill over a short interval is not rounded
    /// away.
    nanotokens: u128,
    last: Option<Instant>,
}

const NANO: u128 = 1_000_000_000;

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilled at `rate` per second (both at least 1).
    pub fn new(capacity: u64, rate: u64) -> Self {
        let capacity = capacity.max(1);
        TokenBucket {
            capacity,
            rate: rate.max(1),
            nanotokens: u128::from(capacity) * NANO,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            // A clock that went backwards (it does not: Instant is monotonic) adds nothing.
            let dt = now.saturating_duration_since(last).as_nanos();
            let max = u128::from(self.capacity) * NANO;
            self.nanotokens = self
                .nanotokens
                .saturating_add(dt.saturating_mul(u128::from(self.rate)))
                .min(max);
        }
        self.last = Some(now);
    }

    /// Whole tokens available at `now`.
    pub fn available_at(&mut self, now: Instant) -> u64 {
        self.refill(now);
        // At most `capacity`, which is a u64.
        u64::try_from(self.nanotokens / NANO).unwrap_or(u64::MAX)
    }

    /// Takes up to `n` tokens at `now`; returns how many it took (0..=n).
    pub fn take_at(&mut self, n: u64, now: Instant) -> u64 {
        let got = self.available_at(now).min(n);
        self.nanotokens -= u128::from(got) * NANO;
        got
    }

    /// [`TokenBucket::take_at`] now.
    pub fn take(&mut self, n: u64) -> u64 {
        self.take_at(n, Instant::now())
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn rate(&self) -> u64 {
        self.rate
    }
}

/// How many lines a call site logs before it is limited.
pub const LOG_BURST: u32 = 10;
/// While limited, a call site logs at most one line (with the count of lines it suppressed)
/// per interval; a call site quiet (nothing suppressed) for an interval gets its burst back.
pub const LOG_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct LogState {
    /// Lines logged since the burst was last refilled.
    logged: u32,
    /// When the last line was logged.
    last: Option<Instant>,
    /// Lines suppressed since the last logged one.
    suppressed: u64,
}

/// The limiter of one logging call site: the first [`LOG_BURST`] events, then one per
/// [`LOG_INTERVAL`] carrying how many were suppressed in between. A `static` per call site (the
/// `*_limited!` macros make one), so it costs a short mutex hold per event, and only when the
/// event's level is enabled.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    interval: Duration,
    state: Mutex<LogState>,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimiter {
    /// [`LOG_BURST`] lines, then one per [`LOG_INTERVAL`].
    pub const fn new() -> Self {
        Self::with_limits(LOG_BURST, LOG_INTERVAL)
    }

    pub const fn with_limits(burst: u32, interval: Duration) -> Self {
        LogLimiter {
            burst,
            interval,
            state: Mutex::new(LogState {
                logged: 0,
                last: None,
                suppressed: 0,
            }),
        }
    }

    /// Whether the event at `now` is logged: `Some(n)` with the `n` events suppressed since the
    /// previous logged one, or `None` (suppressed, counted).
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means a panic elsewhere while logging; the counts stay usable.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let since_last = s.last.map(|l| now.saturating_duration_since(l));
        let interval_passed = since_last.is_none_or(|d| d >= self.interval);
        if interval_passed && s.suppressed == 0 {
            s.logged = 0;
        }
        if s.logged < self.burst || interval_passed {
            s.logged = s.logged.saturating_add(1);
            s.last = Some(now);
            Some(std::mem::take(&mut s.suppressed))
        } else {
            s.suppressed = s.suppressed.saturating_add(1);
            None
        }
    }

    /// [`LogLimiter::check_at`] now.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }
}

/// A `tracing` event at `$level` (an identifier: `WARN`, `DEBUG`, ...) through a call-site
/// [`LogLimiter`]; a line after suppressed ones carries `suppressed = N`. Use the
/// `warn_limited!`-style wrappers.
#[macro_export]
#[doc(hidden)]
macro_rules! __event_limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMITER: $crate::ratelimit::LogLimiter = $crate::ratelimit::LogLimiter::new();
        if $crate::__tracing::enabled!($crate::__tracing::Level::$level) {
            match LIMITER.check() {
                Some(0) => $crate::__tracing::event!($crate::__tracing::Level::$level, $($arg)+),
                Some(suppressed) => $crate::__tracing::event!(
                    $crate::__tracing::Level::$level,
                    suppressed,
                    $($arg)+
                ),
                None => {}
            }
        }
    }};
}

/// `tracing::error!` limited per call site (see [`ratelimit`](crate::ratelimit)).
#[macro_export]
macro_rules! error_limited {
    ($($arg:tt)+) => { $crate::__event_limited!(ERROR, $($arg)+) };
}

/// `tracing::warn!` limited per call site (see [`ratelimit`](crate::ratelimit)).
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)+) => { $crate::__event_limited!(WARN, $($arg)+) };
}

/// `tracing::info!` limited per call site (see [`ratelimit`](crate::ratelimit)).
#[macro_export]
macro_rules! info_limited {
    ($($arg:tt)+) => { $crate::__event_limited!(INFO, $($arg)+) };
}

/// `tracing::debug!` limited per call site (see [`ratelimit`](crate::ratelimit)).
#[macro_export]
macro_rules! debug_limited {
    ($($arg:tt)+) => { $crate::__event_limited!(DEBUG, $($arg)+) };
}

/// A `tracing` subscriber for tests: records each event's message and whether it carried a
/// `suppressed` count (install it with `tracing::subscriber::with_default`).
#[derive(Debug, Default)]
pub struct EventCounter {
    events: Mutex<Vec<(String, bool)>>,
}

impl EventCounter {
    /// Events whose message starts with `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        let e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().filter(|(m, _)| m.starts_with(prefix)).count()
    }

    /// Events that carried a `suppressed` field.
    pub fn with_suppressed(&self) -> usize {
        let e = self.events.lock().unwrap_or_else(|p| p.into_inner());
        e.iter().filter(|(_, s)| *s).count()
    }
}

struct Fields(String, bool);

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
        match f.name() {
            "message" => self.0 = format!("{v:?}"),
            "suppressed" => self.1 = true,
            _ => {}
        }
    }
}

impl tracing::Subscriber for EventCounter {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, e: &tracing::Event<'_>) {
        let mut f = Fields(String::new(), false);
        e.record(&mut f);
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((f.0, f.1));
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn bucket_bursts_then_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 10);
        assert_eq!(b.take_at(60, t0), 60);
        assert_eq!(b.take_at(60, t0), 40, "partial grant up to what is left");
        assert_eq!(b.take_at(1, t0), 0);
        // 10 per second: 0.5 s gives 5, in small steps too (no rounding loss).
        let mut got = 0;
        for ms in (10..=500).step_by(10) {
            got += b.take_at(1000, at(t0, ms));
        }
        assert_eq!(got, 5);
        // Never more than the capacity, however long it was idle.
        assert_eq!(b.available_at(at(t0, 3_600_000)), 100);
        // Time going backwards adds nothing.
        assert_eq!(b.take_at(100, at(t0, 3_600_000)), 100);
        assert_eq!(b.take_at(1, at(t0, 1000)), 0);
    }

    #[test]
    fn bucket_bounds_a_flood() {
        // A caller taking as fast as it can for 10 s gets the burst plus the rate times 10 s.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(64 * 1024, 8 * 1024);
        let mut total = 0;
        for us in (0..10_000_000u64).step_by(100) {
            total += b.take_at(64, t0 + Duration::from_micros(us));
        }
        let bound = 64 * 1024 + 10 * 8 * 1024;
        assert!(total <= bound && total > bound - 64, "{total}");
    }

    #[test]
    fn limiter_logs_a_burst_then_one_summary_per_interval() {
        let t0 = Instant::now();
        let l = LogLimiter::with_limits(3, Duration::from_secs(10));
        // A flood of one event per millisecond for 25 s.
        let mut logged = Vec::new();
        for ms in 0..25_000 {
            if let Some(n) = l.check_at(at(t0, ms)) {
                logged.push((ms, n));
            }
        }
        assert_eq!(
            logged,
            vec![(0, 0), (1, 0), (2, 0), (10_002, 9_999), (20_002, 9_999)]
        );
        // The flood stops; the next event reports the tail, and after a quiet interval the
        // burst is back.
        assert_eq!(l.check_at(at(t0, 40_000)), Some(4_997));
        assert_eq!(l.check_at(at(t0, 50_000)), Some(0));
        assert_eq!(l.check_at(at(t0, 50_001)), Some(0));
        assert_eq!(l.check_at(at(t0, 50_002)), Some(0));
        assert_eq!(l.check_at(at(t0, 50_003)), None);
    }

    #[test]
    fn limiter_sites_are_independent() {
        let t0 = Instant::now();
        let a = LogLimiter::with_limits(1, Duration::from_secs(1));
        let b = LogLimiter::with_limits(1, Duration::from_secs(1));
        assert_eq!(a.check_at(t0), Some(0));
        assert_eq!(a.check_at(t0), None);
        assert_eq!(b.check_at(t0), Some(0));
    }

    #[test]
    fn each_macro_call_site_logs_its_burst_only() {
        let counter = std::sync::Arc::new(EventCounter::default());
        tracing::subscriber::with_default(counter.clone(), || {
            for i in 0..1000 {
                crate::warn_limited!(i, "site a");
                crate::debug_limited!(error = %"x", "site b {i}");
                crate::info_limited!("site c");
                crate::error_limited!(i, "site d");
            }
        });
        // 1000 calls per site within far less than LOG_INTERVAL: the burst of each.
        for site in ["site a", "site b", "site c", "site d"] {
            assert_eq!(counter.count(site), LOG_BURST as usize, "{site}");
        }
        assert_eq!(counter.with_suppressed(), 0);
    }
}
