//! RFC 9457 problem documents: every error this service answers with.

use serde::Serialize;

use crate::application::admission::{Admitted, Refused, Unavailable, Verdict};
use crate::application::rate_limit::{decimal, RateLimit};
use crate::domain::reading::{FieldIssue, Severity};

/// The kinds of problem the API can report. Each has one status, one type URI and one title,
/// so a client can switch on `type` and never has to parse `detail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemType {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    PayloadTooLarge,
    UriTooLong,
    UnsupportedMediaType,
    UnprocessableReading,
    RateLimited,
    HeadersTooLarge,
    BacklogFull,
    NotConfigured,
    Internal,
    UpstreamUnavailable,
    DeviceDisabled,
    UnknownDevice,
    RegistryUnavailable,
    TooManyFailures,
}

impl ProblemType {
    /// Every kind, for documents that must list them (the OpenAPI contract).
    pub const ALL: [Self; 19] = [
        Self::InvalidRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::PayloadTooLarge,
        Self::UriTooLong,
        Self::UnsupportedMediaType,
        Self::UnprocessableReading,
        Self::RateLimited,
        Self::HeadersTooLarge,
        Self::BacklogFull,
        Self::NotConfigured,
        Self::Internal,
        Self::UpstreamUnavailable,
        Self::DeviceDisabled,
        Self::UnknownDevice,
        Self::RegistryUnavailable,
        Self::TooManyFailures,
    ];

    pub const fn status(self) -> u16 {
        match self {
            Self::InvalidRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden | Self::DeviceDisabled | Self::UnknownDevice => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::PayloadTooLarge => 413,
            Self::UriTooLong => 414,
            Self::UnsupportedMediaType => 415,
            Self::UnprocessableReading => 422,
            Self::RateLimited | Self::TooManyFailures => 429,
            Self::HeadersTooLarge => 431,
            Self::Internal => 500,
            Self::BacklogFull
            | Self::NotConfigured
            | Self::UpstreamUnavailable
            | Self::RegistryUnavailable => 503,
        }
    }

    /// Stable identifier; documented in the README's "Problem types" table.
    pub const fn uri(self) -> &'static str {
        match self {
            Self::InvalidRequest => "urn:edge-enrich:problem:invalid-request",
            Self::Unauthorized => "urn:edge-enrich:problem:unauthorized",
            Self::Forbidden => "urn:edge-enrich:problem:forbidden",
            Self::NotFound => "urn:edge-enrich:problem:not-found",
            Self::MethodNotAllowed => "urn:edge-enrich:problem:method-not-allowed",
            Self::PayloadTooLarge => "urn:edge-enrich:problem:payload-too-large",
            Self::UriTooLong => "urn:edge-enrich:problem:uri-too-long",
            Self::UnsupportedMediaType => "urn:edge-enrich:problem:unsupported-media-type",
            Self::UnprocessableReading => "urn:edge-enrich:problem:unprocessable-reading",
            Self::RateLimited => "urn:edge-enrich:problem:rate-limited",
            Self::HeadersTooLarge => "urn:edge-enrich:problem:headers-too-large",
            Self::BacklogFull => "urn:edge-enrich:problem:backlog-full",
            Self::NotConfigured => "urn:edge-enrich:problem:not-configured",
            Self::Internal => "urn:edge-enrich:problem:internal",
            Self::UpstreamUnavailable => "urn:edge-enrich:problem:batcher-unavailable",
            Self::DeviceDisabled => "urn:edge-enrich:problem:device-disabled",
            Self::UnknownDevice => "urn:edge-enrich:problem:unknown-device",
            Self::RegistryUnavailable => "urn:edge-enrich:problem:registry-unavailable",
            Self::TooManyFailures => "urn:edge-enrich:problem:too-many-failures",
        }
    }

    pub const fn title(self) -> &'static str {
        match self {
            Self::InvalidRequest => "Invalid request",
            Self::Unauthorized => "Authentication required",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::PayloadTooLarge => "Payload too large",
            Self::UriTooLong => "URI too long",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::UnprocessableReading => "Unprocessable reading",
            Self::RateLimited => "Rate limit exceeded",
            Self::HeadersTooLarge => "Request headers too large",
            Self::BacklogFull => "Delivery backlog full",
            Self::NotConfigured => "Service not configured",
            Self::Internal => "Internal error",
            Self::UpstreamUnavailable => "Batcher unavailable",
            Self::DeviceDisabled => "Device disabled",
            Self::UnknownDevice => "Unknown device",
            Self::RegistryUnavailable => "Device registry unavailable",
            Self::TooManyFailures => "Too many failed credentials",
        }
    }
}

