//! The router and the two halves of every decision, independent of any host:
//! - [`plan`]: everything the request line and headers settle, before a byte of the body is
//!   read (limits, route and method, readiness, credentials, declared length, media type);
//! - [`authenticate`], then [`ingest`]: what needs the body (the credentials over it, then
//!   parsing, validation, the readings' devices, enrichment).
//!
//! [`crate::http::pipeline`] runs them around the host's body stream; [`decide`] runs them on a
//! body already in hand (tests, fuzzing, benches).

use http::header::{
    HeaderName, ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, AUTHORIZATION,
    CONTENT_LENGTH, CONTENT_TYPE, ORIGIN,
};
use http::request::Parts;
use http::Method;
use serde::Serialize;

use crate::application::admission::Section;
use crate::application::registry::{Registration, RegistryMode};
use crate::domain::device::DeviceRecord;
use crate::domain::enrich::{enrich_all, EdgeInfo, EnrichError, EnrichedReading, StoredReading};
use crate::domain::ids::{IdSource, BYTES_PER_ID};
use crate::domain::reading::{DeviceId, Reading};
use crate::http::answer::{self, Answer};
use crate::http::auth::{Presented, SignedParts};
use crate::http::body::{first_device_id, parse_readings, BodyFormat};
use crate::http::deployment::{ApiDocument, Deployment, Policy};
use crate::http::problem::{FieldError, Problem, ProblemType};
use crate::http::query::{named_device, parse_reading_query};

pub const READINGS_PATH: &str = "/v1/readings";
pub const HEALTH_PATH: &str = "/healthz";
pub const ADMIN_PREFIX: &str = "/admin/";
pub const OPENAPI_PATH: &str = "/openapi.json";

/// The API contract (OpenAPI 3.1), served at [`OPENAPI_PATH`] by the hosts that pass it as
/// `ApiDocument::Served` (Workers serves the file as a static asset); `tests/openapi.rs` keeps
/// it in step with this router and schemathesis checks the running Worker against it.
pub const OPENAPI: &str = include_str!("../../openapi/openapi.json");

/// Every route and its methods, as the router below serves them.
pub const ROUTES: &[(&str, &[&str])] = &[
    (READINGS_PATH, &["GET", "POST", "OPTIONS"]),
    (HEALTH_PATH, &["GET"]),
    (OPENAPI_PATH, &["GET"]),
    ("/admin/stats", &["GET"]),
    ("/admin/dead-letters", &["GET"]),
    ("/admin/deliver", &["POST"]),
];

const READINGS_ALLOW: &str = "GET, POST, OPTIONS";

/// A header's value as text, if it is there and is text.
pub fn header(parts: &Parts, name: HeaderName) -> Option<&str> {
    parts.headers.get(name).and_then(|v| v.to_str().ok())
}

/// The size of all request headers, as the limit counts it.
pub fn header_bytes(parts: &Parts) -> usize {
    parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// The host the client addressed: the `Host` header, else the target's authority.
pub fn request_host(parts: &Parts) -> &str {
    header(parts, http::header::HOST)
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("")
}

fn path(parts: &Parts) -> &str {
    parts.uri.path()
}

fn query(parts: &Parts) -> &str {
    parts.uri.query().unwrap_or("")
}

/// What the request line and headers settled.
#[derive(Debug)]
pub enum Plan<'a> {
    /// Answered without a body or the host's help.
    Answer(Answer),
    /// `/healthz`: needs the profiles the host's store holds.
    Health,
    /// An authenticated admin query for the host's delivery state.
    Admin(AdminQuery),
    /// Readings: GET (no body) or POST (a body to read, within `limit` bytes).
    Readings(Ingest<'a>),
}

#[derive(Debug)]
pub struct Ingest<'a> {
    presented: Presented<'a>,
    /// The device the request names before its body (`?device_id=`), if validly.
    named: Option<DeviceId>,
    body: Option<BodyFormat>,
    pub limit: usize,
}

