//! Deployment configuration: parsed once per isolate/instance, validated precisely. An invalid
//! setting is never guessed around: `/healthz` lists it and ingest refuses with 503.

use crate::application::delivery::sink::SinkFormat;
use crate::domain::calibration::{Profiles, EMBEDDED_PROFILES};
use std::rc::Rc;

use crate::application::rate_limit::RateLimit;
use crate::application::registry::{RegistryMode, StaticRegistry};
use crate::domain::device::check_tag_key;
use crate::http::auth::{AdminToken, AuthMode, DeviceAuth, MasterSecret, Secrets};
use crate::http::cors::Cors;
use crate::http::deployment::{Deployment, HostConventions, Policy, RegistryPolicy, RequestLimits};
use crate::ports::{ConfigSource, Secret};

pub use crate::http::deployment::ConfigError;

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub collector_url: String,
    pub collector_token: Option<Secret>,
    pub flush_interval_ms: u64,
    pub flush_max_items: usize,
    pub max_backlog: usize,
    pub max_readings_per_request: usize,
    pub max_body_bytes: usize,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub dead_letter_after_s: u64,
    pub edge_node: Option<String>,
    pub batcher_shards: u32,
    pub admin_token: Option<AdminToken>,
    pub auth: DeviceAuth,
    pub cors: Cors,
    /// None when `RATE_LIMIT_READINGS_PER_S=0`.
    pub rate_limit: Option<RateLimit>,
    pub max_url_bytes: usize,
    pub max_header_bytes: usize,
    pub sink_format: SinkFormat,
    /// How long profiles read from the host's key-value store are used before reading again.
    pub profiles_ttl_s: u64,
    pub registry: RegistryPolicy,
    /// Registry tags written as Influx tags.
    pub influx_tag_keys: Vec<String>,
}

/// One setting of the deployment: its name (a wrangler var or secret, an environment variable;
/// the Spin variable is the name in lower case), what it means, and how it is read. Parsing,
/// defaults, `/healthz` and the manifest check (`tests/manifests.rs`) all come from [`KEYS`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Key {
    pub name: &'static str,
    pub kind: Kind,
    pub meaning: &'static str,
    /// Read only by the Workers adapter (not a Spin variable).
    pub workers_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    /// An integer within `min..=max`.
    Integer { default: u64, min: u64, max: u64 },
    /// A decimal within `min..=max`.
    Decimal { default: f64, min: f64, max: f64 },
    /// Text checked by its own rules; `default` is what applies when it is unset, as documented.
    Text { default: &'static str, secret: bool },
}

impl Key {
    /// The default as the manifests write it (`"200"`), or the documented rule for text.
    pub fn default_text(&self) -> String {
        match self.kind {
            Kind::Integer { default, .. } => default.to_string(),
            Kind::Decimal { default, .. } => crate::application::rate_limit::decimal(default),
            Kind::Text { default, .. } => default.to_owned(),
        }
    }
}

const fn int(name: &'static str, default: u64, min: u64, max: u64, meaning: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Integer { default, min, max },
        meaning,
        workers_only: false,
    }
}

const fn text(name: &'static str, default: &'static str, meaning: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Text {
            default,
            secret: false,
        },
        meaning,
        workers_only: false,
    }
}

const fn secret(name: &'static str, default: &'static str, meaning: &'static str) -> Key {
    Key {
        name,
        kind: Kind::Text {
            default,
            secret: true,
        },
        meaning,
        workers_only: false,
    }
}

/// An integer setting within `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IntSetting {
    pub name: &'static str,
    pub default: u64,
    pub min: u64,
    pub max: u64,
    pub meaning: &'static str,
}

impl IntSetting {
    pub const fn key(&self) -> Key {
        int(self.name, self.default, self.min, self.max, self.meaning)
    }
}

/// A decimal setting within `min..=max`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecimalSetting {
    pub name: &'static str,
    pub default: f64,
    pub min: f64,
    pub max: f64,
    pub meaning: &'static str,
}

impl DecimalSetting {
    pub const fn key(&self) -> Key {
        Key {
            name: self.name,
            kind: Kind::Decimal {
                default: self.default,
                min: self.min,
                max: self.max,
            },
            meaning: self.meaning,
            workers_only: false,
        }
    }
}

pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
pub const DEFAULT_MAX_URL_BYTES: usize = 2048;
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8192;
const DEFAULT_PROFILES_TTL_S: u64 = 30;

