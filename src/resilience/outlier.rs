//! Passive outlier detection: an endpoint that fails `consecutive_failures`
//! times in a row (5xx, gRPC UNAVAILABLE/INTERNAL/…, connect failures,
//! resets, timeouts) is ejected from balancing for `base_ejection_time ×
//! times ejected`, capped at `max_ejection_time`. `max_ejection_percent`
//! bounds how much of the cluster can be out at once (one endpoint may
//! always be ejected, as in Envoy).

use std::time::Duration;

use crate::config;

#[derive(Clone, Debug)]
pub struct OutlierDetection {
    pub consecutive_failures: u32,
    pub base_ejection_time: Duration,
    pub max_ejection_time: Duration,
    pub max_ejection_percent: u32,
}

impl OutlierDetection {
    pub fn from_config(c: &config::OutlierDetection) -> Self {
        OutlierDetection {
            consecutive_failures: c.consecutive_failures.unwrap_or(5).max(1),
            base_ejection_time: c
                .base_ejection_time
                .map_or(Duration::from_secs(30), |d| d.get()),
            max_ejection_time: c
                .max_ejection_time
                .map_or(Duration::from_secs(300), |d| d.get()),
            max_ejection_percent: c.max_ejection_percent.unwrap_or(10).min(100),
        }
    }

    /// How long the `times`-th ejection of an endpoint lasts.
    pub fn ejection_time(&self, times: u32) -> Duration {
        self.base_ejection_time
            .saturating_mul(times.max(1))
            .min(self.max_ejection_time.max(self.base_ejection_time))
    }

    /// Whether one more of `total` endpoints may be ejected while `ejected` already are.
    pub fn may_eject(&self, ejected: usize, total: usize) -> bool {
        if self.max_ejection_percent == 0 {
            return false;
        }
        let allowed = (total * self.max_ejection_percent as usize / 100).max(1);
        ejected < allowed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn od(pct: u32) -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 5,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(100),
            max_ejection_percent: pct,
        }
    }

    #[test]
    fn ejection_time_grows_and_is_capped() {
        let o = od(50);
        assert_eq!(o.ejection_time(1), Duration::from_secs(30));
        assert_eq!(o.ejection_time(3), Duration::from_secs(90));
        assert_eq!(o.ejection_time(4), Duration::from_secs(100));
    }

    #[test]
    fn max_percent_bounds_ejections_but_one_is_always_allowed() {
        let o = od(50);
        assert!(o.may_eject(0, 4));
        assert!(o.may_eject(1, 4));
        assert!(!o.may_eject(2, 4));
        let o = od(10);
        assert!(o.may_eject(0, 3), "one may always go");
        assert!(!o.may_eject(1, 3));
        assert!(!od(0).may_eject(0, 10));
    }
}
