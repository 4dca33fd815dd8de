//! Deployment configuration: parsed once per isolate/instance, validated precisely. An invalid
//! setting is never guessed around: `/healthz` lists it and ingest refuses with 503.

use crate::calibration::{Profiles, EMBEDDED_PROFILES};
use crate::host::ConfigSource;
use crate::problem::{Problem, ProblemType};

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub collector_url: String,
    pub collector_token: Option<String>,
    pub flush_interval_ms: u64,
    pub flush_max_items: usize,
    pub max_backlog: usize,
    pub max_readings_per_request: usize,
    pub max_body_bytes: usize,
    pub retry_base_ms: u64,
    pub retry_max_ms: u64,
    pub edge_node: Option<String>,
    pub batcher_shards: u32,
    pub admin_token: Option<String>,
    /// Spin: age after which a spilled reading counts as orphaned and any instance re-sends it.
    pub spill_grace_ms: u64,
}

pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;

/// Every key the service reads, with its default, for the README and `/healthz`.
pub const KEYS: &[(&str, &str)] = &[
    ("COLLECTOR_URL", "(required)"),
    ("COLLECTOR_TOKEN", "(none; secret)"),
    ("FLUSH_INTERVAL_MS", "200"),
    ("FLUSH_MAX_ITEMS", "50"),
    ("MAX_BACKLOG", "10000"),
    ("MAX_READINGS_PER_REQUEST", "500"),
    ("MAX_BODY_BYTES", "262144"),
    ("RETRY_BASE_MS", "200"),
    ("RETRY_MAX_MS", "5000"),
    ("EDGE_NODE", "(derived from the colo)"),
    ("BATCHER_SHARDS", "1"),
    ("ADMIN_TOKEN", "(none: admin API off; secret)"),
    (
        "CALIBRATION_PROFILES",
        "(embedded profiles/calibration.json)",
    ),
];

impl Config {
    pub fn from_source(src: &dyn ConfigSource) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let text = |key: &str| {
            src.get(key)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut number = |key: &str, default: u64, min: u64, max: u64| -> u64 {
            match text(key) {
                None => default,
                Some(v) => match v.parse::<u64>() {
                    Ok(n) if (min..=max).contains(&n) => n,
                    _ => {
                        errors.push(format!(
                            "{key}: must be an integer from {min} to {max} (got {v:?})"
                        ));
                        default
                    }
                },
            }
        };
        let flush_interval_ms = number("FLUSH_INTERVAL_MS", 200, 10, 60_000);
        let flush_max_items = number("FLUSH_MAX_ITEMS", 50, 1, 5_000) as usize;
        let max_backlog = number("MAX_BACKLOG", 10_000, 1, 10_000_000) as usize;
        let max_readings_per_request = number("MAX_READINGS_PER_REQUEST", 500, 1, 10_000) as usize;
        let max_body_bytes = number(
            "MAX_BODY_BYTES",
            DEFAULT_MAX_BODY_BYTES as u64,
            1_024,
            10 * 1024 * 1024,
        ) as usize;
        let retry_base_ms = number("RETRY_BASE_MS", 200, 10, 600_000);
        let retry_max_ms = number("RETRY_MAX_MS", 5_000, 10, 3_600_000);
        let batcher_shards = number("BATCHER_SHARDS", 1, 1, 64) as u32;
        let spill_grace_ms = number("SPILL_GRACE_MS", 5_000, 100, 3_600_000);

        if retry_max_ms < retry_base_ms {
            errors.push(format!(
                "RETRY_MAX_MS ({retry_max_ms}) must not be below RETRY_BASE_MS ({retry_base_ms})"
            ));
        }
        if max_backlog < max_readings_per_request {
            errors.push(format!(
                "MAX_BACKLOG ({max_backlog}) must be at least MAX_READINGS_PER_REQUEST ({max_readings_per_request}), or a full request could never be accepted"
            ));
        }
        let collector_url = match text("COLLECTOR_URL") {
            None => {
                errors.push(
                    "COLLECTOR_URL: is required (e.g. https://collector.example.com/ingest)".into(),
                );
                String::new()
            }
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => u,
            Some(u) => {
                errors.push(format!(
                    "COLLECTOR_URL: must be an http:// or https:// URL (got {u:?})"
                ));
                String::new()
            }
        };
        let edge_node = text("EDGE_NODE");
        if let Some(node) = &edge_node {
            if node.len() > 64
                || !node
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-'))
            {
                errors.push("EDGE_NODE: must be 1 to 64 characters of A-Z a-z 0-9 . _ : -".into());
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Self {
            collector_url,
            collector_token: text("COLLECTOR_TOKEN"),
            flush_interval_ms,
            flush_max_items,
            max_backlog,
            max_readings_per_request,
            max_body_bytes,
            retry_base_ms,
            retry_max_ms,
            edge_node,
            batcher_shards,
            admin_token: text("ADMIN_TOKEN"),
            spill_grace_ms,
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
    pub config: Result<Config, Vec<String>>,
    pub profiles: Result<Profiles, Vec<String>>,
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
                    .map(|m| format!("CALIBRATION_PROFILES: {m}"))
                    .collect()
            }),
            profile_source,
        }
    }

