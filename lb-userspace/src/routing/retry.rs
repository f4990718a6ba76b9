//! Retry decisions, pure (SEMANTICS.md, "Retries"; Google Cloud's `retryPolicy`, which
//! follows Envoy's `retry_on` conditions).
//!
//! Without a policy: one retry, only for requests without a body, only when the backend
//! answered 502, 503 or 504 (or could not be reached). With a policy: its conditions and
//! `num_retries` (1 when absent). A request whose body was streamed to a backend is never
//! retried, because the body is gone: so POST with a body is never retried.

use crate::config::RetryPolicy;
use std::time::Duration;

/// What one attempt to a backend produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend answered with this status.
    Status(u16),
    /// No connection could be opened (refused, unreachable, connect timeout).
    ConnectFailure,
    /// The connection or stream broke before a response arrived.
    Reset,
    /// HTTP/2 REFUSED_STREAM: the backend did not process the request (RFC 9113 §8.7).
    RefusedStream,
    /// The per-try (or backend-service) timeout expired before the response headers.
    Timeout,
}

/// Retry conditions as bits.
pub mod cond {
    pub const FIVE_XX: u32 = 1;
    pub const GATEWAY_ERROR: u32 = 2;
    pub const CONNECT_FAILURE: u32 = 4;
    pub const RETRIABLE_4XX: u32 = 8;
    pub const REFUSED_STREAM: u32 = 16;
    pub const RESET: u32 = 32;
}

/// A condition name that is not one of the documented ones.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown retry condition {0:?}; use 5xx, gateway-error, connect-failure, retriable-4xx, refused-stream or reset")]
pub struct UnknownCondition(pub String);

/// A compiled retry policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPlan {
    pub conditions: u32,
    /// Retries after the first attempt.
    pub num_retries: u32,
    pub per_try_timeout: Option<Duration>,
    /// `false` for the implicit policy, which never retries requests with a body.
    pub explicit: bool,
}

impl RetryPlan {
    /// The behaviour without a configured policy.
    pub const DEFAULT: RetryPlan = RetryPlan {
        conditions: cond::GATEWAY_ERROR | cond::CONNECT_FAILURE,
        num_retries: 1,
        per_try_timeout: None,
        explicit: false,
    };

    /// Compiles a configured policy, or the default when there is none.
    pub fn from_policy(p: Option<&RetryPolicy>) -> Result<RetryPlan, UnknownCondition> {
        let Some(p) = p else {
            return Ok(RetryPlan::DEFAULT);
        };
        let mut conditions = 0;
        for c in &p.retry_conditions {
            conditions |= match c.as_str() {
                "5xx" => cond::FIVE_XX,
                "gateway-error" => cond::GATEWAY_ERROR,
                "connect-failure" => cond::CONNECT_FAILURE,
                "retriable-4xx" => cond::RETRIABLE_4XX,
                "refused-stream" => cond::REFUSED_STREAM,
                "reset" => cond::RESET,
                other => return Err(UnknownCondition(other.to_string())),
            };
        }
        Ok(RetryPlan {
            conditions,
            num_retries: p.num_retries.unwrap_or(1),
            per_try_timeout: p
                .per_try_timeout_sec
                .filter(|t| *t > 0.0 && t.is_finite())
                .map(crate::config::limits::duration),
            explicit: true,
        })
    }

    /// Whether an outcome matches the plan's conditions. `5xx` covers every 5xx answer and
    /// every failure to get one (Envoy: connect failures, resets and timeouts count as 5xx);
    /// `gateway-error` covers 502/503/504 and the same failures.
    pub fn matches(&self, outcome: Outcome) -> bool {
        let c = self.conditions;
        let any = |bits: u32| c & bits != 0;
        match outcome {
            Outcome::Status(s) if (502..=504).contains(&s) => {
                any(cond::FIVE_XX | cond::GATEWAY_ERROR)
            }
            Outcome::Status(s) if (500..600).contains(&s) => any(cond::FIVE_XX),
            Outcome::Status(409) => any(cond::RETRIABLE_4XX),
            Outcome::Status(_) => false,
            Outcome::ConnectFailure => {
                any(cond::CONNECT_FAILURE | cond::FIVE_XX | cond::GATEWAY_ERROR)
            }
            Outcome::RefusedStream => any(cond::REFUSED_STREAM | cond::FIVE_XX),
            Outcome::Reset => any(cond::RESET | cond::FIVE_XX),
            Outcome::Timeout => any(cond::FIVE_XX | cond::GATEWAY_ERROR),
        }
    }

