//! The cluster call: tries, each to an endpoint the balancer picks (one not
//! tried yet when it can), for as long as the route's retry policy decides
//! ([`RetryPolicy::decide`]), within the request's deadline.
//!
//! The upstream is passed in ([`Upstream`]), so the retry, deadline, budget
//! and outlier behaviour of this loop is tested on paused time below, with
//! scripted upstreams, beside the real-time integration tests.

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use http::request::Parts;
use http::{Request, Response};
use tokio::time::Instant;

use super::attempt::{attempt, TryError, TrySpec, Upstream};
use crate::cluster::{Cluster, Endpoint, InFlight};
use crate::error::{ErrorKind, ProxyError};
use crate::http::body::{ProxyBody, RequestBody};
use crate::resilience::policy::{Decision, Outcome, RetryPolicy, Stop, TryReport};
use crate::resilience::replay::Replay;
use crate::upstream::{Protocol, UpstreamError};

/// One request's call to its cluster.
pub(super) struct Call<'a> {
    pub cluster: &'a Arc<Cluster>,
    pub policy: Option<&'a RetryPolicy>,
    /// Passthrough: the one endpoint (the original destination).
    pub endpoint: Option<Arc<Endpoint>>,
    pub proto: Protocol,
    pub grpc: bool,
    pub deadline: Option<Instant>,
    /// The request's timeout (route or grpc-timeout), for the message when it passes.
    pub timeout: Option<Duration>,
    pub stream_idle_timeout: Duration,
    pub bytes_in: &'a Arc<AtomicU64>,
}

/// What the call came to.
pub(super) struct Called {
    pub attempts: u32,
    /// The last try's endpoint, counted in flight until the response ends.
    pub in_flight: Option<InFlight>,
    /// Report the try to outlier detection when the stream ends (a
    /// response whose head looked fine: the stream may still break, and a
    /// gRPC status may come in the trailers).
    pub report_at_end: bool,
    pub result: Result<Response<ProxyBody>, ProxyError>,
}

impl Called {
    fn failed(attempts: u32, in_flight: Option<InFlight>, e: ProxyError) -> Called {
        Called {
            attempts,
            in_flight,
            report_at_end: false,
            result: Err(e),
        }
    }
}