    /// Both halves, or the 503 that ingest answers while the deployment is misconfigured.
    pub fn ready(&self) -> Result<(&Config, &Profiles), Problem> {
        match (&self.config, &self.profiles) {
            (Ok(c), Ok(p)) => Ok((c, p)),
            _ => Err(Problem::new(
                ProblemType::NotConfigured,
                format!(
                    "the deployment's configuration is invalid: {}; see GET /healthz",
                    self.errors().join("; ")
                ),
            )),
        }
    }

    pub fn errors(&self) -> Vec<String> {
        let mut all = Vec::new();
        if let Err(e) = &self.config {
            all.extend(e.iter().cloned());
        }
        if let Err(e) = &self.profiles {
            all.extend(e.iter().cloned());
        }
        all
    }

    /// The body limit to enforce even before the configuration is known to be valid.
    pub fn max_body_bytes(&self) -> usize {
        self.config
            .as_ref()
            .map(|c| c.max_body_bytes)
            .unwrap_or(DEFAULT_MAX_BODY_BYTES)
    }

    pub fn edge_node(&self) -> Option<&str> {
        self.config
            .as_ref()
            .ok()
            .and_then(|c| c.edge_node.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::Pairs;

    #[test]
    fn defaults() {
        let c =
            Config::from_source(&Pairs(&[("COLLECTOR_URL", "http://127.0.0.1:1/ingest")])).unwrap();
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
    }

    #[test]
    fn every_fault_is_named() {
        let e = Config::from_source(&Pairs(&[
            ("FLUSH_MAX_ITEMS", "0"),
            ("RETRY_BASE_MS", "900"),
            ("RETRY_MAX_MS", "100"),
            ("COLLECTOR_URL", "ftp://x"),
        ]))
        .unwrap_err();
        assert!(e.iter().any(|m| m.starts_with("FLUSH_MAX_ITEMS")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("RETRY_MAX_MS")), "{e:?}");
        assert!(e.iter().any(|m| m.starts_with("COLLECTOR_URL")), "{e:?}");
        let e = Config::from_source(&Pairs(&[])).unwrap_err();
        assert!(e[0].contains("COLLECTOR_URL: is required"));
    }

    #[test]
    fn profiles_override_and_report() {
        let s = Settings::load(&Pairs(&[
            ("COLLECTOR_URL", "http://x/"),
            (
                "CALIBRATION_PROFILES",
                "[{\"match\":\"a\",\"gain\":-1,\"version\":1}]",
            ),
        ]));
        assert_eq!(s.profile_source, ProfileSource::Variable);
        let p = s.ready().unwrap_err();
        assert_eq!(p.status(), 503);
        assert!(
            p.detail()
                .contains("CALIBRATION_PROFILES: profiles[0].gain"),
            "{}",
            p.detail()
        );
        let ok = Settings::load(&Pairs(&[("COLLECTOR_URL", "http://x/")]));
        assert!(ok.ready().is_ok());
        assert_eq!(ok.profile_source, ProfileSource::Embedded);
    }
}