/// One bad field of one reading. `index` is the reading's position in a batch (absent for GET).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldError {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub detail: String,
}

impl FieldError {
    /// A domain issue as an entry of a problem document; `index` is the reading's position in
    /// a batch.
    pub fn from_issue(issue: FieldIssue, index: Option<usize>) -> Self {
        Self {
            index,
            field: issue.field.to_owned(),
            detail: issue.detail,
        }
    }
}

impl ProblemType {
    /// The type of a request with issues: any malformed field makes it a 400; only well-formed
    /// but physically meaningless values make it a 422.
    pub fn for_issues<'a>(issues: impl IntoIterator<Item = &'a FieldIssue>) -> Self {
        if issues.into_iter().any(|i| i.severity == Severity::Invalid) {
            Self::InvalidRequest
        } else {
            Self::UnprocessableReading
        }
    }
}

/// A problem document plus the HTTP headers that belong with it. Boxed: it travels in the
/// `Err` side of most results, which should stay one pointer wide.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Problem(Box<Document>);

#[derive(Debug, Clone, PartialEq, Serialize)]
struct Document {
    #[serde(rename = "type")]
    type_uri: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    errors: Vec<FieldError>,
    #[serde(skip)]
    kind: ProblemType,
    #[serde(skip)]
    retry_after_s: Option<u32>,
    #[serde(skip)]
    allow: Option<&'static str>,
    #[serde(skip)]
    challenge: Option<&'static str>,
}

impl Problem {
    pub fn new(kind: ProblemType, detail: impl Into<String>) -> Self {
        Self(Box::new(Document {
            type_uri: kind.uri(),
            title: kind.title(),
            status: kind.status(),
            detail: detail.into(),
            instance: None,
            errors: Vec::new(),
            kind,
            retry_after_s: None,
            allow: None,
            challenge: None,
        }))
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        let mut p = Self::new(
            ProblemType::MethodNotAllowed,
            format!("this resource accepts {allow}"),
        );
        p.0.allow = Some(allow);
        p
    }

    pub fn not_found(path: &str) -> Self {
        let shown: String = path.chars().take(200).collect();
        Self::new(
            ProblemType::NotFound,
            format!("no resource at {shown:?}; see GET /healthz and /v1/readings"),
        )
    }

    pub fn payload_too_large(max_bytes: usize) -> Self {
        Self::new(
            ProblemType::PayloadTooLarge,
            format!("request body exceeds the limit of {max_bytes} bytes"),
        )
    }

    /// A request over its devices' token buckets (`application::rate_limit`).
    pub fn rate_limited(retry_after_s: u32, limit: &RateLimit) -> Self {
        Self::new(
            ProblemType::RateLimited,
            format!(
                "a device may send {} readings per second (bursts of {}); nothing was accepted",
                decimal(limit.per_s),
                decimal(limit.burst)
            ),
        )
        .with_retry_after(retry_after_s)
    }

    /// A sender whose credentials failed too often lately (`http::sender_budget`).
    pub fn too_many_failures(retry_after_s: u32) -> Self {
        Self::new(
            ProblemType::TooManyFailures,
            "too many requests from this address had invalid credentials; nothing was read",
        )
        .with_retry_after(retry_after_s)
    }

    pub fn internal() -> Self {
        Self::new(
            ProblemType::Internal,
            "an unexpected fault occurred; the request was not accepted and may be retried",
        )
    }

    pub fn with_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.0.errors = errors;
        self
    }

    pub fn with_retry_after(mut self, seconds: u32) -> Self {
        self.0.retry_after_s = Some(seconds);
        self
    }

    /// The `WWW-Authenticate` challenge a 401 carries.
    pub fn with_challenge(mut self, challenge: &'static str) -> Self {
        self.0.challenge = Some(challenge);
        self
    }

    /// RFC 9457 `instance`: we use the request id so a report can be matched to logs.
    pub fn with_instance(mut self, request_id: &str) -> Self {
        self.0.instance = Some(format!("urn:edge-enrich:request:{request_id}"));
        self
    }

    pub fn kind(&self) -> ProblemType {
        self.0.kind
    }
    pub fn status(&self) -> u16 {
        self.0.status
    }
    pub fn detail(&self) -> &str {
        &self.0.detail
    }
    pub fn errors(&self) -> &[FieldError] {
        &self.0.errors
    }
    pub fn retry_after_s(&self) -> Option<u32> {
        self.0.retry_after_s
    }
    pub fn allow(&self) -> Option<&'static str> {
        self.0.allow
    }
    pub fn challenge(&self) -> Option<&'static str> {
        self.0.challenge
    }

    pub fn to_json(&self) -> String {
        // Serializing plain strings and numbers cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{}"))
    }
}

