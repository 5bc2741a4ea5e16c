//! Admission rate limiting, sans-IO: a token bucket refilled by the time it is given.

use std::time::Instant;

/// Admits at most `rate` events per second on average, with bursts of up to a tenth of a
/// second's worth (at least 10 events, or `rate` when that is lower). A whole second's worth
/// at once would let a switch limited to its highest sustained rate take twice that rate for
/// the first second of an overload, which is when it can least afford it.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimiter {
    /// A limiter of `per_second` events; 0 admits everything.
    pub(crate) fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        let burst = (rate / 10.0).max(rate.min(10.0));
        Self {
            rate,
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Whether one more event is admitted at `now`.
    pub(crate) fn admit(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_up_to_a_tenth_of_a_second_then_refills_with_time() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(1000);
        assert_eq!((0..1500).filter(|_| l.admit(t0)).count(), 100);
        assert!(!l.admit(t0 + Duration::from_micros(500)));
        assert!(l.admit(t0 + Duration::from_millis(1)));
        // Long after, the bucket is full again, never fuller.
        let t2 = t0 + Duration::from_secs(5);
        assert_eq!((0..2000).filter(|_| l.admit(t2)).count(), 100);
        // Over a second of steady arrivals, the rate passes and no more.
        let t3 = t2 + Duration::from_secs(5);
        let mut l = RateLimiter::new(1000);
        let admitted = (0..4000)
            .filter(|i| l.admit(t3 + Duration::from_micros(250 * i)))
            .count();
        assert!((1000..=1100).contains(&admitted), "{admitted}");
    }

    #[test]
    fn low_rates_burst_up_to_ten_or_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10);
        assert_eq!((0..15).filter(|_| l.admit(t0)).count(), 10);
        assert!(!l.admit(t0 + Duration::from_millis(50)));
        assert!(l.admit(t0 + Duration::from_millis(100)));
        let mut l = RateLimiter::new(3);
        assert_eq!((0..15).filter(|_| l.admit(t0)).count(), 3);
        let mut l = RateLimiter::new(50);
        assert_eq!((0..60).filter(|_| l.admit(t0)).count(), 10);
        let mut unlimited = RateLimiter::new(0);
        assert!((0..1000).all(|_| unlimited.admit(t0)));
    }
}
