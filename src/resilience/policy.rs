//! When a failed try is tried again, and how long to wait first.
//!
//! The rules, in the order they are checked:
//! 1. Only before any response byte went to the client (the proxy commits
//!    to a response before streaming it) and only while the request body
//!    still fits the replay buffer.
//! 2. Only for the conditions the route lists in `retry.on`. `5xx` and
//!    `gateway-error` include the cases where no response came at all
//!    (connect failure, refused stream, reset, per-try timeout), as in Envoy.
//! 3. A plain-HTTP request with a non-idempotent method (POST, PATCH) is
//!    retried only when it provably never reached the app (connect failure,
//!    refused stream), unless the route sets `retry.non_idempotent: true`.
//!    gRPC calls are POSTs: listing gRPC codes on the route is the opt-in.
//! 4. Only while the retry budget allows: retries may add at most `ratio`
//!    of the recent request rate, plus `min_per_second` — so a failing
//!    upstream sees at most (1 + ratio) × the traffic, never attempts ×.
//! 5. Only when the time left is longer than the cluster's median latency:
//!    a retry that cannot finish in time would only turn the real error into
//!    DEADLINE_EXCEEDED.

use std::time::Duration;

use http::Method;
use tower::retry::budget::{Budget, TpsBudget};

use crate::config;
use crate::http::grpc;

/// What one try came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    ConnectFailure,
    /// Refused before processing (REFUSED_STREAM, or above a GOAWAY's last stream).
    Refused,
    /// Reset or connection lost before a response head.
    Reset,
    PerTryTimeout,
    /// A response head with this HTTP status and, for gRPC, grpc-status when known.
    Response(u16, Option<u8>),
}

impl Outcome {
    /// Whether the app provably never saw the request.
    pub fn never_reached_app(self) -> bool {
        matches!(self, Outcome::ConnectFailure | Outcome::Refused)
    }

    /// Whether this counts as a failure of the endpoint (for outlier detection).
    pub fn is_failure(self) -> bool {
        match self {
            Outcome::Response(s, g) => {
                s >= 500
                    || matches!(
                        g,
                        Some(
                            grpc::UNAVAILABLE
                                | grpc::INTERNAL
                                | grpc::DEADLINE_EXCEEDED
                                | grpc::UNKNOWN
                                | grpc::DATA_LOSS
                        )
                    )
            }
            _ => true,
        }
    }
}

/// What is known after a try, for the decision whether to make another.
#[derive(Clone, Copy, Debug)]
pub struct TryReport<'a> {
    pub outcome: Outcome,
    /// This try's number, 1 for the first.
    pub attempt: u32,
    pub method: &'a Method,
    pub grpc: bool,
    /// Time left before the request's deadline, when it has one.
    pub time_left: Option<Duration>,
    /// The whole request body read so far is still kept for a replay.
    pub replayable: bool,
    /// The cluster's median latency: a retry needs about this long.
    pub median_latency: Duration,
}

/// The decision after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Try again after this wait.
    Retry(Duration),
    /// This try's answer stands.
    Stop(Stop),
}

/// Why no other try follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// The outcome is not one the route retries, or it was the last try.
    Final,
    /// The request's deadline has passed.
    OutOfTime,
    /// Worth a retry, but the request body outgrew the replay buffer.
    BodyTooLarge,
    /// Worth a retry, but less time is left than a try usually takes.
    NoTimeForAnother,
    /// Worth a retry, but the retry budget is spent.
    BudgetExhausted,
}

/// A route's parsed `retry:` block.
pub struct RetryPolicy {
    /// Total tries, the first included.
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub replay_bytes: usize,
    pub non_idempotent: bool,
    on: Conditions,
    base: Duration,
    max: Duration,
    budget: TpsBudget,
}

#[derive(Default, Debug, PartialEq, Eq)]
struct Conditions {
    connect_failure: bool,
    refused: bool,
    reset: bool,
    per_try_timeout: bool,
    any_5xx: bool,
    gateway_error: bool,
    statuses: Vec<u16>,
    /// Bit n set: retry on grpc-status n.
    grpc: u32,
}