/// The answer to a request whose readings the accept use case did not take (`Ok` when it
/// did): the one place where admission verdicts become statuses and documents, for every host.
pub fn of_verdict(verdict: &Verdict, limit: Option<&RateLimit>) -> Result<(), Problem> {
    let unavailable = |detail: &str| {
        Problem::new(ProblemType::UpstreamUnavailable, detail.to_owned()).with_retry_after(1)
    };
    Err(match verdict {
        Ok(Admitted::Accepted) => return Ok(()),
        Ok(Admitted::RateLimited { retry_after_s }) => match limit {
            Some(limit) => Problem::rate_limited(*retry_after_s, limit),
            // A store that kept a limit this deployment no longer sets: nothing was stored.
            None => Problem::new(
                ProblemType::RateLimited,
                "this device is over its rate limit; nothing was accepted",
            )
            .with_retry_after(*retry_after_s),
        },
        Err(Refused::BacklogFull(full)) => Problem::new(
            ProblemType::BacklogFull,
            format!(
                "the delivery backlog is full ({} readings); the collector may be down",
                full.limit
            ),
        )
        .with_retry_after(full.retry_after_s),
        Err(Refused::Unavailable(Unavailable::Store(_))) => {
            unavailable("a store is unavailable; nothing was accepted")
        }
        Err(Refused::Unavailable(Unavailable::Unreachable(_))) => {
            unavailable("the outbox could not be reached; nothing was accepted")
        }
        Err(Refused::Unavailable(Unavailable::TimedOut)) => {
            unavailable("the outbox did not answer in time; nothing was accepted")
        }
        Err(Refused::Fault(_)) => Problem::internal(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::delivery::outbox::BacklogFull;

    #[test]
    fn problem_document_has_rfc9457_members() {
        let p = Problem::new(ProblemType::InvalidRequest, "bad")
            .with_errors(vec![FieldError {
                index: Some(2),
                field: "temp".into(),
                detail: "missing".into(),
            }])
            .with_instance("abc");
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert_eq!(v["type"], "urn:edge-enrich:problem:invalid-request");
        assert_eq!(v["title"], "Invalid request");
        assert_eq!(v["status"], 400);
        assert_eq!(v["detail"], "bad");
        assert_eq!(v["instance"], "urn:edge-enrich:request:abc");
        assert_eq!(v["errors"][0]["index"], 2);
        assert_eq!(v["errors"][0]["field"], "temp");
    }

    #[test]
    fn headers_ride_along_but_are_not_serialized() {
        let p = Problem::method_not_allowed("GET, POST");
        assert_eq!(p.allow(), Some("GET, POST"));
        assert_eq!(p.status(), 405);
        let v: serde_json::Value = serde_json::from_str(&p.to_json()).unwrap();
        assert!(v.get("allow").is_none() && v.get("kind").is_none());
        let full = BacklogFull {
            limit: 10,
            retry_after_s: 3,
        };
        let p = of_verdict(&Err(Refused::BacklogFull(full)), None).unwrap_err();
        assert_eq!(p.retry_after_s(), Some(3));
        assert_eq!(p.status(), 503);
        assert_eq!(p.kind(), ProblemType::BacklogFull);
    }

    /// Every verdict has one answer, whichever host gave it; a rate-limited verdict is refused
    /// even where the deployment names no limit (nothing was stored).
    #[test]
    fn every_verdict_has_one_answer() {
        use crate::ports::StoreError;
        let limit = RateLimit {
            per_s: 1.0,
            burst: 5.0,
        };
        let limited = Ok(Admitted::RateLimited { retry_after_s: 2 });
        assert_eq!(of_verdict(&Ok(Admitted::Accepted), None), Ok(()));
        for limit in [Some(&limit), None] {
            let p = of_verdict(&limited, limit).unwrap_err();
            assert_eq!((p.status(), p.retry_after_s()), (429, Some(2)));
        }
        let cases = [
            (
                Refused::Unavailable(Unavailable::Store(StoreError("cause-42".into()))),
                503,
            ),
            (
                Refused::Unavailable(Unavailable::Unreachable("cause-42".into())),
                503,
            ),
            (Refused::Unavailable(Unavailable::TimedOut), 503),
            (Refused::Fault("cause-42".into()), 500),
        ];
        for (refused, status) in cases {
            let p = of_verdict(&Err(refused), None).unwrap_err();
            assert_eq!(p.status(), status);
            assert!(
                !p.detail().contains("cause-42"),
                "causes stay in the log: {}",
                p.detail()
            );
        }
    }
}