/// The numeric settings, typed: each is read by its constant, so a misspelt or mistyped
/// setting does not compile (text settings are read by name from [`KEYS`]).
pub const FLUSH_INTERVAL_MS: IntSetting = IntSetting {
    name: "FLUSH_INTERVAL_MS",
    default: 200,
    min: 10,
    max: 60_000,
    meaning: "max age of a pending reading before its batch is sent",
};
pub const FLUSH_MAX_ITEMS: IntSetting = IntSetting {
    name: "FLUSH_MAX_ITEMS",
    default: 50,
    min: 1,
    max: 5_000,
    meaning: "batch size that sends a batch at once",
};
pub const MAX_BACKLOG: IntSetting = IntSetting {
    name: "MAX_BACKLOG",
    default: 10_000,
    min: 1,
    max: 10_000_000,
    meaning: "readings held undelivered before ingest answers 503",
};
pub const MAX_READINGS_PER_REQUEST: IntSetting = IntSetting {
    name: "MAX_READINGS_PER_REQUEST",
    default: 500,
    min: 1,
    max: 10_000,
    meaning: "readings per POST",
};
pub const MAX_BODY_BYTES: IntSetting = IntSetting {
    name: "MAX_BODY_BYTES",
    default: DEFAULT_MAX_BODY_BYTES as u64,
    min: 1_024,
    max: 10 * 1024 * 1024,
    meaning: "POST body size",
};
pub const RETRY_BASE_MS: IntSetting = IntSetting {
    name: "RETRY_BASE_MS",
    default: 200,
    min: 10,
    max: 600_000,
    meaning: "first step of the capped exponential backoff",
};
pub const RETRY_MAX_MS: IntSetting = IntSetting {
    name: "RETRY_MAX_MS",
    default: 5_000,
    min: 10,
    max: 3_600_000,
    meaning: "longest step of the backoff",
};
pub const DEAD_LETTER_AFTER_S: IntSetting = IntSetting {
    name: "DEAD_LETTER_AFTER_S",
    default: 300,
    min: 0,
    max: 86_400,
    meaning: "how long a reading the collector keeps failing (5xx, 408, 429...) while it takes other batches is retried alone before it becomes a dead letter (0: for ever)",
};
pub const RATE_LIMIT_BURST: IntSetting = IntSetting {
    name: "RATE_LIMIT_BURST",
    default: 500,
    min: 1,
    max: 1_000_000,
    meaning: "per-device token bucket size",
};
pub const MAX_URL_BYTES: IntSetting = IntSetting {
    name: "MAX_URL_BYTES",
    default: DEFAULT_MAX_URL_BYTES as u64,
    min: 256,
    max: 65_536,
    meaning: "path + query, else 414",
};
pub const MAX_HEADER_BYTES: IntSetting = IntSetting {
    name: "MAX_HEADER_BYTES",
    default: DEFAULT_MAX_HEADER_BYTES as u64,
    min: 1_024,
    max: 65_536,
    meaning: "all request headers, else 431",
};
pub const PROFILES_TTL_S: IntSetting = IntSetting {
    name: "PROFILES_TTL_S",
    default: DEFAULT_PROFILES_TTL_S,
    min: 1,
    max: 3_600,
    meaning: "how long profiles from the key-value store are used before reading again",
};
pub const REGISTRY_TTL_S: IntSetting = IntSetting {
    name: "REGISTRY_TTL_S",
    default: 60,
    min: 1,
    max: 3_600,
    meaning: "how long a device's registry record (or its absence) is cached per isolate/instance",
};
pub const BATCHER_SHARDS: IntSetting = IntSetting {
    name: "BATCHER_SHARDS",
    default: 1,
    min: 1,
    max: 64,
    meaning: "Durable Objects per colo",
};
pub const RATE_LIMIT_READINGS_PER_S: DecimalSetting = DecimalSetting {
    name: "RATE_LIMIT_READINGS_PER_S",
    default: 5.0,
    min: 0.0,
    max: 1_000_000.0,
    meaning: "per-device token bucket rate (0 = off)",
};