/// Send the request, trying again as the route's retry policy decides.
pub(super) async fn call<U: Upstream>(
    c: Call<'_>,
    head: Parts,
    body: ProxyBody,
    upstream: &U,
) -> Called {
    let cluster = c.cluster;
    let tries = c.policy.map_or(1, |p| p.attempts);
    // Nothing is kept of the body when no other try can follow.
    let replay_cap = match c.policy {
        Some(p) if tries > 1 => p.replay_bytes,
        _ => 0,
    };
    let replay = Replay::new(body, replay_cap, c.bytes_in.clone());
    if let Some(p) = c.policy {
        p.deposit();
    }
    let method = head.method.clone();
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut head = Some(head);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let picked = c.endpoint.clone().or_else(|| {
            head.as_ref()
                .and_then(|h| cluster.pick_avoiding(&h.headers, &tried))
        });
        let Some(endpoint) = picked else {
            let what = format!("cluster {} has no healthy endpoint", cluster.name);
            let e = ProxyError::new(ErrorKind::NoHealthyUpstream, what);
            return Called::failed(attempts, None, e);
        };
        let last = attempts >= tries;
        if !last {
            tried.push(endpoint.addr);
        }
        let in_flight = endpoint.start_request();

        // The head is copied only while another try may follow.
        let parts = if last {
            head.take()
        } else {
            head.as_ref().map(clone_head)
        };
        let Some(parts) = parts else {
            let e = ProxyError::new(ErrorKind::BadRequest, "request head lost");
            return Called::failed(attempts, Some(in_flight), e);
        };
        let per_try = c
            .policy
            .and_then(|p| p.per_try_timeout)
            .map(|t| Instant::now() + t);
        let spec = TrySpec {
            attempt: attempts,
            deadline: match (c.deadline, per_try) {
                (Some(d), Some(t)) => Some(d.min(t)),
                (d, t) => d.or(t),
            },
            capped_by_try: per_try.is_some_and(|t| c.deadline.is_none_or(|d| t < d)),
            grpc: c.grpc,
            count_attempts: c.policy.is_some(),
            hold_for_status: !last && c.policy.is_some_and(|p| p.wants_grpc_status()),
            stream_idle_timeout: c.stream_idle_timeout,
        };
        let req = Request::from_parts(parts, RequestBody::Client(replay.next_try()));
        let (outcome, result) = attempt(
            upstream, cluster, &endpoint, c.proto, req, &spec, c.bytes_in,
        )
        .await;

        // Ends that say nothing about the endpoint, and allow no other try.
        let stop_now = match &result {
            Err(TryError::Idle) => {
                cluster.metrics.timeout.inc();
                let what = format!(
                    "no response and no request byte for {:?} (stream_idle_timeout)",
                    c.stream_idle_timeout
                );
                Some(ProxyError::new(ErrorKind::Timeout, what))
            }
            Err(TryError::Upstream(e @ UpstreamError::Overflow { .. })) => {
                cluster.metrics.overflow.inc();
                Some(ProxyError::upstream(e))
            }
            Err(TryError::Upstream(e @ UpstreamError::Invalid { .. })) => {
                Some(ProxyError::upstream(e))
            }
            // The client's own request body failed (malformed framing, a
            // reset mid-upload): the request's fault, never the endpoint's.
            Err(_) => replay.client_error().map(|why| {
                let what = format!("the request body could not be read: {why}");
                ProxyError::new(ErrorKind::BadRequest, what)
            }),
            Ok(_) => None,
        };
        if let Some(e) = stop_now {
            return Called::failed(attempts, Some(in_flight), e);
        }

        // What the try says about the endpoint.
        count_attempt(cluster, outcome);
        if outcome.is_failure() {
            endpoint.record_failure();
        }
        // A response that looks fine is reported when its stream ends: the
        // stream may still break (the upstream resets it, cuts the body
        // short), and a gRPC status may come in the trailers.
        let report_at_end = matches!(outcome, Outcome::Response(..)) && !outcome.is_failure();
        if !report_at_end {
            cluster.report(&endpoint, outcome.is_failure());
        }

        // Try again?
        let time_left = c
            .deadline
            .map(|d| d.saturating_duration_since(Instant::now()));
        let decision = match c.policy {
            Some(p) => p.decide(&TryReport {
                outcome,
                attempt: attempts,
                method: &method,
                grpc: c.grpc,
                time_left,
                replayable: replay.can_retry(),
                median_latency: cluster.median_latency.get(),
            }),
            None => Decision::Stop(Stop::Final),
        };
        let stop = match decision {
            Decision::Retry(wait) => {
                cluster.metrics.retries.inc();
                drop((result, in_flight));
                tokio::time::sleep(wait).await;
                continue;
            }
            Decision::Stop(stop) => stop,
        };
        match stop {
            Stop::BodyTooLarge => cluster.metrics.retry_skipped_body.inc(),
            Stop::NoTimeForAnother => cluster.metrics.retry_skipped_deadline.inc(),
            Stop::BudgetExhausted => cluster.metrics.retry_budget_exhausted.inc(),
            Stop::Final | Stop::OutOfTime => {}
        }

        // This answer stands.
        let result = match result {
            Ok(resp) => {
                replay.commit();
                Ok(resp)
            }
            Err(TryError::Timeout | TryError::Idle) => {
                let out_of_time = time_left.is_some_and(|l| l.is_zero());
                let what = if out_of_time {
                    format!("no response within {:?}", c.timeout.unwrap_or_default())
                } else {
                    "no response within the per-try timeout".to_owned()
                };
                Err(ProxyError::new(ErrorKind::Timeout, what))
            }
            Err(TryError::Upstream(e)) => Err(ProxyError::upstream(&e)),
        };
        return Called {
            attempts,
            in_flight: Some(in_flight),
            report_at_end,
            result,
        };
    }
}

fn clone_head(p: &Parts) -> Parts {
    let mut r = Request::new(());
    *r.method_mut() = p.method.clone();
    *r.uri_mut() = p.uri.clone();
    *r.version_mut() = p.version;
    *r.headers_mut() = p.headers.clone();
    r.into_parts().0
}

