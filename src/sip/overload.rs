//! Admission rate limiting, sans-IO: a token bucket refilled by the time it is given.

use std::time::Instant;

/// Admits at most `rate` events per second on average, with bursts of up to `rate`.
#[derive(Debug, Clone)]
pub(crate) struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimiter {
    /// A limiter of `per_second` events; 0 admits everything.
    pub(crate) fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second);
        Self {
            rate,
            tokens: rate,
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
            self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
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
    fn bursts_up_to_the_rate_then_refills_with_time() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(10);
        let admitted = (0..15).filter(|_| l.admit(t0)).count();
        assert_eq!(admitted, 10);
        assert!(!l.admit(t0 + Duration::from_millis(50)));
        assert!(l.admit(t0 + Duration::from_millis(100)));
        // A full second later the bucket is full again, never fuller.
        let t2 = t0 + Duration::from_secs(5);
        assert_eq!((0..20).filter(|_| l.admit(t2)).count(), 10);
        let mut unlimited = RateLimiter::new(0);
        assert!((0..1000).all(|_| unlimited.admit(t0)));
    }
}