    /// Whether attempt number `attempt` (0 = first) that produced `outcome` is retried.
    /// `has_body`: the request carried a body (streamed, so it cannot be sent again).
    pub fn should_retry(&self, outcome: Outcome, attempt: u32, has_body: bool) -> bool {
        if attempt >= self.num_retries {
            return false;
        }
        if has_body {
            // The body is streamed to the backend, not buffered, so it cannot be sent twice.
            return false;
        }
        self.matches(outcome)
    }
}

/// Whether a request has a body, judged from its framing headers (RFC 9112 §6.3): a
/// Transfer-Encoding, or a Content-Length other than 0. HTTP/2 requests without
/// Content-Length are judged by `end_stream` through `is_end_stream`.
pub fn has_body(headers: &http::HeaderMap, end_stream: bool) -> bool {
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        return true;
    }
    match headers.get(http::header::CONTENT_LENGTH) {
        Some(v) => v.as_bytes() != b"0",
        None => !end_stream,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(conds: &[&str], n: Option<u32>) -> RetryPlan {
        RetryPlan::from_policy(Some(&RetryPolicy {
            retry_conditions: conds.iter().map(|s| s.to_string()).collect(),
            num_retries: n,
            per_try_timeout_sec: Some(0.5),
        }))
        .unwrap()
    }

    #[test]
    fn default_retries_gateway_errors_once_without_body() {
        let d = RetryPlan::from_policy(None).unwrap();
        for s in [502, 503, 504] {
            assert!(d.should_retry(Outcome::Status(s), 0, false), "{s}");
            assert!(
                !d.should_retry(Outcome::Status(s), 1, false),
                "only one retry: {s}"
            );
            assert!(
                !d.should_retry(Outcome::Status(s), 0, true),
                "a POST with body: {s}"
            );
        }
        for s in [200, 404, 409, 500, 501] {
            assert!(!d.should_retry(Outcome::Status(s), 0, false), "{s}");
        }
        assert!(d.should_retry(Outcome::ConnectFailure, 0, false));
        assert!(
            !d.should_retry(Outcome::ConnectFailure, 0, true),
            "implicit policy never retries a body"
        );
        assert!(!d.should_retry(Outcome::Reset, 0, false));
    }

    #[test]
    fn each_condition() {
        let table: &[(&str, Outcome, bool)] = &[
            ("5xx", Outcome::Status(500), true),
            ("5xx", Outcome::Status(503), true),
            ("5xx", Outcome::Status(409), false),
            ("5xx", Outcome::Reset, true),
            ("5xx", Outcome::Timeout, true),
            ("gateway-error", Outcome::Status(500), false),
            ("gateway-error", Outcome::Status(502), true),
            ("gateway-error", Outcome::Status(504), true),
            ("gateway-error", Outcome::Timeout, true),
            ("gateway-error", Outcome::Reset, false),
            ("connect-failure", Outcome::ConnectFailure, true),
            ("connect-failure", Outcome::Status(503), false),
            ("retriable-4xx", Outcome::Status(409), true),
            ("retriable-4xx", Outcome::Status(404), false),
            ("refused-stream", Outcome::RefusedStream, true),
            ("refused-stream", Outcome::Reset, false),
            ("reset", Outcome::Reset, true),
            ("reset", Outcome::Status(502), false),
        ];
        for (c, o, want) in table {
            assert_eq!(
                policy(&[c], None).should_retry(*o, 0, false),
                *want,
                "{c} {o:?}"
            );
        }
    }

    #[test]
    fn num_retries_and_per_try_timeout() {
        let p = policy(&["5xx"], Some(3));
        assert!(p.should_retry(Outcome::Status(500), 2, false));
        assert!(!p.should_retry(Outcome::Status(500), 3, false));
        assert_eq!(p.per_try_timeout, Some(Duration::from_millis(500)));
        assert!(!policy(&["5xx"], Some(0)).should_retry(Outcome::Status(500), 0, false));
        assert!(!policy(&["connect-failure"], None).should_retry(Outcome::ConnectFailure, 0, true));
        assert!(!policy(&["5xx"], None).should_retry(Outcome::Status(500), 0, true));
    }

    #[test]
    fn unknown_condition_is_refused() {
        let e = RetryPlan::from_policy(Some(&RetryPolicy {
            retry_conditions: vec!["sometimes".into()],
            ..Default::default()
        }))
        .unwrap_err();
        assert!(e.to_string().contains("sometimes"));
    }

    #[test]
    fn body_detection() {
        let mut h = http::HeaderMap::new();
        assert!(!has_body(&h, true));
        assert!(has_body(&h, false));
        h.insert(http::header::CONTENT_LENGTH, "0".parse().unwrap());
        assert!(!has_body(&h, false));
        h.insert(http::header::CONTENT_LENGTH, "5".parse().unwrap());
        assert!(has_body(&h, true));
    }
}