impl Ingest<'_> {
    /// Whether there is a body to read (POST).
    pub fn reads_body(&self) -> bool {
        self.body.is_some()
    }

    /// The device the request speaks for as far as is known before its body: the one its
    /// credentials name, else the one its query names. Its registry record is read first.
    pub fn claimed_device(&self) -> Option<&DeviceId> {
        self.presented.device().or(self.named.as_ref())
    }

    /// The body's first `device_id`, found by a linear scan without parsing: the device of a
    /// POST that named none before its body, whose registry record is then read.
    pub fn device_in_body(&self, body: &[u8]) -> Option<DeviceId> {
        first_device_id(body, self.body?)
    }

    /// Verifies what can be verified before the body once the claimed device's registration
    /// is known (a token for a named device, a JWT): a refusal here costs no body read.
    pub fn check_before_body(
        &mut self,
        config: &Policy,
        registration: &Registration,
    ) -> Result<(), Problem> {
        let presented = std::mem::replace(&mut self.presented, Presented::Anyone);
        self.presented = config.auth.before_body(presented, registration)?;
        Ok(())
    }

    /// The ES256 signature the host must check before the body, for a JWT (see
    /// `DeviceAuth::jwt_check`).
    pub fn signature_check(
        &self,
        registration: &Registration,
        now_ms: u64,
    ) -> Option<crate::http::auth::SignatureCheck<'_>> {
        crate::http::auth::DeviceAuth::jwt_check(&self.presented, registration, now_ms)
    }

    /// Takes the host's verdict on [`signature_check`](Self::signature_check).
    pub fn signature_checked(&mut self, valid: bool) -> Result<(), Problem> {
        let presented = std::mem::replace(&mut self.presented, Presented::Anyone);
        self.presented = crate::http::auth::DeviceAuth::jwt_checked(presented, valid)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminQuery {
    Stats,
    DeadLetters,
    /// Look now for readings no one is delivering, and deliver them: what a sparse fleet's
    /// heartbeat calls on a host whose delivery runs only while requests arrive (Spin).
    Deliver,
}

impl AdminQuery {
    /// The one method each is served for (a read, or an action), and its name for `Allow`.
    fn method(self) -> (Method, &'static str) {
        match self {
            Self::Stats | Self::DeadLetters => (Method::GET, "GET"),
            Self::Deliver => (Method::POST, "POST"),
        }
    }
}

/// Everything that can be decided before the body is read, in the documented order: URL and
/// header size, route and method, the deployment's readiness, credentials (their shape and, for
/// signatures, their time), then for a POST its declared length and media type.
pub fn plan<'a>(parts: &'a Parts, settings: &Deployment, now_ms: u64) -> Result<Plan<'a>, Problem> {
    check_request_size(parts, settings)?;
    let method = &parts.method;
    match path(parts) {
        READINGS_PATH if method == Method::GET || method == Method::POST => {
            let (config, _) = settings.ready()?;
            // The device the request names before its body (`?device_id=`): a token is checked
            // against it now. A POST naming it badly is refused here; a GET's query is its
            // reading, whose faults `ingest` lists field by field.
            let named = match named_device(query(parts)) {
                Ok(named) => named,
                Err(issue) if method == Method::POST => {
                    return Err(Problem::new(
                        ProblemType::InvalidRequest,
                        "the device_id query parameter is invalid",
                    )
                    .with_errors(vec![FieldError::from_issue(issue, None)]))
                }
                Err(_) => None,
            };
            let presented =
                config
                    .auth
                    .presented(header(parts, AUTHORIZATION), named.as_ref(), now_ms)?;
            let body = if method == Method::POST {
                let declared = header(parts, CONTENT_LENGTH).and_then(|v| v.parse::<u64>().ok());
                if declared.is_some_and(|n| n > config.max_body_bytes as u64) {
                    return Err(Problem::payload_too_large(config.max_body_bytes));
                }
                Some(BodyFormat::from_content_type(header(parts, CONTENT_TYPE))?)
            } else {
                None
            };
            Ok(Plan::Readings(Ingest {
                presented,
                named,
                body,
                limit: config.max_body_bytes,
            }))
        }
        READINGS_PATH if method == Method::OPTIONS => Ok(Plan::Answer(preflight(parts, settings))),
        READINGS_PATH => Err(Problem::method_not_allowed(READINGS_ALLOW)),
        HEALTH_PATH | OPENAPI_PATH if method != Method::GET => {
            Err(Problem::method_not_allowed("GET"))
        }
        HEALTH_PATH => Ok(Plan::Health),
        OPENAPI_PATH => match settings.api_document {
            ApiDocument::Served(doc) => Ok(Plan::Answer(answer::json(200, doc.to_owned()))),
            ApiDocument::StaticAsset => Err(Problem::not_found(OPENAPI_PATH)),
        },
        p if p.starts_with(ADMIN_PREFIX) => {
            let query = match &p[ADMIN_PREFIX.len()..] {
                "stats" => AdminQuery::Stats,
                "dead-letters" => AdminQuery::DeadLetters,
                "deliver" => AdminQuery::Deliver,
                _ => return Err(Problem::not_found(p)),
            };
            let (allowed, allow) = query.method();
            if *method != allowed {
                return Err(Problem::method_not_allowed(allow));
            }
            authorize_admin(settings, header(parts, AUTHORIZATION))?;
            Ok(Plan::Admin(query))
        }
        p => Err(Problem::not_found(p)),
    }
}