/// The names `retry.on` accepts, for validation and docs.
pub const CONDITIONS: &[&str] = &[
    "connect-failure",
    "refused-stream",
    "reset",
    "5xx",
    "gateway-error",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
    "unknown",
    "<HTTP status, e.g. \"503\">",
];

/// Parse one `retry.on` entry; `Err` names what is wrong.
fn parse_condition(c: &mut Conditions, s: &str) -> Result<(), String> {
    let grpc_bit = |code: u8| 1u32 << code;
    match s {
        "connect-failure" => c.connect_failure = true,
        "refused-stream" => c.refused = true,
        "reset" => {
            c.reset = true;
            c.per_try_timeout = true;
        }
        "5xx" => c.any_5xx = true,
        "gateway-error" => c.gateway_error = true,
        "cancelled" => c.grpc |= grpc_bit(grpc::CANCELLED),
        "unknown" => c.grpc |= grpc_bit(grpc::UNKNOWN),
        "deadline-exceeded" => c.grpc |= grpc_bit(grpc::DEADLINE_EXCEEDED),
        "resource-exhausted" => c.grpc |= grpc_bit(grpc::RESOURCE_EXHAUSTED),
        "internal" => c.grpc |= grpc_bit(grpc::INTERNAL),
        "unavailable" => c.grpc |= grpc_bit(grpc::UNAVAILABLE),
        other => match other.parse::<u16>() {
            Ok(code) if (100..=599).contains(&code) => c.statuses.push(code),
            _ => {
                return Err(format!(
                    "unknown retry condition {other:?}; expected one of {}",
                    CONDITIONS.join(", ")
                ))
            }
        },
    }
    Ok(())
}

/// Check every entry of a `retry.on` list (used by validation).
pub fn check_conditions(on: &[String]) -> Vec<(usize, String)> {
    let mut c = Conditions::default();
    on.iter()
        .enumerate()
        .filter_map(|(i, s)| parse_condition(&mut c, s).err().map(|e| (i, e)))
        .collect()
}

impl RetryPolicy {
    /// Build from a validated `retry:` block.
    pub fn from_config(r: &config::RetryPolicy) -> Result<Self, String> {
        let mut on = Conditions::default();
        for s in &r.on {
            parse_condition(&mut on, s)?;
        }
        let (base, max) = r.backoff.as_ref().map_or(
            (Duration::from_millis(25), Duration::from_millis(250)),
            |b| (b.base.get(), b.max.get()),
        );
        let (ratio, min) = r
            .budget
            .as_ref()
            .map_or((0.2, 10), |b| (b.ratio, b.min_per_second));
        Ok(RetryPolicy {
            attempts: r.attempts.max(1),
            per_try_timeout: r.per_try_timeout.map(|d| d.get()),
            replay_bytes: r
                .replay_buffer_bytes
                .unwrap_or(super::replay::DEFAULT_REPLAY_BYTES),
            non_idempotent: r.non_idempotent,
            on,
            base,
            max: max.max(base),
            budget: TpsBudget::new(
                Duration::from_secs(10),
                min,
                ratio.clamp(0.0, 1000.0) as f32,
            ),
        })
    }

    /// Whether `outcome` is one this route retries, for this request.
    pub fn retries(&self, outcome: Outcome, method: &Method, is_grpc: bool) -> bool {
        let on = &self.on;
        let no_response = on.any_5xx || on.gateway_error;
        let listed = match outcome {
            Outcome::ConnectFailure => on.connect_failure || no_response,
            Outcome::Refused => on.refused || on.connect_failure || no_response || on.reset,
            Outcome::Reset => on.reset || no_response,
            Outcome::PerTryTimeout => on.per_try_timeout || no_response,
            Outcome::Response(status, grpc_status) => {
                (on.any_5xx && status >= 500)
                    || (on.gateway_error && matches!(status, 502..=504))
                    || on.statuses.contains(&status)
                    || grpc_status.is_some_and(|g| g < 32 && on.grpc & (1 << g) != 0)
            }
        };
        if !listed {
            return false;
        }
        let idempotent = !matches!(*method, Method::POST | Method::PATCH | Method::CONNECT);
        is_grpc || idempotent || self.non_idempotent || outcome.never_reached_app()
    }