fn count_attempt(cluster: &Cluster, outcome: Outcome) {
    let m = &cluster.metrics;
    match outcome {
        Outcome::Response(..) if !outcome.is_failure() => m.success.inc(),
        Outcome::Response(..) => m.failure.inc(),
        Outcome::PerTryTimeout => m.timeout.inc(),
        Outcome::Reset | Outcome::Refused => m.reset.inc(),
        Outcome::ConnectFailure => m.connect_failure.inc(),
    }
}

#[cfg(test)]
mod tests {
    //! The retry loop on paused time, against scripted upstreams: each step
    //! of a script answers one try, after a delay, with a response or an error.

    use std::collections::VecDeque;
    use std::sync::Mutex;

    use super::*;
    use crate::config;
    use crate::metrics::Metrics;
    use http::Method;

    enum Answer {
        Status(u16),
        Reset,
        Overflow,
        /// Never answers.
        Hang,
    }

    /// What one try showed: the endpoint, x-skiff-attempt-count, grpc-timeout.
    type Seen = (SocketAddr, Option<String>, Option<String>);

    /// A scripted upstream: one step per try, and a record of every try.
    #[derive(Default)]
    struct Script {
        steps: Mutex<VecDeque<(Duration, Answer)>>,
        seen: Mutex<Vec<Seen>>,
    }

    impl Script {
        fn new(steps: Vec<(u64, Answer)>) -> Script {
            let steps = steps
                .into_iter()
                .map(|(ms, a)| (Duration::from_millis(ms), a))
                .collect();
            Script {
                steps: Mutex::new(steps),
                seen: Mutex::default(),
            }
        }
        fn seen(&self) -> Vec<Seen> {
            self.seen.lock().unwrap().clone()
        }
    }

    impl Upstream for Script {
        fn send(
            &self,
            endpoint: &Endpoint,
            _proto: Protocol,
            req: Request<RequestBody>,
        ) -> impl std::future::Future<Output = Result<Response<ProxyBody>, UpstreamError>> + Send
        {
            let header = |n: &str| req.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
            self.seen.lock().unwrap().push((
                endpoint.addr,
                header("x-skiff-attempt-count"),
                header("grpc-timeout"),
            ));
            let step = self.steps.lock().unwrap().pop_front();
            let addr = endpoint.addr;
            async move {
                let (delay, answer) = step.unwrap_or((Duration::ZERO, Answer::Status(200)));
                tokio::time::sleep(delay).await;
                match answer {
                    Answer::Status(s) => Ok(Response::builder()
                        .status(s)
                        .body(ProxyBody::empty())
                        .unwrap()),
                    Answer::Reset => Err(UpstreamError::Reset {
                        addr,
                        reason: "scripted reset".into(),
                    }),
                    Answer::Overflow => Err(UpstreamError::Overflow {
                        addr,
                        what: "a connection",
                        limit: 1,
                    }),
                    Answer::Hang => std::future::pending().await,
                }
            }
        }
    }

    fn cluster(extra: &str) -> Arc<Cluster> {
        let yaml = format!(
            "name: backend\nendpoints: [\"127.0.0.1:1\", \"127.0.0.1:2\", \"127.0.0.1:3\"]\n{extra}"
        );
        let cfg: config::Cluster = serde_yaml::from_str(&yaml).unwrap();
        Arc::new(Cluster::plain(&cfg, &Metrics::new().unwrap()))
    }

    fn policy(yaml: &str) -> RetryPolicy {
        let cfg: config::RetryPolicy = serde_yaml::from_str(yaml).unwrap();
        RetryPolicy::from_config(&cfg).unwrap()
    }

    fn head(method: Method) -> Parts {
        Request::builder()
            .method(method)
            .uri("http://backend/svc.Echo/Unary")
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    struct Run<'a> {
        cluster: &'a Arc<Cluster>,
        policy: Option<&'a RetryPolicy>,
        timeout: Option<Duration>,
        grpc: bool,
        method: Method,
    }