/// Every setting the service reads.
pub const KEYS: &[Key] = &[
    text("COLLECTOR_URL", "(required)", "where batches are POSTed"),
    secret(
        "COLLECTOR_TOKEN",
        "(none)",
        "sent as Authorization: Bearer to the collector",
    ),
    text("SINK_FORMAT", "json", "json, ndjson or influx"),
    FLUSH_INTERVAL_MS.key(),
    FLUSH_MAX_ITEMS.key(),
    MAX_BACKLOG.key(),
    MAX_READINGS_PER_REQUEST.key(),
    MAX_BODY_BYTES.key(),
    RETRY_BASE_MS.key(),
    RETRY_MAX_MS.key(),
    DEAD_LETTER_AFTER_S.key(),
    text(
        "EDGE_NODE",
        "(derived from the colo)",
        "node name in readings and batch envelopes",
    ),
    Key {
        workers_only: true,
        ..BATCHER_SHARDS.key()
    },
    secret(
        "ADMIN_TOKEN",
        "(none: admin API off; >= 32 bytes)",
        "bearer token of /admin/*",
    ),
    text(
        "AUTH_MODE",
        "(required: off, token, hmac or jwt)",
        "device authentication",
    ),
    secret(
        "AUTH_SECRET",
        "(required with AUTH_MODE token or hmac; >= 32 bytes)",
        "master secret every device key derives from",
    ),
    secret(
        "AUTH_SECRET_PREVIOUS",
        "(none)",
        "during a master-secret rotation, the secret being replaced: keys derived from it are still accepted",
    ),
    text(
        "JWT_AUDIENCE",
        "(required with AUTH_MODE=jwt)",
        "jwt: the aud every device token must name (e.g. the deployment's URL)",
    ),
    text(
        "REGISTRY_MODE",
        "off",
        "device registry: off, optional (records add tags, calibration, revocation) or required (only registered devices)",
    ),
    REGISTRY_TTL_S.key(),
    text(
        "REGISTRY",
        "(none: the host's key-value store)",
        "device records as one JSON object {\"<id>\": record}, read instead of the store (the portable flavour's registry)",
    ),
    text(
        "INFLUX_TAG_KEYS",
        "(none)",
        "influx: registry tag keys written as tags, comma-separated",
    ),
    text(
        "HMAC_HOST",
        "(none: the host each request was sent to)",
        "hmac: the host name every version-2 signature must name (the deployment's public host)",
    ),
    text(
        "HMAC_V1_UNTIL",
        "(none: version-1 signatures refused)",
        "Unix seconds until which hmac signatures of version 1 (no host, no content type) are accepted",
    ),
    text(
        "CORS_ALLOWED_ORIGINS",
        "(none: no CORS headers)",
        "browser origins allowed, comma-separated, or *",
    ),
    RATE_LIMIT_READINGS_PER_S.key(),
    RATE_LIMIT_BURST.key(),
    MAX_URL_BYTES.key(),
    MAX_HEADER_BYTES.key(),
    text(
        "CALIBRATION_PROFILES",
        "(embedded profiles/calibration.json)",
        "the profile set, JSON",
    ),
    PROFILES_TTL_S.key(),
];

/// The entry of `name` in [`KEYS`].
pub fn key(name: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.name == name)
}