    /// Whether another try follows the one `r` reports, and after what wait.
    /// Rules 1–5 of this module, in order; a retry taken here is withdrawn
    /// from the budget.
    pub fn decide(&self, r: &TryReport<'_>) -> Decision {
        if r.time_left.is_some_and(|l| l.is_zero()) {
            return Decision::Stop(Stop::OutOfTime);
        }
        if r.attempt >= self.attempts || !self.retries(r.outcome, r.method, r.grpc) {
            return Decision::Stop(Stop::Final);
        }
        if !r.replayable {
            return Decision::Stop(Stop::BodyTooLarge);
        }
        if r.time_left.is_some_and(|l| l < r.median_latency) {
            return Decision::Stop(Stop::NoTimeForAnother);
        }
        if !self.withdraw() {
            return Decision::Stop(Stop::BudgetExhausted);
        }
        let wait = self.backoff(r.attempt);
        Decision::Retry(r.time_left.map_or(wait, |l| wait.min(l)))
    }

    /// Whether this route wants gRPC statuses read (so a response may be held for its trailers).
    pub fn wants_grpc_status(&self) -> bool {
        self.on.grpc != 0
    }

    /// Count a request toward the budget.
    pub fn deposit(&self) {
        self.budget.deposit();
    }

    /// Take one retry from the budget; false when it is spent.
    pub fn withdraw(&self) -> bool {
        self.budget.withdraw()
    }

    /// The wait before retry number `retry` (1 for the first retry):
    /// exponential with full jitter, uniform in [0, min(max, base × 2^(retry-1))].
    pub fn backoff(&self, retry: u32) -> Duration {
        backoff(self.base, self.max, retry, fastrand::f64())
    }
}