/// URL and header limits, checked before anything else is looked at.
fn check_request_size(parts: &Parts, settings: &Deployment) -> Result<(), Problem> {
    let (max_url, max_headers) = (
        settings.limits.max_url_bytes,
        settings.limits.max_header_bytes,
    );
    let url_len = path(parts).len() + 1 + query(parts).len();
    if url_len > max_url {
        return Err(Problem::new(
            ProblemType::UriTooLong,
            format!("the request target is {url_len} bytes; the limit is {max_url}"),
        ));
    }
    let header_bytes = header_bytes(parts);
    if header_bytes > max_headers {
        return Err(Problem::new(
            ProblemType::HeadersTooLarge,
            format!("the request headers total {header_bytes} bytes; the limit is {max_headers}"),
        ));
    }
    Ok(())
}

/// Everything ingest needs to know about the request's surroundings.
pub struct RequestContext<'a> {
    pub settings: &'a Deployment,
    /// The deployment's policy and profiles, once it was found ready (the pipeline checks
    /// that once per request).
    pub policy: &'a Policy,
    pub profiles: &'a crate::domain::calibration::Profiles,
    /// Profiles from the host's key-value store, when it has some: they replace the
    /// deployment's (see `application::profile_cache`).
    pub stored_profiles: Option<&'a crate::domain::calibration::Profiles>,
    pub edge: &'a EdgeInfo,
    pub now_ms: u64,
    pub request_id: &'a str,
    /// Randomness for the readings' ids.
    pub entropy: &'a dyn crate::ports::Entropy,
    /// What the registry says of the request's device (`Registration::Off` when it was not
    /// read: the registry is off, or the request names no device).
    pub registration: &'a Registration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    One,
    Many,
}

/// Readings that passed validation and enrichment and now wait for the host's acknowledgement.
#[derive(Debug)]
pub struct Accepted {
    pub readings: Vec<EnrichedReading>,
    /// The first reading's device id: hosts that shard their batcher route the whole request
    /// by it, so a request is stored by exactly one batcher (accepted or refused whole).
    pub shard_key: String,
    pub received_at_ms: u64,
    /// Readings per device, for the host's rate limiter.
    pub device_costs: Vec<(String, u32)>,
    shape: Shape,
}

impl Accepted {
    /// These readings as one section of the accept use case (`application::admission`).
    pub fn section(&self) -> Section {
        Section {
            costs: self.device_costs.clone(),
            readings: self
                .readings
                .iter()
                .map(|r| StoredReading::from(&r.json))
                .collect(),
        }
    }

    /// The answer once the host has the readings: the reading for a GET, an array for a POST.
    pub fn answer(&self) -> Answer {
        let body = match self.shape {
            Shape::One => self
                .readings
                .first()
                .map(|r| r.json.as_str().to_owned())
                .unwrap_or_default(),
            Shape::Many => {
                let len = self
                    .readings
                    .iter()
                    .map(|r| r.json.len() + 1)
                    .sum::<usize>()
                    + 2;
                let mut s = String::with_capacity(len);
                s.push('[');
                for (i, r) in self.readings.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(r.json.as_str());
                }
                s.push(']');
                s
            }
        };
        answer::json(200, body)
    }
}

/// A request whose credentials held, with what checking them needed parsed already: a GET's
/// reading (its query names the device a token is checked against).
#[derive(Debug)]
pub struct Authenticated {
    credential: crate::http::auth::Credential,
    query_reading: Option<Reading>,
    body: Option<BodyFormat>,
}