impl Config {
    pub fn from_source(src: &dyn ConfigSource) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        let text = |key: &str| {
            src.get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // Each setting within its bounds, else its default and a named fault.
        let mut number = |setting: &IntSetting| -> u64 {
            let IntSetting {
                name,
                default,
                min,
                max,
                ..
            } = *setting;
            match text(name) {
                None => default,
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => n,
                    _ => {
                        errors.push(ConfigError::new(
                            name,
                            format!("must be an integer from {min} to {max}"),
                        ));
                        default
                    }
                },
            }
        };
        let flush_interval_ms = number(&FLUSH_INTERVAL_MS);
        let flush_max_items = number(&FLUSH_MAX_ITEMS) as usize;
        let max_backlog = number(&MAX_BACKLOG) as usize;
        let max_readings_per_request = number(&MAX_READINGS_PER_REQUEST) as usize;
        let max_body_bytes = number(&MAX_BODY_BYTES) as usize;
        let retry_base_ms = number(&RETRY_BASE_MS);
        let retry_max_ms = number(&RETRY_MAX_MS);
        let dead_letter_after_s = number(&DEAD_LETTER_AFTER_S);
        let batcher_shards = number(&BATCHER_SHARDS) as u32;
        let profiles_ttl_s = number(&PROFILES_TTL_S);
        let registry_ttl_s = number(&REGISTRY_TTL_S);
        let max_url_bytes = number(&MAX_URL_BYTES) as usize;
        let max_header_bytes = number(&MAX_HEADER_BYTES) as usize;
        let rate_burst = number(&RATE_LIMIT_BURST);
        let rate_per_s = {
            let DecimalSetting {
                name,
                default,
                min,
                max,
                ..
            } = RATE_LIMIT_READINGS_PER_S;
            match text(name) {
                None => default,
                Some(v) => match v.parse::<f64>() {
                    Ok(r) if r.is_finite() && (min..=max).contains(&r) => r,
                    _ => {
                        errors.push(ConfigError::new(
                            name,
                            format!("must be a number from {min} (off) to {max}"),
                        ));
                        default
                    }
                },
            }
        };
        let rate_limit = (rate_per_s > 0.0).then_some(RateLimit {
            per_s: rate_per_s,
            burst: rate_burst as f64,
        });
        if rate_limit.is_some() && (rate_burst as usize) < max_readings_per_request {
            errors.push(ConfigError::new(
                "RATE_LIMIT_BURST",
                "must be at least MAX_READINGS_PER_REQUEST, or a full request could never be admitted",
            ));
        }
        let v1_until_s = match text("HMAC_V1_UNTIL") {
            None => None,
            Some(v) => match v.parse::<u64>() {
                Ok(t) => Some(t),
                Err(_) => {
                    errors.push(ConfigError::new(
                        "HMAC_V1_UNTIL",
                        "must be a time in Unix seconds (or unset: version-1 signatures refused)",
                    ));
                    None
                }
            },
        };
        let secrets = |mode: AuthMode, errors: &mut Vec<ConfigError>| {
            let current = match text("AUTH_SECRET").as_deref().map(MasterSecret::new) {
                Some(Ok(secret)) => Some(secret),
                Some(Err(rule)) => {
                    errors.push(ConfigError::new("AUTH_SECRET", rule));
                    None
                }
                None => {
                    errors.push(ConfigError::new(
                        "AUTH_SECRET",
                        format!(
                            "is required with AUTH_MODE={} (a secret of at least 32 bytes)",
                            mode.as_str()
                        ),
                    ));
                    None
                }
            };
            let previous = match text("AUTH_SECRET_PREVIOUS")
                .as_deref()
                .map(MasterSecret::new)
            {
                Some(Ok(secret)) => Some(secret),
                Some(Err(rule)) => {
                    errors.push(ConfigError::new("AUTH_SECRET_PREVIOUS", rule));
                    None
                }
                None => None,
            };
            current.map(|current| Secrets { current, previous })
        };
        let registry_mode = match text("REGISTRY_MODE").as_deref() {
            None => RegistryMode::Off,
            Some(v) => RegistryMode::parse(v).unwrap_or_else(|| {
                errors.push(ConfigError::new(
                    "REGISTRY_MODE",
                    "must be off, optional or required",
                ));
                RegistryMode::Off
            }),
        };
        let auth = match text("AUTH_MODE").as_deref().map(AuthMode::parse) {
            None => {
                errors.push(ConfigError::new("AUTH_MODE", "is required: token, hmac or jwt (device authentication), or off to let anyone write"));
                DeviceAuth::Off
            }
            Some(None) => {
                errors.push(ConfigError::new(
                    "AUTH_MODE",
                    "must be off, token, hmac or jwt",
                ));
                DeviceAuth::Off
            }
            Some(Some(AuthMode::Off)) => DeviceAuth::Off,
            Some(Some(AuthMode::Jwt)) => {
                if registry_mode == RegistryMode::Off {
                    errors.push(ConfigError::new(
                        "REGISTRY_MODE",
                        "must be optional or required with AUTH_MODE=jwt: device public keys live in the registry",
                    ));
                }
                match text("JWT_AUDIENCE") {
                    Some(audience) => DeviceAuth::Jwt { audience },
                    None => {
                        errors.push(ConfigError::new(
                            "JWT_AUDIENCE",
                            "is required with AUTH_MODE=jwt (the aud every device token names, e.g. https://edge.example.com)",
                        ));
                        DeviceAuth::Off
                    }
                }
            }
            Some(Some(mode)) => match secrets(mode, &mut errors) {
                Some(secrets) if mode == AuthMode::Token => DeviceAuth::Token(secrets),
                Some(secrets) => DeviceAuth::Hmac {
                    secrets,
                    v1_until_s,
                    host: text("HMAC_HOST").map(|h| h.to_ascii_lowercase()),
                },
                None => DeviceAuth::Off,
            },
        };
        let fixed_registry = match text("REGISTRY") {
            None => None,
            Some(json) => match StaticRegistry::parse(&json) {
                Ok(registry) => Some(Rc::new(registry)),
                Err(faults) => {
                    errors.extend(faults.into_iter().map(|f| ConfigError::new("REGISTRY", f)));
                    None
                }
            },
        };
        let registry = RegistryPolicy {
            mode: registry_mode,
            ttl_ms: registry_ttl_s * 1000,
            fixed: fixed_registry,
        };
        let mut influx_tag_keys = Vec::new();
        for key in text("INFLUX_TAG_KEYS").unwrap_or_default().split(',') {
            let key = key.trim();
            if key.is_empty() {
                continue;
            }
            if let Err(rule) = check_tag_key(key) {
                errors.push(ConfigError::new("INFLUX_TAG_KEYS", rule));
            } else if matches!(key, "colo" | "device_id" | "edge_node") {
                errors.push(ConfigError::new(
                    "INFLUX_TAG_KEYS",
                    format!("{key} is already a tag of every point"),
                ));
            } else if !influx_tag_keys.iter().any(|k| k == key) {
                influx_tag_keys.push(key.to_owned());
            }
        }
        let admin_token = match text("ADMIN_TOKEN").as_deref().map(AdminToken::new) {
            None => None,
            Some(Ok(token)) => Some(token),
            Some(Err(rule)) => {
                errors.push(ConfigError::new("ADMIN_TOKEN", rule));
                None
            }
        };
        let cors =
            Cors::parse(&text("CORS_ALLOWED_ORIGINS").unwrap_or_default()).unwrap_or_else(|rule| {
                errors.push(ConfigError::new("CORS_ALLOWED_ORIGINS", rule));
                Cors::default()
            });

