//! Device authentication without a device table: every device's key is derived from one master
//! secret, `key = hex(HMAC-SHA256(AUTH_SECRET, device_id))`.
//!
//! - `token` mode: the device sends its key as `Authorization: Bearer <key>`.
//! - `hmac` mode: the device signs each request with its key (see [`canonical_request`]) and
//!   sends `Authorization: EE-HMAC-SHA256 device_id=<id>,timestamp=<unix s>,signature=<hex>`;
//!   a timestamp more than [`REPLAY_WINDOW_S`] from the edge's clock is refused.
//!
//! Either way a request may only carry readings of the device its credentials name. Failures
//! never say which part of a credential was wrong, and comparisons run in constant time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::domain::reading::DeviceId;
use crate::http::problem::{Problem, ProblemType};

type HmacSha256 = Hmac<Sha256>;

/// The signature scheme's name, first in the `Authorization` header and the canonical request.
pub const HMAC_SCHEME: &str = "EE-HMAC-SHA256";
/// How far (seconds) a signed request's timestamp may be from the edge's clock.
pub const REPLAY_WINDOW_S: u64 = 300;
/// Shortest master secret accepted: 32 bytes, the HMAC-SHA256 block's worth of entropy.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    Off,
    Token,
    Hmac,
}

impl AuthMode {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "off" => Some(Self::Off),
            "token" => Some(Self::Token),
            "hmac" => Some(Self::Hmac),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` challenge of a 401 in this mode.
    pub fn challenge(self) -> &'static str {
        match self {
            Self::Hmac => "EE-HMAC-SHA256 realm=\"edge-enrich\"",
            _ => "Bearer realm=\"edge-enrich\"",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Token => "token",
            Self::Hmac => "hmac",
        }
    }
}

/// The master secret. Its `Debug` shows nothing, so it cannot leak through a log of the config.
#[derive(Clone, PartialEq)]
pub struct MasterSecret(Vec<u8>);

impl MasterSecret {
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "AUTH_SECRET: must be at least {MIN_SECRET_LEN} bytes (got {})",
                secret.len()
            ));
        }
        Ok(Self(secret.as_bytes().to_vec()))
    }

    /// A device's key (and `token`-mode bearer token): 64 lowercase hex digits.
    pub fn device_key(&self, device_id: &str) -> String {
        hex(&hmac(&self.0, device_id.as_bytes()))
    }
}

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(..)")
    }
}

/// How this deployment authenticates devices; `Off` only by explicit choice (`AUTH_MODE=off`).
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceAuth {
    Off,
    Token(MasterSecret),
    Hmac(MasterSecret),
}

impl DeviceAuth {
    pub fn mode(&self) -> AuthMode {
        match self {
            Self::Off => AuthMode::Off,
            Self::Token(_) => AuthMode::Token,
            Self::Hmac(_) => AuthMode::Hmac,
        }
    }

    /// The checks that need no body, made before a byte of it is read: the header is there and
    /// well formed, and in `hmac` mode its timestamp is within the window.
    pub fn presented<'a>(
        &self,
        authorization: Option<&'a str>,
        now_ms: u64,
    ) -> Result<Presented<'a>, Problem> {
        match self {
            Self::Off => Ok(Presented::Anyone),
            Self::Token(_) => {
                let token = authorization
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| unauthenticated(AuthMode::Token))?;
                Ok(Presented::Token(token.to_ascii_lowercase()))
            }
            Self::Hmac(_) => {
                let sig = authorization
                    .and_then(SignatureHeader::parse)
                    .ok_or_else(|| unauthenticated(AuthMode::Hmac))?;
                let now_s = now_ms / 1000;
                if sig.timestamp.abs_diff(now_s) > REPLAY_WINDOW_S {
                    return Err(Problem::new(
                        ProblemType::Unauthorized,
                        format!("the signature's timestamp is more than {REPLAY_WINDOW_S} s from the edge's clock; sign with the current time"),
                    )
                    .with_challenge(AuthMode::Hmac.challenge()));
                }
                Ok(Presented::Signature(sig))
            }
        }
    }

    /// The check that needs the body: in `hmac` mode, the signature over the whole request
    /// (body digest included). Returns who the credentials speak for.
    pub fn verify(
        &self,
        presented: Presented<'_>,
        req: &SignedParts<'_>,
    ) -> Result<Credential, Problem> {
        match (self, presented) {
            (_, Presented::Anyone) => Ok(Credential::Anyone),
            (_, Presented::Token(token)) => Ok(Credential::Token(token)),
            (Self::Hmac(secret), Presented::Signature(sig)) => {
                let key = secret.device_key(sig.device_id.as_str());
                let expected = hmac(
                    key.as_bytes(),
                    canonical_request(req, sig.timestamp).as_bytes(),
                );
                let given = unhex(sig.signature).unwrap_or_default();
                if bool::from(expected.as_slice().ct_eq(&given)) {
                    Ok(Credential::Device(sig.device_id))
                } else {
                    Err(unauthenticated(AuthMode::Hmac))
                }
            }
            (_, Presented::Signature(_)) => Err(unauthenticated(self.mode())),
        }
    }

    /// Both checks at once, for a request whose body is in hand.
    pub fn verify_request(
        &self,
        req: &SignedParts<'_>,
        authorization: Option<&str>,
        now_ms: u64,
    ) -> Result<Credential, Problem> {
        let presented = self.presented(authorization, now_ms)?;
        self.verify(presented, req)
    }

    /// The check that needs the readings: every one must belong to the authenticated device.
    pub fn authorize_devices<'d>(
        &self,
        credential: &Credential,
        mut devices: impl Iterator<Item = &'d str>,
    ) -> Result<(), Problem> {
        let device = match (self, credential) {
            (Self::Off, _) | (_, Credential::Anyone) => return Ok(()),
            (_, Credential::Device(device)) => device.as_str().to_owned(),
            (Self::Token(secret), Credential::Token(token)) => {
                // The token names no device: it must be the key of the readings' device.
                let first = devices.next().unwrap_or_default().to_owned();
                let expected = secret.device_key(&first);
                if !bool::from(expected.as_bytes().ct_eq(token.as_bytes())) {
                    return Err(unauthenticated(AuthMode::Token));
                }
                first
            }
            (_, Credential::Token(_)) => return Err(unauthenticated(self.mode())),
        };
        match devices.find(|d| *d != device) {
            None => Ok(()),
            Some(_) => Err(Problem::new(
                ProblemType::Forbidden,
                "these credentials may only send readings of their own device_id; nothing was accepted",
            )),
        }
    }
}

/// Credentials as presented, checked for shape (and time) before the body is read.
#[derive(Debug)]
pub enum Presented<'a> {
    /// Authentication is off.
    Anyone,
    /// A well-formed bearer token, to check against the readings' device.
    Token(String),
    /// A well-formed signature within the time window, to check over the body.
    Signature(SignatureHeader<'a>),
}

/// What the request's credentials established.
#[derive(Debug, Clone, PartialEq)]
pub enum Credential {
    /// Authentication is off.
    Anyone,
    /// A well-formed bearer token, checked against the readings' device.
    Token(String),
    /// A verified signature by this device.
    Device(DeviceId),
}

/// The parts of a request a signature covers.
pub struct SignedParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// Exactly as sent, without the leading `?`.
    pub query: &'a str,
    pub body: &'a [u8],
}

/// The string a device signs in `hmac` mode, lines joined by `\n`:
/// scheme, method, path, query, timestamp, hex SHA-256 of the body.
pub fn canonical_request(req: &SignedParts<'_>, timestamp: u64) -> String {
    let digest = hex(&Sha256::digest(req.body));
    format!(
        "{HMAC_SCHEME}\n{}\n{}\n{}\n{timestamp}\n{digest}",
        req.method, req.path, req.query
    )
}

/// The `Authorization` value a device sends in `hmac` mode (for clients, tests and the simulator).
pub fn sign(device_key: &str, device_id: &str, req: &SignedParts<'_>, timestamp: u64) -> String {
    let signature = hex(&hmac(
        device_key.as_bytes(),
        canonical_request(req, timestamp).as_bytes(),
    ));
    format!("{HMAC_SCHEME} device_id={device_id},timestamp={timestamp},signature={signature}")
}

#[derive(Debug)]
pub struct SignatureHeader<'a> {
    device_id: DeviceId,
    timestamp: u64,
    signature: &'a str,
}

impl<'a> SignatureHeader<'a> {
    fn parse(header: &'a str) -> Option<Self> {
        let params = header.strip_prefix(HMAC_SCHEME)?.strip_prefix(' ')?;
        let (mut device_id, mut timestamp, mut signature) = (None, None, None);
        for part in params.split(',') {
            let (name, value) = part.trim().split_once('=')?;
            let slot = match name {
                "device_id" => &mut device_id,
                "timestamp" => &mut timestamp,
                "signature" => &mut signature,
                _ => return None,
            };
            if slot.replace(value).is_some() {
                return None; // a repeated parameter is ambiguous
            }
        }
        let timestamp = timestamp?;
        if timestamp.is_empty()
            || timestamp.len() > 12
            || !timestamp.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let signature = signature.filter(|s| s.len() == 64)?;
        Some(Self {
            device_id: DeviceId::parse(device_id?).ok()?,
            timestamp: timestamp.parse().ok()?,
            signature,
        })
    }
}

fn unauthenticated(mode: AuthMode) -> Problem {
    let how = match mode {
        AuthMode::Hmac => "a valid EE-HMAC-SHA256 signature",
        _ => "a valid device bearer token",
    };
    Problem::new(
        ProblemType::Unauthorized,
        format!("this deployment requires {how} in the Authorization header; the credentials given are missing or do not verify"),
    )
    .with_challenge(mode.challenge())
}

// HMAC accepts keys of any length (RFC 2104 hashes longer ones): new_from_slice cannot fail.
#[allow(clippy::expect_used)]
fn hmac(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    s.as_bytes()
        .chunks(2)
        .map(|pair| {
            let digit = |c: u8| (c as char).to_digit(16);
            Some((digit(pair[0])? * 16 + digit(pair[1])?) as u8)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
    const NOW_MS: u64 = 1_700_000_000_000;

    fn secret() -> MasterSecret {
        MasterSecret::new(SECRET).unwrap()
    }

    fn parts(body: &[u8]) -> SignedParts<'_> {
        SignedParts {
            method: "POST",
            path: "/v1/readings",
            query: "",
            body,
        }
    }

    #[test]
    fn device_key_is_rfc4231_hmac_sha256() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(secret().device_key("dev-1").len(), 64);
        assert_ne!(secret().device_key("dev-1"), secret().device_key("dev-2"));
        assert!(MasterSecret::new("short").is_err());
        assert_eq!(format!("{:?}", secret()), "MasterSecret(..)");
    }

    #[test]
    fn token_binds_to_its_device() {
        let auth = DeviceAuth::Token(secret());
        let token = secret().device_key("dev-1");
        let header = format!("Bearer {token}");
        let cred = auth
            .verify_request(&parts(b""), Some(&header), NOW_MS)
            .unwrap();
        assert!(auth
            .authorize_devices(&cred, ["dev-1", "dev-1"].into_iter())
            .is_ok());
        assert_eq!(
            auth.authorize_devices(&cred, ["dev-2"].into_iter())
                .unwrap_err()
                .status(),
            401
        );
        assert_eq!(
            auth.authorize_devices(&cred, ["dev-1", "dev-2"].into_iter())
                .unwrap_err()
                .status(),
            403
        );
        for bad in [
            None,
            Some("Bearer"),
            Some("Bearer xyz"),
            Some("Basic abc"),
            Some(&header[..70]),
        ] {
            let p = auth.verify_request(&parts(b""), bad, NOW_MS).unwrap_err();
            assert_eq!(p.status(), 401);
            assert!(!p.detail().contains(&token[..8]));
        }
    }

    #[test]
    fn signature_covers_every_part_and_the_clock() {
        let auth = DeviceAuth::Hmac(secret());
        let key = secret().device_key("dev-1");
        let body = br#"{"device_id":"dev-1","temp":20}"#;
        let ts = NOW_MS / 1000;
        let header = sign(&key, "dev-1", &parts(body), ts);
        let cred = auth
            .verify_request(&parts(body), Some(&header), NOW_MS)
            .unwrap();
        assert_eq!(cred, Credential::Device(DeviceId::parse("dev-1").unwrap()));
        assert_eq!(
            auth.authorize_devices(&cred, ["dev-2"].into_iter())
                .unwrap_err()
                .status(),
            403
        );
        // Another body, path, method or query: refused.
        let tampered = [
            SignedParts {
                body: b"{}",
                ..parts(body)
            },
            SignedParts {
                path: "/v1/readingz",
                ..parts(body)
            },
            SignedParts {
                method: "GET",
                ..parts(body)
            },
            SignedParts {
                query: "x=1",
                ..parts(body)
            },
        ];
        for t in &tampered {
            assert_eq!(
                auth.verify_request(t, Some(&header), NOW_MS)
                    .unwrap_err()
                    .status(),
                401
            );
        }
        // Another device's key, a stale or future timestamp, a malformed header: refused.
        let other = sign(&secret().device_key("dev-2"), "dev-1", &parts(body), ts);
        let stale = sign(&key, "dev-1", &parts(body), ts - REPLAY_WINDOW_S - 1);
        let future = sign(&key, "dev-1", &parts(body), ts + REPLAY_WINDOW_S + 1);
        let edge_of_window = sign(&key, "dev-1", &parts(body), ts - REPLAY_WINDOW_S);
        for bad in [&other, &stale, &future] {
            assert_eq!(
                auth.verify_request(&parts(body), Some(bad), NOW_MS)
                    .unwrap_err()
                    .status(),
                401
            );
        }
        assert!(auth
            .verify_request(&parts(body), Some(&edge_of_window), NOW_MS)
            .is_ok());
        let repeated = format!("{header},timestamp={ts}");
        for bad in [
            &repeated,
            &header.replace("device_id=dev-1", "device_id=a b"),
            &header[1..],
        ] {
            assert_eq!(
                auth.verify_request(&parts(body), Some(bad), NOW_MS)
                    .unwrap_err()
                    .status(),
                401
            );
        }
    }

    #[test]
    fn off_lets_anyone_in() {
        let cred = DeviceAuth::Off
            .verify_request(&parts(b""), None, NOW_MS)
            .unwrap();
        assert!(DeviceAuth::Off
            .authorize_devices(&cred, ["a", "b"].into_iter())
            .is_ok());
    }
}