    impl Run<'_> {
        async fn go(self, script: &Script) -> Called {
            let bytes_in = Arc::new(AtomicU64::new(0));
            let c = Call {
                cluster: self.cluster,
                policy: self.policy,
                endpoint: None,
                proto: Protocol::Http2,
                grpc: self.grpc,
                deadline: self.timeout.map(|t| Instant::now() + t),
                timeout: self.timeout,
                stream_idle_timeout: Duration::from_secs(300),
                bytes_in: &bytes_in,
            };
            call(c, head(self.method), ProxyBody::empty(), script).await
        }
    }

    fn run<'a>(cluster: &'a Arc<Cluster>, policy: Option<&'a RetryPolicy>) -> Run<'a> {
        Run {
            cluster,
            policy,
            timeout: None,
            grpc: false,
            method: Method::GET,
        }
    }

    fn status(c: &Called) -> u16 {
        c.result.as_ref().map(|r| r.status().as_u16()).unwrap_or(0)
    }

    fn kind(c: &Called) -> Option<ErrorKind> {
        c.result.as_ref().err().map(|e| e.kind)
    }

    #[tokio::test(start_paused = true)]
    async fn a_reset_is_tried_again_on_another_endpoint() {
        let cl = cluster("");
        let p = policy("attempts: 3\non: [reset]");
        let script = Script::new(vec![(5, Answer::Reset), (5, Answer::Status(200))]);
        let called = run(&cl, Some(&p)).go(&script).await;
        assert_eq!(status(&called), 200);
        assert_eq!(called.attempts, 2);
        let seen = script.seen();
        assert_ne!(seen[0].0, seen[1].0, "the retry avoids the endpoint tried");
        assert_eq!(seen[0].1.as_deref(), Some("1"));
        assert_eq!(seen[1].1.as_deref(), Some("2"));
        assert_eq!(cl.metrics.retries.get(), 1);
        assert_eq!(cl.metrics.reset.get(), 1);
        assert_eq!(cl.metrics.success.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_policy_the_first_answer_stands() {
        let cl = cluster("");
        let script = Script::new(vec![(0, Answer::Reset)]);
        let called = run(&cl, None).go(&script).await;
        assert_eq!(kind(&called), Some(ErrorKind::UpstreamReset));
        assert_eq!(called.attempts, 1);
        assert!(
            script.seen()[0].1.is_none(),
            "no attempt count without a policy"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_post_that_may_have_reached_the_app_is_not_retried() {
        let cl = cluster("");
        let p = policy("attempts: 3\non: [5xx]");
        let script = Script::new(vec![(0, Answer::Status(503)), (0, Answer::Status(200))]);
        let called = Run {
            method: Method::POST,
            ..run(&cl, Some(&p))
        }
        .go(&script)
        .await;
        assert_eq!(status(&called), 503);
        assert_eq!(called.attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_per_try_timeout_moves_on_within_the_deadline() {
        let cl = cluster("");
        let p = policy(
            "attempts: 3\nper_try_timeout: 100ms\non: [reset]\nbackoff: { base: 10ms, max: 10ms }",
        );
        let script = Script::new(vec![(0, Answer::Hang), (20, Answer::Status(200))]);
        let start = Instant::now();
        let called = Run {
            timeout: Some(Duration::from_secs(1)),
            grpc: true,
            ..run(&cl, Some(&p))
        }
        .go(&script)
        .await;
        assert_eq!(status(&called), 200);
        assert_eq!(called.attempts, 2);
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(120) && took <= Duration::from_millis(130),
            "per-try timeout, a backoff of at most 10 ms, then the answer: {took:?}"
        );
        assert_eq!(cl.metrics.timeout.get(), 1);
        // The upstream is told the try's own deadline, never the request's.
        let seen = script.seen();
        let first = crate::http::grpc::parse_timeout(seen[0].2.as_deref().unwrap().as_bytes());
        assert!(first.unwrap() <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_bounds_every_try_and_the_answer_is_a_timeout() {
        let cl = cluster("");
        let p = policy(
            "attempts: 10\nper_try_timeout: 100ms\non: [reset]\nbackoff: { base: 1ms, max: 1ms }",
        );
        let script = Script::new((0..10).map(|_| (0, Answer::Hang)).collect());
        let start = Instant::now();
        let called = Run {
            timeout: Some(Duration::from_millis(250)),
            grpc: true,
            ..run(&cl, Some(&p))
        }
        .go(&script)
        .await;
        let err = called.result.as_ref().err().unwrap();
        assert_eq!(err.kind, ErrorKind::Timeout);
        assert!(err.detail.contains("250ms"), "{}", err.detail);
        let took = start.elapsed();
        assert!(took <= Duration::from_millis(251), "{took:?}");
        assert_eq!(called.attempts, 3, "100 + 100 + the 50 ms left");
        // Each try is told no more than the time left.
        let last = script.seen()[2].2.clone().unwrap();
        let last = crate::http::grpc::parse_timeout(last.as_bytes()).unwrap();
        assert!(last <= Duration::from_millis(50), "{last:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn no_retry_when_the_time_left_is_below_the_median_latency() {
        let cl = cluster("");
        cl.median_latency.observe(Duration::from_millis(200));
        let p = policy("attempts: 3\non: [5xx]");
        let script = Script::new(vec![(150, Answer::Status(503)), (0, Answer::Status(200))]);
        let called = Run {
            timeout: Some(Duration::from_millis(300)),
            ..run(&cl, Some(&p))
        }
        .go(&script)
        .await;
        assert_eq!(status(&called), 503, "150 ms left, tries take about 200");
        assert_eq!(cl.metrics.retry_skipped_deadline.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_caps_retries_across_requests() {
        let cl = cluster("");
        let p = policy("attempts: 2\non: [5xx]\nbudget: { ratio: 0.1, min_per_second: 1 }");
        for _ in 0..50 {
            let script = Script::new(vec![(1, Answer::Status(503)), (1, Answer::Status(503))]);
            let called = run(&cl, Some(&p)).go(&script).await;
            assert_eq!(status(&called), 503);
        }
        let retries = cl.metrics.retries.get();
        // 10% of 50 requests plus a reserve of 1/s over the 10 s window.
        assert!((5..=16).contains(&retries), "retries {retries}");
        assert_eq!(cl.metrics.retry_budget_exhausted.get(), 50 - retries);
    }

    #[tokio::test(start_paused = true)]
    async fn consecutive_failures_eject_an_endpoint() {
        let cl = cluster(
            "outlier_detection: { consecutive_failures: 3, base_ejection_time: 30s, max_ejection_percent: 50 }\nlb: round_robin",
        );
        for _ in 0..9 {
            let script = Script::new(vec![(1, Answer::Status(503))]);
            run(&cl, None).go(&script).await;
        }
        assert_eq!(
            cl.metrics.outlier_ejections.get(),
            1,
            "max_ejection_percent 50 of 3"
        );
        assert_eq!(cl.metrics.endpoints_ejected.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn overflow_ends_the_request_without_a_retry() {
        let cl = cluster("");
        let p = policy("attempts: 3\non: [5xx, reset, connect-failure]");
        let script = Script::new(vec![(0, Answer::Overflow), (0, Answer::Status(200))]);
        let called = run(&cl, Some(&p)).go(&script).await;
        assert_eq!(kind(&called), Some(ErrorKind::Overflow));
        assert_eq!(called.attempts, 1);
        assert_eq!(cl.metrics.overflow.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_upstream_silent_for_the_idle_timeout_times_out() {
        let cl = cluster("");
        let bytes_in = Arc::new(AtomicU64::new(0));
        let c = Call {
            cluster: &cl,
            policy: None,
            endpoint: None,
            proto: Protocol::Http2,
            grpc: false,
            deadline: None,
            timeout: None,
            stream_idle_timeout: Duration::from_secs(5),
            bytes_in: &bytes_in,
        };
        let script = Script::new(vec![(0, Answer::Hang)]);
        let start = Instant::now();
        let called = call(c, head(Method::GET), ProxyBody::empty(), &script).await;
        assert_eq!(kind(&called), Some(ErrorKind::Timeout));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert!(called
            .result
            .err()
            .unwrap()
            .detail
            .contains("stream_idle_timeout"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_plain_success_is_reported_at_the_end_and_a_failure_at_once() {
        let cl = cluster("");
        let ok = Script::new(vec![(0, Answer::Status(200))]);
        assert!(run(&cl, None).go(&ok).await.report_at_end);
        let failed = Script::new(vec![(0, Answer::Status(503))]);
        assert!(!run(&cl, None).go(&failed).await.report_at_end);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grpc_response_with_its_status_in_the_trailers_is_reported_at_the_end() {
        let cl = cluster("");
        let script = Script::new(vec![(0, Answer::Status(200))]);
        let called = Run {
            grpc: true,
            ..run(&cl, None)
        }
        .go(&script)
        .await;
        assert!(called.report_at_end);
        assert!(called.in_flight.is_some());
    }
}