        if retry_max_ms < retry_base_ms {
            errors.push(ConfigError::new(
                "RETRY_MAX_MS",
                "must not be below RETRY_BASE_MS",
            ));
        }
        if max_backlog < max_readings_per_request {
            errors.push(ConfigError::new(
                "MAX_BACKLOG",
                "must be at least MAX_READINGS_PER_REQUEST, or a full request could never be accepted",
            ));
        }
        let collector_url = match text("COLLECTOR_URL") {
            None => {
                errors.push(ConfigError::new(
                    "COLLECTOR_URL",
                    "is required (e.g. https://collector.example.com/ingest)",
                ));
                String::new()
            }
            Some(u) if placeholder_host(&u) => {
                errors.push(ConfigError::new(
                    "COLLECTOR_URL",
                    "names a reserved example host (RFC 2606): set your collector's URL",
                ));
                u
            }
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => u,
            Some(_) => {
                errors.push(ConfigError::new(
                    "COLLECTOR_URL",
                    "must be an http:// or https:// URL",
                ));
                String::new()
            }
        };
        let sink_format = match text("SINK_FORMAT").as_deref() {
            None => SinkFormat::Json,
            Some(v) => SinkFormat::parse(v).unwrap_or_else(|| {
                errors.push(ConfigError::new(
                    "SINK_FORMAT",
                    "must be json, ndjson or influx",
                ));
                SinkFormat::Json
            }),
        };
        // Line-protocol timestamps are milliseconds: a write endpoint assuming nanoseconds would
        // file every point in January 1970.
        if sink_format == SinkFormat::Influx && !collector_url.contains("precision=ms") {
            errors.push(ConfigError::new("COLLECTOR_URL", "with SINK_FORMAT=influx it must ask for precision=ms (e.g. http://influx:8086/write?db=edge&precision=ms)"));
        }
        let edge_node = text("EDGE_NODE");
        if let Some(node) = &edge_node {
            if node.len() > 64
                || !node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
            {
                errors.push(ConfigError::new(
                    "EDGE_NODE",
                    "must be 1 to 64 characters of A-Z a-z 0-9 . _ : -",
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            collector_url,
            collector_token: text("COLLECTOR_TOKEN").map(Secret::new),
            flush_interval_ms,
            flush_max_items,
            max_backlog,
            max_readings_per_request,
            max_body_bytes,
            retry_base_ms,
            retry_max_ms,
            dead_letter_after_s,
            edge_node,
            batcher_shards,
            admin_token,
            auth,
            cors,
            rate_limit,
            max_url_bytes,
            max_header_bytes,
            sink_format,
            profiles_ttl_s,
            registry,
            influx_tag_keys,
        })
    }
}

impl Config {
    /// `Retry-After` (seconds) for a request refused because the delivery backlog is full: one
    /// longest retry step of the batcher, by when it has tried the collector again.
    pub fn backlog_retry_after_s(&self) -> u32 {
        self.retry_max_ms.div_ceil(1000).max(1) as u32
    }
}

/// Where the active calibration profiles came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileSource {
    Embedded,
    Variable,
}

