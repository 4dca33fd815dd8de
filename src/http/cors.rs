//! CORS for browser clients (dashboards, web-connected gateways): an allowlist of origins from
//! `CORS_ALLOWED_ORIGINS`. Listed origins get the `Access-Control-*` headers and preflights;
//! any other origin gets none, so the browser withholds the answer from its page.

pub const ALLOWED_METHODS: &str = "GET, POST, OPTIONS";
pub const ALLOWED_HEADERS: &[&str] = &["authorization", "content-type", "idempotency-key"];
pub const EXPOSED_HEADERS: &str = "retry-after, x-request-id, server-timing";
pub const MAX_AGE_S: u32 = 600;

/// The allowlist: exact origins (`scheme://host[:port]`) or `*` for any origin.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Cors {
    any: bool,
    origins: Vec<String>,
}

type Headers = Vec<(&'static str, String)>;

impl Cors {
    pub fn parse(list: &str) -> Result<Self, String> {
        let mut cors = Self::default();
        for (i, origin) in list
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .enumerate()
        {
            if origin == "*" {
                cors.any = true;
            } else if is_origin(origin) {
                cors.origins.push(origin.to_ascii_lowercase());
            } else {
                return Err(format!(
                    "entry {} is not an origin like https://app.example.com",
                    i + 1
                ));
            }
        }
        Ok(cors)
    }

    pub fn is_enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    fn allows(&self, origin: &str) -> bool {
        self.any || self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin))
    }

    /// Headers for an ordinary answer to a request from `origin`.
    pub fn response_headers(&self, origin: Option<&str>) -> Headers {
        let mut headers = Headers::new();
        if !self.is_enabled() {
            return headers;
        }
        // The answer depends on Origin whenever CORS is on, allowed or not: caches must know.
        headers.push(("vary", "Origin".into()));
        if let Some(origin) = origin.filter(|o| self.allows(o)) {
            headers.push(("access-control-allow-origin", self.echo(origin)));
            headers.push(("access-control-expose-headers", EXPOSED_HEADERS.into()));
        }
        headers
    }

    /// The answer to a preflight (`OPTIONS` with `Access-Control-Request-Method`). An origin not
    /// listed, or a method or header not offered, gets a bare 204 without any `Access-Control-*`.
    pub fn preflight_headers(
        &self,
        origin: Option<&str>,
        method: Option<&str>,
        request_headers: Option<&str>,
    ) -> Headers {
        let mut headers = vec![(
            "vary",
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers".to_owned(),
        )];
        let Some(origin) = origin.filter(|o| self.allows(o)) else {
            return headers;
        };
        if !matches!(method, Some("GET" | "POST")) {
            return headers;
        }
        let requested_ok = request_headers.unwrap_or("").split(',').all(|h| {
            let h = h.trim();
            h.is_empty() || ALLOWED_HEADERS.iter().any(|a| a.eq_ignore_ascii_case(h))
        });
        if !requested_ok {
            return headers;
        }
        headers.push(("access-control-allow-origin", self.echo(origin)));
        headers.push(("access-control-allow-methods", ALLOWED_METHODS.into()));
        headers.push(("access-control-allow-headers", ALLOWED_HEADERS.join(", ")));
        headers.push(("access-control-max-age", MAX_AGE_S.to_string()));
        headers
    }

    fn echo(&self, origin: &str) -> String {
        if self.origins.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
            origin.to_owned()
        } else {
            "*".to_owned()
        }
    }
}

fn is_origin(s: &str) -> bool {
    let Some(rest) = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
    else {
        return false;
    };
    !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(h: &'a Headers, name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_str())
    }

    #[test]
    fn listed_origins_only() {
        let cors = Cors::parse("https://app.example.com, http://localhost:5173").unwrap();
        let ok = cors.response_headers(Some("https://app.example.com"));
        assert_eq!(
            get(&ok, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(get(&ok, "vary"), Some("Origin"));
        let other = cors.response_headers(Some("https://evil.example"));
        assert_eq!(get(&other, "access-control-allow-origin"), None);
        assert_eq!(get(&other, "vary"), Some("Origin"));
        assert!(Cors::default()
            .response_headers(Some("https://x"))
            .is_empty());
    }

    #[test]
    fn preflight() {
        let cors = Cors::parse("https://app.example.com").unwrap();
        let ok = cors.preflight_headers(
            Some("https://app.example.com"),
            Some("POST"),
            Some("Content-Type, Authorization"),
        );
        assert_eq!(
            get(&ok, "access-control-allow-methods"),
            Some(ALLOWED_METHODS)
        );
        assert_eq!(get(&ok, "access-control-max-age"), Some("600"));
        for (origin, method, headers) in [
            ("https://evil.example", "POST", ""),
            ("https://app.example.com", "DELETE", ""),
            ("https://app.example.com", "POST", "x-secret"),
        ] {
            let h = cors.preflight_headers(Some(origin), Some(method), Some(headers));
            assert_eq!(
                get(&h, "access-control-allow-origin"),
                None,
                "{origin} {method}"
            );
            assert!(get(&h, "vary").unwrap().contains("Origin"));
        }
    }

    #[test]
    fn wildcard_and_bad_entries() {
        let any = Cors::parse("*").unwrap();
        assert_eq!(
            get(
                &any.response_headers(Some("https://x.example")),
                "access-control-allow-origin"
            ),
            Some("*")
        );
        assert!(Cors::parse("app.example.com").is_err());
        assert!(Cors::parse("https://a.example/path").is_err());
        assert!(!Cors::parse("").unwrap().is_enabled());
    }
}
