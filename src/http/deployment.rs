//! What the request pipeline needs of the deployment: its HTTP policy (limits, credentials,
//! CORS, the admin token), the calibration profiles, and every configuration fault. `config`
//! builds it from the settings it parsed (`Settings::deployment`); nothing in `http` reads a
//! setting by name.

use std::rc::Rc;

use crate::application::rate_limit::RateLimit;
use crate::application::registry::{RegistryMode, StaticRegistry};
use crate::domain::calibration::Profiles;
use crate::http::auth::{AdminToken, DeviceAuth};
use crate::http::cors::Cors;
use crate::http::problem::{Problem, ProblemType};

/// A configuration fault: the setting and the rule it breaks. It never carries the value, since
/// `/healthz` and every `not-configured` answer list faults to anyone, and a value may be a
/// secret (or a URL with credentials in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: &'static str,
    pub rule: String,
}

impl ConfigError {
    pub fn new(key: &'static str, rule: impl Into<String>) -> Self {
        Self {
            key,
            rule: rule.into(),
        }
    }
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.rule)
    }
}

/// The HTTP side of a valid configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub auth: DeviceAuth,
    pub cors: Cors,
    pub admin_token: Option<AdminToken>,
    pub max_body_bytes: usize,
    pub max_readings_per_request: usize,
    /// For the `429` answer's detail; `None` when the limit is off.
    pub rate_limit: Option<RateLimit>,
    pub registry: RegistryPolicy,
}

/// How the device registry is read (`REGISTRY_MODE`, `REGISTRY_TTL_S`, `REGISTRY`).
#[derive(Debug, Clone, PartialEq)]
pub struct RegistryPolicy {
    pub mode: RegistryMode,
    pub ttl_ms: u64,
    /// Records given whole in the configuration: read instead of the host's store.
    pub fixed: Option<Rc<StaticRegistry>>,
}

/// Limits enforced on every request, even before the configuration is known to be valid (its
/// own values when it is, the defaults when not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    pub max_url_bytes: usize,
    pub max_header_bytes: usize,
    pub max_body_bytes: usize,
}

/// Who answers `GET /openapi.json`.
#[derive(Debug, Clone, Copy)]
pub enum ApiDocument {
    /// The function, with this document (`routes::OPENAPI`).
    Served(&'static str),
    /// The platform, in front of the function: Workers static assets (wrangler.toml
    /// `[assets]`), free of Worker requests, and the document stays out of the Worker's upload.
    /// A request that reaches the function anyway finds nothing there.
    StaticAsset,
}

/// What the pipeline's answers say of the host it runs on.
#[derive(Debug, Clone, Copy)]
pub struct HostConventions {
    pub api_document: ApiDocument,
    /// Where this host's settings and secrets are set, named in every `not-configured` answer
    /// so that a newcomer's first request says what to create.
    pub settings_help: &'static str,
}

impl HostConventions {
    /// A host's conventions: who answers `GET /openapi.json`, and where its settings go.
    pub const fn serving(api_document: ApiDocument, settings_help: &'static str) -> Self {
        Self {
            api_document,
            settings_help,
        }
    }
}

/// The deployment as the pipeline sees it, faults included.
#[derive(Debug, Clone)]
pub struct Deployment {
    pub policy: Result<Policy, Vec<ConfigError>>,
    pub profiles: Result<Profiles, Vec<ConfigError>>,
    /// Where the deployment's profiles came from (`embedded`, `CALIBRATION_PROFILES`).
    pub profile_source: &'static str,
    pub limits: RequestLimits,
    pub edge_node: Option<String>,
    /// How long profiles read from the host's key-value store are used before reading again.
    pub profiles_ttl_ms: u64,
    pub api_document: ApiDocument,
    pub settings_help: &'static str,
}

impl Deployment {
    /// Both halves, or the 503 that ingest answers while the deployment is misconfigured.
    pub fn ready(&self) -> Result<(&Policy, &Profiles), Problem> {
        match (&self.policy, &self.profiles) {
            (Ok(c), Ok(p)) => Ok((c, p)),
            _ => Err(Problem::new(
                ProblemType::NotConfigured,
                format!(
                    "the deployment's configuration is invalid: {}; {}; see GET /healthz",
                    self.errors().join("; "),
                    self.settings_help
                ),
            )),
        }
    }

    /// Every fault, as `KEY: rule` (never a value).
    pub fn errors(&self) -> Vec<String> {
        let mut all = Vec::new();
        if let Err(e) = &self.policy {
            all.extend(e.iter().map(ToString::to_string));
        }
        if let Err(e) = &self.profiles {
            all.extend(e.iter().map(ToString::to_string));
        }
        all
    }

    /// CORS headers for an ordinary answer to a request from `origin`.
    pub fn cors_headers(&self, origin: Option<&str>) -> Vec<(&'static str, String)> {
        self.policy
            .as_ref()
            .map(|p| p.cors.response_headers(origin))
            .unwrap_or_default()
    }

    pub fn edge_node(&self) -> Option<&str> {
        self.edge_node.as_deref()
    }
}