/// The credentials, over the body where they cover it (in `hmac` mode the signature over the
/// whole request; in `token` mode, for a request that named no device before its body, against
/// the device the request carries, before anything is parsed).
pub fn authenticate(
    parts: &Parts,
    plan: Ingest<'_>,
    body: &[u8],
    ctx: &RequestContext<'_>,
) -> Result<Authenticated, Problem> {
    let config = ctx.policy;
    // A token not yet checked (the request named no device before its body) is checked against
    // the device the request carries before anything is parsed: a GET's query (its reading,
    // bounded by MAX_URL_BYTES, so parsed first) or the body's first device_id (a linear scan).
    let (query_reading, hint) = match (&plan.presented, plan.body) {
        (Presented::Token { device: None, .. }, None) => {
            let reading = parse_query(query(parts))?;
            let device = reading.device_id.clone();
            (Some(reading), Some(device))
        }
        // The pipeline's registry lookup already scanned for it: the same device, not read twice.
        (Presented::Token { device: None, .. }, Some(format)) => (
            None,
            ctx.registration
                .device()
                .cloned()
                .or_else(|| first_device_id(body, format)),
        ),
        _ => (None, None),
    };
    let signed = SignedParts {
        method: parts.method.as_str(),
        host: request_host(parts),
        path: path(parts),
        query: query(parts),
        content_type: header(parts, CONTENT_TYPE).unwrap_or(""),
        body,
        device_hint: hint.as_ref(),
    };
    let credential = config
        .auth
        .verify(plan.presented, &signed, ctx.registration)?;
    Ok(Authenticated {
        credential,
        query_reading,
        body: plan.body,
    })
}

/// What needs the body once the credentials held: the readings it holds (or the query's),
/// their devices against the credentials and the registry, and their enrichment.
pub fn ingest(
    parts: &Parts,
    authenticated: Authenticated,
    body: &[u8],
    ctx: &RequestContext<'_>,
) -> Result<Accepted, Problem> {
    let (config, deployed) = (ctx.policy, ctx.profiles);
    let (readings, shape) = match (authenticated.query_reading, authenticated.body) {
        (Some(reading), _) => (vec![reading], Shape::One),
        (None, None) => (vec![parse_query(query(parts))?], Shape::One),
        (None, Some(format)) => (
            parse_readings(body, format, config.max_readings_per_request)?,
            Shape::Many,
        ),
    };
    authenticated
        .credential
        .authorize_devices(readings.iter().map(|r| r.device_id.as_str()))?;
    let record = admit_registered(config.registry.mode, ctx.registration, &readings)?;
    let profiles = ctx.stored_profiles.unwrap_or(deployed);
    enrich(readings, shape, profiles, record, ctx)
}

/// The registry's say, after the credentials: a request with a registry carries one device's
/// readings (its record was read once, for that device); a disabled device is refused, and in
/// `required` mode so is an unknown one. Returns the record to enrich with.
fn admit_registered<'r>(
    mode: RegistryMode,
    registration: &'r Registration,
    readings: &[Reading],
) -> Result<Option<&'r DeviceRecord>, Problem> {
    let Some(device) = registration.device() else {
        if mode != RegistryMode::Off && !readings.is_empty() {
            // The registry is on, but no device could be found to read it for.
            return Err(Problem::new(
                ProblemType::InvalidRequest,
                "name the device: a device_id query parameter, or device_id in the first reading",
            ));
        }
        return Ok(None);
    };
    if readings.iter().any(|r| r.device_id != *device) {
        return Err(Problem::new(
            ProblemType::InvalidRequest,
            "with a device registry, a request carries the readings of one device_id; nothing was accepted",
        ));
    }
    match registration.record_for(device) {
        Some(record) if !record.is_active() => Err(Problem::new(
            ProblemType::DeviceDisabled,
            "this device is disabled in the registry; nothing was accepted",
        )),
        Some(record) => Ok(Some(record)),
        None if mode == RegistryMode::Required => Err(Problem::new(
            ProblemType::UnknownDevice,
            "this device is not in the registry, and this deployment admits registered devices only",
        )),
        None => Ok(None),
    }
}

fn parse_query(query: &str) -> Result<Reading, Problem> {
    parse_reading_query(query).map_err(|issues| {
        let kind = ProblemType::for_issues(&issues);
        let errors: Vec<_> = issues
            .into_iter()
            .map(|i| FieldError::from_issue(i, None))
            .collect();
        Problem::new(
            kind,
            format!("the reading has {} invalid field(s)", errors.len()),
        )
        .with_errors(errors)
    })
}

fn enrich(
    readings: Vec<Reading>,
    shape: Shape,
    profiles: &crate::domain::calibration::Profiles,
    record: Option<&DeviceRecord>,
    ctx: &RequestContext<'_>,
) -> Result<Accepted, Problem> {
    let mut random = vec![0u8; readings.len() * BYTES_PER_ID];
    ctx.entropy
        .fill(&mut random)
        .map_err(|_| Problem::internal())?;
    let mut ids = IdSource::new(ctx.now_ms, random);
    let shard_key = readings
        .first()
        .map(|r| r.device_id.as_str().to_owned())
        .unwrap_or_default();
    let device_costs =
        crate::application::rate_limit::costs(readings.iter().map(|r| r.device_id.as_str()))
            .into_iter()
            .map(|(d, n)| (d.to_owned(), n))
            .collect();
    let enriched = enrich_all(&readings, profiles, record, ctx.edge, ctx.now_ms, &mut ids)
        .map_err(|e| match e {
            EnrichError::OutOfRange(issues) => Problem::new(
                ProblemType::UnprocessableReading,
                "a calibrated value is out of range; nothing was accepted",
            )
            .with_errors(
                issues
                    .into_iter()
                    .map(|(index, issue)| FieldError::from_issue(issue, Some(index)))
                    .collect(),
            ),
            EnrichError::IdsExhausted => Problem::internal(),
        })?;
    Ok(Accepted {
        readings: enriched,
        shard_key,
        received_at_ms: ctx.now_ms,
        device_costs,
        shape,
    })
}