impl ProfileSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Variable => "CALIBRATION_PROFILES",
        }
    }
}

/// Configuration and profiles as loaded, faults included.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: Result<Config, Vec<ConfigError>>,
    pub profiles: Result<Profiles, Vec<ConfigError>>,
    pub profile_source: ProfileSource,
}

impl Settings {
    pub fn load(src: &dyn ConfigSource) -> Self {
        let (profile_source, profiles) = match src
            .get("CALIBRATION_PROFILES")
            .filter(|v| !v.trim().is_empty())
        {
            Some(json) => (ProfileSource::Variable, Profiles::parse(&json)),
            None => (ProfileSource::Embedded, Profiles::parse(EMBEDDED_PROFILES)),
        };
        Self {
            config: Config::from_source(src),
            profiles: profiles.map_err(|e| {
                e.into_iter()
                    .map(|rule| ConfigError::new("CALIBRATION_PROFILES", rule))
                    .collect()
            }),
            profile_source,
        }
    }

    /// What the request pipeline needs of this deployment (`http::deployment`), built once per
    /// isolate or instance.
    pub fn deployment(&self, host: HostConventions) -> Deployment {
        let config = self.config.as_ref().ok();
        let limits = RequestLimits {
            max_url_bytes: config.map_or(DEFAULT_MAX_URL_BYTES, |c| c.max_url_bytes),
            max_header_bytes: config.map_or(DEFAULT_MAX_HEADER_BYTES, |c| c.max_header_bytes),
            max_body_bytes: config.map_or(DEFAULT_MAX_BODY_BYTES, |c| c.max_body_bytes),
        };
        Deployment {
            policy: self
                .config
                .as_ref()
                .map(Config::http_policy)
                .map_err(Clone::clone),
            profiles: self.profiles.clone(),
            profile_source: self.profile_source.as_str(),
            limits,
            edge_node: self.edge_node().map(str::to_owned),
            profiles_ttl_ms: config.map_or(DEFAULT_PROFILES_TTL_S, |c| c.profiles_ttl_s) * 1000,
            api_document: host.api_document,
            settings_help: host.settings_help,
        }
    }

    pub fn edge_node(&self) -> Option<&str> {
        self.config
            .as_ref()
            .ok()
            .and_then(|c| c.edge_node.as_deref())
    }
}

/// Whether an http(s) URL's host is one RFC 2606 reserves for examples (`collector.example.com`),
/// as the manifests' deployed environments ship it until an operator sets the real one.
fn placeholder_host(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    // Bytes, not `str` patterns: the Worker's upload is counted (a reverse char searcher is
    // half a kilobyte of it).
    let authority = rest.as_bytes();
    let end = authority
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(authority.len());
    let authority = &authority[..end];
    let start = authority
        .iter()
        .rposition(|b| *b == b'@')
        .map_or(0, |at| at + 1);
    let host = &authority[start..];
    let host = &host[..host.iter().position(|b| *b == b':').unwrap_or(host.len())];
    let host = host.strip_suffix(b".").unwrap_or(host).to_ascii_lowercase();
    [
        &b"example.com"[..],
        b"example.net",
        b"example.org",
        b"example",
    ]
    .iter()
    .any(|reserved| {
        host.ends_with(reserved)
            && (host.len() == reserved.len() || host[host.len() - reserved.len() - 1] == b'.')
    })
}

/// Each part's policy, built from the parsed settings: the parts below `config` never name
/// `Config`.
impl Config {
    /// The request pipeline's.
    pub fn http_policy(&self) -> Policy {
        Policy {
            auth: self.auth.clone(),
            cors: self.cors.clone(),
            admin_token: self.admin_token.clone(),
            max_body_bytes: self.max_body_bytes,
            max_readings_per_request: self.max_readings_per_request,
            rate_limit: self.rate_limit,
            registry: self.registry.clone(),
        }
    }