/// Full-jitter backoff with the random draw `r` in [0, 1).
pub fn backoff(base: Duration, max: Duration, retry: u32, r: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << retry.saturating_sub(1).min(20));
    exp.min(max).mul_f64(r.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str]) -> RetryPolicy {
        let yaml = format!(
            "attempts: 3\non: [{}]",
            on.iter()
                .map(|s| format!("\"{s}\""))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let cfg: config::RetryPolicy = serde_yaml::from_str(&yaml).unwrap();
        RetryPolicy::from_config(&cfg).unwrap()
    }

    #[test]
    fn conditions_select_outcomes() {
        let p = policy(&["unavailable", "503"]);
        let get = Method::GET;
        assert!(p.retries(Outcome::Response(200, Some(14)), &Method::POST, true));
        assert!(!p.retries(Outcome::Response(200, Some(13)), &Method::POST, true));
        assert!(p.retries(Outcome::Response(503, None), &get, false));
        assert!(!p.retries(Outcome::Response(502, None), &get, false));
        assert!(!p.retries(Outcome::Reset, &get, false));
        let p = policy(&["5xx"]);
        for o in [
            Outcome::ConnectFailure,
            Outcome::Refused,
            Outcome::Reset,
            Outcome::PerTryTimeout,
            Outcome::Response(500, None),
        ] {
            assert!(p.retries(o, &get, false), "{o:?}");
        }
        assert!(!p.retries(Outcome::Response(404, None), &get, false));
        let p = policy(&["gateway-error"]);
        assert!(p.retries(Outcome::Response(504, None), &get, false));
        assert!(!p.retries(Outcome::Response(500, None), &get, false));
    }

    #[test]
    fn post_is_retried_only_when_it_never_reached_the_app() {
        let p = policy(&["5xx"]);
        assert!(!p.retries(Outcome::Response(503, None), &Method::POST, false));
        assert!(!p.retries(Outcome::Reset, &Method::PATCH, false));
        assert!(p.retries(Outcome::ConnectFailure, &Method::POST, false));
        assert!(p.retries(Outcome::Refused, &Method::POST, false));
        // gRPC calls are POSTs; the route's list is their opt-in.
        assert!(p.retries(Outcome::Response(503, None), &Method::POST, true));
    }

    fn report(outcome: Outcome, attempt: u32) -> TryReport<'static> {
        TryReport {
            outcome,
            attempt,
            method: &Method::GET,
            grpc: false,
            time_left: None,
            replayable: true,
            median_latency: Duration::from_millis(10),
        }
    }

    #[test]
    fn decide_follows_the_rules_in_order() {
        let p = policy(&["5xx"]);
        let fail = Outcome::Response(503, None);
        assert!(
            matches!(p.decide(&report(fail, 1)), Decision::Retry(w) if w <= Duration::from_millis(25))
        );
        assert_eq!(
            p.decide(&report(fail, 3)),
            Decision::Stop(Stop::Final),
            "last try"
        );
        assert_eq!(
            p.decide(&report(Outcome::Response(200, None), 1)),
            Decision::Stop(Stop::Final)
        );
        let out_of_time = TryReport {
            time_left: Some(Duration::ZERO),
            ..report(fail, 1)
        };
        assert_eq!(p.decide(&out_of_time), Decision::Stop(Stop::OutOfTime));
        let too_big = TryReport {
            replayable: false,
            ..report(fail, 1)
        };
        assert_eq!(p.decide(&too_big), Decision::Stop(Stop::BodyTooLarge));
        let short = TryReport {
            time_left: Some(Duration::from_millis(5)),
            ..report(fail, 1)
        };
        assert_eq!(p.decide(&short), Decision::Stop(Stop::NoTimeForAnother));
        // The wait never runs past the deadline.
        let tight = TryReport {
            time_left: Some(Duration::from_millis(12)),
            median_latency: Duration::ZERO,
            ..report(fail, 3 - 1)
        };
        assert!(matches!(p.decide(&tight), Decision::Retry(w) if w <= Duration::from_millis(12)));
    }

    #[tokio::test(start_paused = true)]
    async fn decide_stops_when_the_budget_is_spent() {
        let cfg: config::RetryPolicy = serde_yaml::from_str(
            "attempts: 3\non: [\"5xx\"]\nbudget: { ratio: 0.0, min_per_second: 1 }",
        )
        .unwrap();
        let p = RetryPolicy::from_config(&cfg).unwrap();
        let fail = report(Outcome::Reset, 1);
        let mut retried = 0;
        while let Decision::Retry(_) = p.decide(&fail) {
            retried += 1;
            assert!(retried < 100, "the budget never ran out");
        }
        assert_eq!(p.decide(&fail), Decision::Stop(Stop::BudgetExhausted));
        assert!(retried <= 11, "only the reserve: {retried}");
    }

    #[test]
    fn unknown_conditions_are_named() {
        let errs = check_conditions(&["5xx".into(), "teapot".into(), "999".into()]);
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].0, 1);
        assert!(errs[0].1.contains("unknown retry condition \"teapot\""));
    }

    #[test]
    fn backoff_is_capped_exponential_with_full_jitter() {
        let (b, m) = (Duration::from_millis(25), Duration::from_millis(250));
        assert_eq!(backoff(b, m, 1, 0.999_999).as_millis(), 24);
        assert_eq!(backoff(b, m, 2, 0.5), Duration::from_millis(25));
        assert_eq!(backoff(b, m, 3, 1.0), Duration::from_millis(100));
        assert_eq!(backoff(b, m, 10, 1.0), m, "capped at max");
        assert_eq!(
            backoff(b, m, 3, 0.0),
            Duration::ZERO,
            "full jitter reaches zero"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_plus_reserve() {
        let cfg: config::RetryPolicy = serde_yaml::from_str(
            "attempts: 3\non: [\"5xx\"]\nbudget: { ratio: 0.2, min_per_second: 1 }",
        )
        .unwrap();
        let p = RetryPolicy::from_config(&cfg).unwrap();
        for _ in 0..1000 {
            p.deposit();
        }
        let mut allowed = 0;
        while p.withdraw() {
            allowed += 1;
            assert!(allowed < 10_000, "budget never ran out");
        }
        // 20% of 1000 requests, plus a reserve of 1/s over the 10 s window.
        assert!((200..=215).contains(&allowed), "allowed {allowed}");
        // Time passes: the window slides and the budget refills from the reserve only.
        tokio::time::advance(Duration::from_secs(11)).await;
        let mut later = 0;
        while p.withdraw() {
            later += 1;
            assert!(later < 10_000);
        }
        assert!(later <= 11, "after the window, only the reserve: {later}");
    }
}