/// `OPTIONS /v1/readings`: a CORS preflight, or a plain capability query.
fn preflight(parts: &Parts, settings: &Deployment) -> Answer {
    let method = header(parts, ACCESS_CONTROL_REQUEST_METHOD);
    let mut headers = match &settings.policy {
        Ok(config) if method.is_some() => config.cors.preflight_headers(
            header(parts, ORIGIN),
            method,
            header(parts, ACCESS_CONTROL_REQUEST_HEADERS),
        ),
        _ => Vec::new(),
    };
    headers.push(("allow", READINGS_ALLOW.to_owned()));
    answer::empty(204, &headers)
}

/// `/healthz`: the configuration's state, and where the profiles in use came from.
pub fn health(
    settings: &Deployment,
    edge: &EdgeInfo,
    stored: Option<&crate::domain::calibration::Profiles>,
) -> Answer {
    let errors = settings.errors();
    let (source, count) = match stored {
        Some(p) => ("key-value store", Some(p.len())),
        None => (
            settings.profile_source,
            settings.profiles.as_ref().map(|p| p.len()).ok(),
        ),
    };
    let valid = errors.is_empty();
    // Whether a registry is read, and from where (never a record: `/healthz` is public).
    let registry = settings.policy.as_ref().ok().map(|p| {
        let source = match (&p.registry.mode, &p.registry.fixed) {
            (RegistryMode::Off, _) => None,
            (_, Some(_)) => Some("REGISTRY"),
            (_, None) => Some("key-value store"),
        };
        RegistryHealth {
            mode: p.registry.mode.as_str(),
            source,
            ttl_s: p.registry.ttl_ms / 1000,
        }
    });
    let body = Health {
        status: if valid { "ok" } else { "misconfigured" },
        platform: edge.platform,
        node: &edge.node,
        config: ConfigHealth {
            valid,
            errors,
            profiles: ProfilesHealth { source, count },
            registry,
        },
        version: env!("CARGO_PKG_VERSION"),
    };
    let body = serde_json::to_string(&body).unwrap_or_default();
    answer::json(if valid { 200 } else { 503 }, body)
}

/// `/healthz`, typed: a `serde_json::Value` would bring its maps into every host's binary.
#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    platform: &'a str,
    node: &'a str,
    config: ConfigHealth<'a>,
    version: &'static str,
}

#[derive(Serialize)]
struct ConfigHealth<'a> {
    valid: bool,
    errors: Vec<String>,
    profiles: ProfilesHealth<'a>,
    registry: Option<RegistryHealth>,
}

#[derive(Serialize)]
struct ProfilesHealth<'a> {
    source: &'a str,
    count: Option<usize>,
}

#[derive(Serialize)]
struct RegistryHealth {
    mode: &'static str,
    source: Option<&'static str>,
    ttl_s: u64,
}

fn authorize_admin(settings: &Deployment, authorization: Option<&str>) -> Result<(), Problem> {
    let Some(expected) = settings
        .policy
        .as_ref()
        .ok()
        .and_then(|c| c.admin_token.as_ref())
    else {
        return Err(Problem::new(
            ProblemType::Forbidden,
            "the admin API is disabled: set the ADMIN_TOKEN secret",
        ));
    };
    if expected.admits(authorization) {
        Ok(())
    } else {
        Err(Problem::new(
            ProblemType::Unauthorized,
            "a valid admin bearer token is required",
        ))
    }
}

/// A request's head from a method, a target (`/path?query`) and headers: for tests, the fuzzer
/// and the benches. None when they do not make a valid request.
pub fn request_head(method: &str, target: &str, headers: &[(&str, &str)]) -> Option<Parts> {
    let mut builder = http::Request::builder().method(method).uri(target);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(()).ok().map(|r| r.into_parts().0)
}

#[cfg(test)]
mod tests;