    /// The outbox's flush, retry and backlog policy.
    pub fn outbox(
        &self,
        wakeups: crate::application::delivery::outbox::Wakeups,
    ) -> crate::application::delivery::outbox::OutboxConfig {
        crate::application::delivery::outbox::OutboxConfig {
            flush: crate::application::delivery::policy::FlushPolicy {
                max_items: self.flush_max_items,
                max_age_ms: self.flush_interval_ms,
            },
            retry: crate::application::delivery::policy::RetryPolicy {
                base_ms: self.retry_base_ms,
                max_ms: self.retry_max_ms,
            },
            max_backlog: self.max_backlog,
            backlog_retry_after_s: self.backlog_retry_after_s(),
            wakeups,
            give_up_ms: self.dead_letter_after_s * 1000,
            node: self.edge_node.as_deref().unwrap_or("local").into(),
        }
    }

    /// Where batches go and in what shape.
    pub fn sink(&self) -> crate::application::delivery::outbox::SinkTarget {
        crate::application::delivery::outbox::SinkTarget {
            format: self.sink_format,
            url: self.collector_url.clone(),
            token: self.collector_token.clone(),
            tag_keys: self.influx_tag_keys.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::deployment::ApiDocument;
    use crate::ports::Pairs;

    #[test]
    fn a_collector_url_left_at_the_example_host_is_a_fault() {
        for url in [
            "https://collector.example.com/ingest",
            "http://user:pw@EXAMPLE.org:8080/x",
            "https://c.example./ingest",
        ] {
            let s = Settings::load(&Pairs(&[("COLLECTOR_URL", url), ("AUTH_MODE", "off")]));
            let faults = s.config.expect_err(url);
            assert!(
                faults
                    .iter()
                    .any(|f| f.key == "COLLECTOR_URL" && f.rule.contains("RFC 2606")),
                "{url}: {faults:?}"
            );
        }
        for url in [
            "https://collector.example.co/ingest",
            "https://notexample.com/",
        ] {
            let s = Settings::load(&Pairs(&[("COLLECTOR_URL", url), ("AUTH_MODE", "off")]));
            assert!(s.config.is_ok(), "{url}");
        }
    }

    #[test]
    fn defaults() {
        let c = Config::from_source(&Pairs(&[
            ("COLLECTOR_URL", "http://127.0.0.1:1/ingest"),
            ("AUTH_MODE", "off"),
        ]))
        .unwrap();
        assert_eq!(
            (
                c.flush_interval_ms,
                c.flush_max_items,
                c.max_readings_per_request
            ),
            (200, 50, 500)
        );
        assert_eq!(c.max_body_bytes, 262_144);
        assert_eq!(c.batcher_shards, 1);
        assert!(c.admin_token.is_none());
        assert_eq!(c.auth, DeviceAuth::Off);
        assert_eq!(
            c.rate_limit,
            Some(RateLimit {
                per_s: 5.0,
                burst: 500.0
            })
        );
        assert!(!c.cors.is_enabled());
    }

    #[test]
    fn influx_sink_needs_millisecond_precision() {
        let base = [("AUTH_MODE", "off"), ("SINK_FORMAT", "influx")];
        let e = Config::from_source(&Pairs(&[
            base[0],
            base[1],
            ("COLLECTOR_URL", "http://i:8086/write?db=edge"),
        ]))
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
        assert!(e.iter().any(|m| m.contains("precision=ms")), "{e:?}");
        let c = Config::from_source(&Pairs(&[
            base[0],
            base[1],
            ("COLLECTOR_URL", "http://i:8086/write?db=edge&precision=ms"),
        ]))
        .unwrap();
        assert_eq!(c.sink_format, SinkFormat::Influx);
        let e = Config::from_source(&Pairs(&[
            base[0],
            ("SINK_FORMAT", "csv"),
            ("COLLECTOR_URL", "http://x/"),
        ]))
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
        assert!(e.iter().any(|m| m.starts_with("SINK_FORMAT")), "{e:?}");
    }

    #[test]
    fn authentication_is_never_off_by_default() {
        let base = [("COLLECTOR_URL", "http://x/")];
        let e = Config::from_source(&Pairs(&base))
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert!(
            e.iter().any(|m| m.starts_with("AUTH_MODE: is required")),
            "{e:?}"
        );
        let e = Config::from_source(&Pairs(&[base[0], ("AUTH_MODE", "token")]))
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert!(
            e.iter().any(|m| m.starts_with("AUTH_SECRET: is required")),
            "{e:?}"
        );
        let e = Config::from_source(&Pairs(&[
            base[0],
            ("AUTH_MODE", "hmac"),
            ("AUTH_SECRET", "short"),
        ]))
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
        // The error names the rule, never the secret.
        assert!(e.iter().all(|m| !m.contains("short")), "{e:?}");
        let secret = "k".repeat(32);
        let c = Config::from_source(&Pairs(&[
            base[0],
            ("AUTH_MODE", "hmac"),
            ("AUTH_SECRET", &secret),
        ]))
        .unwrap();
        assert_eq!(c.auth.mode(), AuthMode::Hmac);
        assert!(!format!("{c:?}").contains(&secret));
    }

    #[test]
    fn faults_name_the_setting_and_rule_never_the_value() {
        let url = "http://user:pa55word@influx:8086/write?db=edge";
        let short_admin = "admin-short";
        let e = Config::from_source(&Pairs(&[
            ("COLLECTOR_URL", url),
            ("SINK_FORMAT", "influx"),
            ("AUTH_MODE", "token"),
            ("AUTH_SECRET", "tiny-secret"),
            ("ADMIN_TOKEN", short_admin),
            ("FLUSH_MAX_ITEMS", "999999999"),
            ("CORS_ALLOWED_ORIGINS", "ftp:/weird-origin"),
            ("HMAC_V1_UNTIL", "soon"),
        ]))
        .unwrap_err();
        let keys: Vec<_> = e.iter().map(|f| f.key).collect();
        for key in [
            "COLLECTOR_URL",
            "AUTH_SECRET",
            "ADMIN_TOKEN",
            "FLUSH_MAX_ITEMS",
            "CORS_ALLOWED_ORIGINS",
            "HMAC_V1_UNTIL",
        ] {
            assert!(keys.contains(&key), "{key} not named in {e:?}");
        }
        let text = e
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        for value in [
            "pa55word",
            "tiny-secret",
            short_admin,
            "999999999",
            "weird-origin",
            "soon",
            "11",
        ] {
            assert!(!text.contains(value), "{value:?} echoed: {text}");
        }
        // An admin token of 32 bytes or more is kept only as a digest.
        let admin = "a".repeat(32);
        let c = Config::from_source(&Pairs(&[
            ("COLLECTOR_URL", "http://x/"),
            ("AUTH_MODE", "off"),
            ("ADMIN_TOKEN", &admin),
            ("COLLECTOR_TOKEN", "collector-secret"),
        ]))
        .unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains(&admin) && !debug.contains("collector-secret"),
            "{debug}"
        );
        assert!(c
            .admin_token
            .unwrap()
            .admits(Some(&format!("Bearer {admin}"))));
    }

    #[test]
    fn every_fault_is_named() {
        let e = Config::from_source(&Pairs(&[
            ("FLUSH_MAX_ITEMS", "0"),
            ("RETRY_BASE_MS", "900"),
            ("RETRY_MAX_MS", "100"),
            ("COLLECTOR_URL", "ftp://x"),
        ]))
        .unwrap_err()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>();
        assert!(e.iter().any(|m| m.starts_with("FLUSH_MAX_ITEMS")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("RETRY_MAX_MS")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("COLLECTOR_URL")), "{e:?}");
        let e = Config::from_source(&Pairs(&[]))
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert!(e.iter().any(|m| m.contains("COLLECTOR_URL: is required")));
    }

    #[test]
    fn profiles_override_and_report() {
        let s = Settings::load(&Pairs(&[
            ("COLLECTOR_URL", "http://x/"),
            ("AUTH_MODE", "off"),
            (
                "CALIBRATION_PROFILES",
                "[{\"match\":\"a\",\"gain\":-1,\"version\":1}]",
            ),
        ]));
        assert_eq!(s.profile_source, ProfileSource::Variable);
        let p = s
            .deployment(HostConventions::serving(
                ApiDocument::StaticAsset,
                "set them here",
            ))
            .ready()
            .unwrap_err();
        assert_eq!(p.status(), 503);
        assert!(
            p.detail()
                .contains("CALIBRATION_PROFILES: profiles[0].gain")
                && p.detail().contains("; set them here;"),
            "{}",
            p.detail()
        );
        let ok = Settings::load(&Pairs(&[
            ("COLLECTOR_URL", "http://x/"),
            ("AUTH_MODE", "off"),
        ]));
        assert!(ok
            .deployment(HostConventions::serving(
                ApiDocument::StaticAsset,
                "set them here"
            ))
            .ready()
            .is_ok());
        assert_eq!(ok.profile_source, ProfileSource::Embedded);
    }
}
