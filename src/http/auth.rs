//! Device authentication. In `token` and `hmac` mode every device's key is derived from the
//! master secret (`AUTH_SECRET`, and `AUTH_SECRET_PREVIOUS` during a rotation) and the key
//! version of the device's registry record (0 without one), see [`MasterSecret::device_key_v`];
//! in `jwt` mode the device signs an ES256 token with a key its record lists (`http::jwt`).
//!
//! - `token` mode: the device sends its key as `Authorization: Bearer <key>`. The token is
//!   compared before any body is parsed: against the `device_id` query parameter a POST names
//!   (or a GET's reading carries), else against the first `device_id` of the body found by a
//!   linear pre-scan ([`crate::http::body::first_device_id`]) for clients that do not name it.
//! - `hmac` mode: the device signs each request with its key (see [`canonical_request`]) and
//!   sends `Authorization: EE-HMAC-SHA256 v=2,device_id=<id>,timestamp=<unix s>,signature=<hex>`;
//!   a timestamp more than [`REPLAY_WINDOW_S`] from the edge's clock is refused. Version 2 signs
//!   the host and the content type too, so a request signed for one deployment does not replay
//!   against another that shares the secret; version 1 (no `v=`) is accepted only until
//!   `HMAC_V1_UNTIL`.
//!
//! - `jwt` mode: `Authorization: Bearer <ES256 JWT>` whose `sub` is the device.
//!
//! The pipeline reads the registry record of the device the credentials name (when there is a
//! registry) before it verifies them, since the key depends on it.
//!
//! Either way a request may only carry readings of the device its credentials name. Failures
//! never say which part of a credential was wrong, and comparisons run in constant time.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::application::registry::Registration;
use crate::domain::reading::DeviceId;
use crate::http::jwt::{self, DeviceJwt, JwtError};
use crate::http::problem::{Problem, ProblemType};
use crate::ports::Es256Check;

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
    Jwt,
}

impl AuthMode {
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "off" => Some(Self::Off),
            "token" => Some(Self::Token),
            "hmac" => Some(Self::Hmac),
            "jwt" => Some(Self::Jwt),
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
            Self::Jwt => "jwt",
        }
    }
}

/// The master secret. Its `Debug` shows nothing, so it cannot leak through a log of the config.
#[derive(Clone, PartialEq)]
pub struct MasterSecret(Vec<u8>);

impl MasterSecret {
    pub fn new(secret: &str) -> Result<Self, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!("must be at least {MIN_SECRET_LEN} bytes"));
        }
        Ok(Self(secret.as_bytes().to_vec()))
    }

    /// A device's key at key version 0 (a device without a registry record, or whose record
    /// says 0): the first release's derivation, `hex(HMAC(secret, id))`.
    pub fn device_key(&self, device_id: &str) -> String {
        self.device_key_v(device_id, 0)
    }

    /// A device's key (and `token`-mode bearer token), 64 lowercase hex digits. Version 0 is
    /// the first release's derivation; from version 1 the message is domain-separated and
    /// names the version, `HMAC(secret, "edge-enrich/device-key/v1|" + id + "|" + version)`, so
    /// raising one record's `key_version` re-keys that device alone.
    pub fn device_key_v(&self, device_id: &str, key_version: u32) -> String {
        if key_version == 0 {
            return hex(&hmac(&self.0, device_id.as_bytes()));
        }
        let message = format!("{KEY_DERIVATION_LABEL}|{device_id}|{key_version}");
        hex(&hmac(&self.0, message.as_bytes()))
    }
}

/// The domain-separation label of versioned device keys.
pub const KEY_DERIVATION_LABEL: &str = "edge-enrich/device-key/v1";

/// The master secret, and during a rotation the one it replaces: keys derived from either are
/// accepted, so devices can be re-provisioned while the fleet keeps sending.
#[derive(Debug, Clone, PartialEq)]
pub struct Secrets {
    pub current: MasterSecret,
    pub previous: Option<MasterSecret>,
}

impl Secrets {
    pub fn new(current: MasterSecret) -> Self {
        Self {
            current,
            previous: None,
        }
    }

    fn each(&self) -> impl Iterator<Item = &MasterSecret> {
        std::iter::once(&self.current).chain(self.previous.as_ref())
    }

    /// Whether `token` is the device's key (at `version`) under either secret. Both are
    /// compared, in constant time each, whichever matches.
    fn admit_token(&self, token: &BearerToken, device: &DeviceId, version: u32) -> bool {
        self.each().fold(false, |ok, secret| {
            let expected = secret.device_key_v(device.as_str(), version);
            ok | bool::from(expected.as_bytes().ct_eq(token.0.as_bytes()))
        })
    }
}

impl std::fmt::Debug for MasterSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterSecret(..)")
    }
}

/// The admin API's bearer token, kept only as its SHA-256 digest: a presented token is hashed
/// and the digests compared in constant time, so neither timing nor an early exit tells how
/// long the token is or how much of it matched.
#[derive(Clone, PartialEq)]
pub struct AdminToken([u8; 32]);

/// Shortest `ADMIN_TOKEN` accepted: as for `AUTH_SECRET`.
pub const MIN_ADMIN_TOKEN_LEN: usize = 32;

impl AdminToken {
    pub fn new(token: &str) -> Result<Self, String> {
        if token.len() < MIN_ADMIN_TOKEN_LEN {
            return Err(format!("must be at least {MIN_ADMIN_TOKEN_LEN} bytes"));
        }
        Ok(Self(Sha256::digest(token.as_bytes()).into()))
    }

    /// Whether `Authorization: Bearer <token>` carries this token.
    pub fn admits(&self, authorization: Option<&str>) -> bool {
        let given = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(given.as_bytes()).into();
        bool::from(digest.ct_eq(&self.0))
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

/// How this deployment authenticates devices; `Off` only by explicit choice (`AUTH_MODE=off`).
#[derive(Debug, Clone, PartialEq)]
pub enum DeviceAuth {
    Off,
    Token(Secrets),
    Hmac {
        secrets: Secrets,
        /// Unix seconds until which version-1 signatures (no host, no content type) are still
        /// accepted; `None`: refused.
        v1_until_s: Option<u64>,
        /// The host every version-2 signature must name (`HMAC_HOST`, lower case); `None`: the
        /// host the request was sent to.
        host: Option<String>,
    },
    /// ES256 device JWTs whose `aud` must be `audience` (`JWT_AUDIENCE`).
    Jwt {
        audience: String,
    },
}

impl DeviceAuth {
    pub fn mode(&self) -> AuthMode {
        match self {
            Self::Off => AuthMode::Off,
            Self::Token(_) => AuthMode::Token,
            Self::Hmac { .. } => AuthMode::Hmac,
            Self::Jwt { .. } => AuthMode::Jwt,
        }
    }

    /// The checks that need neither the body nor the registry, made first: the header is there
    /// and well formed; in `hmac` mode the timestamp is within the window and the signature's
    /// version is accepted; in `jwt` mode the algorithm and claims hold. `named` is the device
    /// the request names before its body (`?device_id=`), which a token is checked against.
    pub fn presented<'a>(
        &self,
        authorization: Option<&'a str>,
        named: Option<&DeviceId>,
        now_ms: u64,
    ) -> Result<Presented<'a>, Problem> {
        match self {
            Self::Off => Ok(Presented::Anyone),
            Self::Token(_) => {
                let token = authorization
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .filter(|t| t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()))
                    .ok_or_else(|| unauthenticated(AuthMode::Token))?;
                Ok(Presented::Token {
                    token: BearerToken(token.to_ascii_lowercase()),
                    device: named.cloned(),
                })
            }
            Self::Hmac { v1_until_s, .. } => {
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
                if sig.version == SignatureVersion::V1 && !v1_until_s.is_some_and(|t| now_s < t) {
                    return Err(Problem::new(
                        ProblemType::Unauthorized,
                        "version-1 signatures (without v=2) are no longer accepted by this deployment; sign version 2, which covers the host and the content type",
                    )
                    .with_challenge(AuthMode::Hmac.challenge()));
                }
                Ok(Presented::Signature(sig))
            }
            Self::Jwt { audience } => {
                let token = authorization
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .ok_or_else(|| unauthenticated(AuthMode::Jwt))?;
                jwt::parse(token, audience, now_ms / 1000)
                    .map(Presented::Jwt)
                    .map_err(jwt_refused)
            }
        }
    }

    /// What can be verified before the body, once the registry record of the device the
    /// credentials name is known: a token for a named device. (A JWT's signature is the host's
    /// to check: see [`jwt_check`](Self::jwt_check).) Anything else is returned as it was,
    /// for [`verify`](Self::verify).
    pub fn before_body<'a>(
        &self,
        presented: Presented<'a>,
        registration: &Registration,
    ) -> Result<Presented<'a>, Problem> {
        match presented {
            Presented::Token {
                device: Some(_), ..
            } => {
                let empty = SignedParts::empty();
                self.verify(presented, &empty, registration)
                    .map(Presented::Verified)
            }
            other => Ok(other),
        }
    }

    /// Every check of the credentials, the body's included (in `hmac` mode the signature over
    /// the whole request). `registration` holds the registry record of the device they name,
    /// if any: its key version and keys. Returns who the credentials speak for.
    pub fn verify(
        &self,
        presented: Presented<'_>,
        req: &SignedParts<'_>,
        registration: &Registration,
    ) -> Result<Credential, Problem> {
        let version =
            |device: &DeviceId| registration.record_for(device).map_or(0, |r| r.key_version);
        match (self, presented) {
            (_, Presented::Anyone) => Ok(Credential(Established::Anyone)),
            (_, Presented::Verified(credential)) => Ok(credential),
            (Self::Token(secrets), Presented::Token { token, device }) => {
                // The request named no device before its body: the first one the body names.
                let device = device
                    .as_ref()
                    .or(req.device_hint)
                    .ok_or_else(|| unauthenticated(AuthMode::Token))?;
                if secrets.admit_token(&token, device, version(device)) {
                    Ok(Credential(Established::Device(device.clone())))
                } else {
                    Err(unauthenticated(AuthMode::Token))
                }
            }
            (Self::Hmac { secrets, host, .. }, Presented::Signature(sig)) => {
                let signed = SignedParts {
                    host: host.as_deref().unwrap_or(req.host),
                    ..*req
                };
                let canonical = canonical_request(&signed, sig.version, sig.timestamp);
                let given = unhex(sig.signature).unwrap_or_default();
                let ok = secrets.each().fold(false, |ok, secret| {
                    let key = secret.device_key_v(sig.device_id.as_str(), version(&sig.device_id));
                    let expected = hmac(key.as_bytes(), canonical.as_bytes());
                    ok | bool::from(expected.as_slice().ct_eq(&given))
                });
                if ok {
                    Ok(Credential(Established::Device(sig.device_id)))
                } else {
                    Err(unauthenticated(AuthMode::Hmac))
                }
            }
            // A JWT becomes `Verified` once the host has checked its signature, before the body
            // (`jwt_check`, `jwt_checked`); one that did not is refused.
            (Self::Jwt { .. }, Presented::Jwt(_)) => Err(jwt_refused(JwtError::Signature)),
            (_, _) => Err(unauthenticated(self.mode())),
        }
    }

    /// All checks at once, for a request whose body is in hand and whose device has no record.
    pub fn verify_request(
        &self,
        req: &SignedParts<'_>,
        authorization: Option<&str>,
        now_ms: u64,
    ) -> Result<Credential, Problem> {
        let presented = self.presented(authorization, None, now_ms)?;
        self.verify(presented, req, &Registration::Off)
    }
}

impl DeviceAuth {
    /// The signature check a JWT needs, with the key its `kid` names in the record of its
    /// `sub` (`registration`); `None` for other credentials. When the record lists no such
    /// current key (or there is no record) the check is a decoy: the same verification against
    /// a key nobody holds, always refused, so that an unknown device or kid costs and answers
    /// the same as a known one with a bad signature.
    pub fn jwt_check<'p>(
        presented: &'p Presented<'_>,
        registration: &Registration,
        now_ms: u64,
    ) -> Option<SignatureCheck<'p>> {
        let Presented::Jwt(token) = presented else {
            return None;
        };
        let record = registration.record_for(token.device());
        let expires_s = token.expires_s();
        Some(match token.check(record, now_ms / 1000) {
            Ok(check) => SignatureCheck {
                check,
                expires_s,
                decoy: false,
            },
            Err(_) => SignatureCheck {
                check: token.check_with(DECOY_KEY),
                expires_s,
                decoy: true,
            },
        })
    }

    /// A JWT after the host's signature check: `Verified` for its device, or 401.
    pub fn jwt_checked<'a>(
        presented: Presented<'a>,
        valid: bool,
    ) -> Result<Presented<'a>, Problem> {
        match presented {
            Presented::Jwt(token) if valid => Ok(Presented::Verified(Credential(
                Established::Device(token.device().clone()),
            ))),
            Presented::Jwt(_) => Err(jwt_refused(JwtError::Signature)),
            other => Ok(other),
        }
    }
}

/// What the host verifies for a JWT (see [`DeviceAuth::jwt_check`]).
#[derive(Debug)]
pub struct SignatureCheck<'p> {
    pub check: Es256Check<'p>,
    /// The token's `exp`: how long a verified check may be remembered.
    pub expires_s: u64,
    decoy: bool,
}

impl SignatureCheck<'_> {
    /// Whether the token holds, given the host's verification: never for a decoy.
    pub fn holds(&self, verified: bool) -> bool {
        verified && !self.decoy
    }

    /// Whether a verified result may be remembered (never a decoy's).
    pub fn is_decoy(&self) -> bool {
        self.decoy
    }
}

/// A P-256 public key whose private key was never kept: what a decoy check verifies against.
const DECOY_KEY: [u8; 65] = [
    0x04, 0xd0, 0x37, 0xe6, 0x2a, 0x22, 0x85, 0x5b, 0x88, 0x26, 0x66, 0x34, 0x04, 0xcf, 0x9e, 0x3a,
    0x7b, 0xcf, 0x1a, 0x83, 0xfb, 0xea, 0xab, 0xff, 0x8b, 0xad, 0x3d, 0x74, 0xc6, 0xe8, 0xca, 0x7f,
    0xb9, 0x12, 0xad, 0x53, 0x17, 0xb8, 0x63, 0xe0, 0x3f, 0xd9, 0x9a, 0xf6, 0xce, 0xe5, 0xe7, 0x32,
    0x4a, 0xb1, 0xf7, 0xf8, 0x0d, 0x22, 0x83, 0xd6, 0xd7, 0x27, 0x2b, 0x5e, 0xa8, 0x1d, 0x06, 0x45,
    0x02,
];

fn jwt_refused(e: JwtError) -> Problem {
    Problem::new(ProblemType::Unauthorized, e.detail()).with_challenge(AuthMode::Jwt.challenge())
}

impl Credential {
    /// The device the credentials were verified for; `None` with authentication off.
    pub fn device(&self) -> Option<&DeviceId> {
        match &self.0 {
            Established::Anyone => None,
            Established::Device(d) => Some(d),
        }
    }

    /// The check that needs the readings: every one must belong to the authenticated device.
    pub fn authorize_devices<'d>(
        &self,
        mut devices: impl Iterator<Item = &'d str>,
    ) -> Result<(), Problem> {
        let Some(device) = self.device() else {
            return Ok(());
        };
        match devices.find(|d| *d != device.as_str()) {
            None => Ok(()),
            Some(_) => Err(Problem::new(
                ProblemType::Forbidden,
                "these credentials may only send readings of their own device_id; nothing was accepted",
            )),
        }
    }
}

/// A well-formed bearer token, not yet tied to a device. Its `Debug` shows nothing.
pub struct BearerToken(String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(..)")
    }
}

/// Credentials as presented, checked for shape (and time) before the body is read.
#[derive(Debug)]
pub enum Presented<'a> {
    /// Authentication is off.
    Anyone,
    /// Checked already, before the body (`DeviceAuth::before_body`).
    Verified(Credential),
    /// A well-formed token, for the device the request named before its body; or, naming none,
    /// for the body's first `device_id` (`SignedParts::device_hint`), checked before the body
    /// is parsed.
    Token {
        token: BearerToken,
        device: Option<DeviceId>,
    },
    /// A well-formed signature within the time window, to check over the body.
    Signature(SignatureHeader<'a>),
    /// A JWT whose claims hold, its signature not yet checked.
    Jwt(DeviceJwt),
}

impl Presented<'_> {
    /// The device these credentials claim to be, when known before the body.
    pub fn device(&self) -> Option<&DeviceId> {
        match self {
            Self::Anyone => None,
            Self::Verified(credential) => credential.device(),
            Self::Token { device, .. } => device.as_ref(),
            Self::Signature(sig) => Some(&sig.device_id),
            Self::Jwt(token) => Some(token.device()),
        }
    }
}

/// What the request's credentials established. Only this module makes one, after verifying
/// the credentials for its device (or with authentication off), so code holding one needs no
/// check.
#[derive(Debug, Clone, PartialEq)]
pub struct Credential(Established);

#[derive(Debug, Clone, PartialEq)]
enum Established {
    /// Authentication is off.
    Anyone,
    /// A token, signature or JWT verified for this device.
    Device(DeviceId),
}

/// The parts of a request its credentials are checked over.
#[derive(Clone, Copy)]
pub struct SignedParts<'a> {
    pub method: &'a str,
    /// The `Host` the client addressed (the header, else the target's authority).
    pub host: &'a str,
    pub path: &'a str,
    /// Exactly as sent, without the leading `?`.
    pub query: &'a str,
    /// The `Content-Type` header as sent; empty without one.
    pub content_type: &'a str,
    pub body: &'a [u8],
    /// `token` mode, for a request that named no device before its body: the first
    /// `device_id` the body names (found without parsing it).
    pub device_hint: Option<&'a DeviceId>,
}

impl SignedParts<'_> {
    /// No request parts: for checks that need none (a token, a JWT).
    pub fn empty() -> Self {
        SignedParts {
            method: "",
            host: "",
            path: "",
            query: "",
            content_type: "",
            body: &[],
            device_hint: None,
        }
    }
}

/// Which string a signature covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureVersion {
    /// scheme, method, path, query, timestamp, body digest (no `v=` in the header).
    V1,
    /// `v=2`: scheme and version, method, host, path, query, content type, timestamp, body digest.
    V2,
}

/// The string a device signs in `hmac` mode, lines joined by `\n`. Version 2:
/// `EE-HMAC-SHA256/2`, method, host (lower case), path, query, content type, timestamp, hex
/// SHA-256 of the body. Version 1: `EE-HMAC-SHA256`, method, path, query, timestamp, digest.
pub fn canonical_request(
    req: &SignedParts<'_>,
    version: SignatureVersion,
    timestamp: u64,
) -> String {
    let digest = hex(&Sha256::digest(req.body));
    match version {
        SignatureVersion::V1 => format!(
            "{HMAC_SCHEME}\n{}\n{}\n{}\n{timestamp}\n{digest}",
            req.method, req.path, req.query
        ),
        SignatureVersion::V2 => format!(
            "{HMAC_SCHEME}/2\n{}\n{}\n{}\n{}\n{}\n{timestamp}\n{digest}",
            req.method,
            req.host.to_ascii_lowercase(),
            req.path,
            req.query,
            req.content_type
        ),
    }
}

/// The `Authorization` value a device sends in `hmac` mode, version 2 (for clients, tests and
/// the simulator).
pub fn sign(device_key: &str, device_id: &str, req: &SignedParts<'_>, timestamp: u64) -> String {
    sign_version(device_key, device_id, req, SignatureVersion::V2, timestamp)
}

/// `sign` for a chosen version (version 1: devices not yet updated, and their tests).
pub fn sign_version(
    device_key: &str,
    device_id: &str,
    req: &SignedParts<'_>,
    version: SignatureVersion,
    timestamp: u64,
) -> String {
    let signature = hex(&hmac(
        device_key.as_bytes(),
        canonical_request(req, version, timestamp).as_bytes(),
    ));
    let v = match version {
        SignatureVersion::V1 => "",
        SignatureVersion::V2 => "v=2,",
    };
    format!("{HMAC_SCHEME} {v}device_id={device_id},timestamp={timestamp},signature={signature}")
}

#[derive(Debug)]
pub struct SignatureHeader<'a> {
    version: SignatureVersion,
    device_id: DeviceId,
    timestamp: u64,
    signature: &'a str,
}

impl<'a> SignatureHeader<'a> {
    fn parse(header: &'a str) -> Option<Self> {
        let params = header.strip_prefix(HMAC_SCHEME)?.strip_prefix(' ')?;
        let (mut version, mut device_id, mut timestamp, mut signature) = (None, None, None, None);
        for part in params.split(',') {
            let (name, value) = part.trim().split_once('=')?;
            let slot = match name {
                "v" => &mut version,
                "device_id" => &mut device_id,
                "timestamp" => &mut timestamp,
                "signature" => &mut signature,
                _ => return None,
            };
            if slot.replace(value).is_some() {
                return None; // a repeated parameter is ambiguous
            }
        }
        let version = match version {
            None => SignatureVersion::V1,
            Some("2") => SignatureVersion::V2,
            Some(_) => return None,
        };
        let timestamp = timestamp?;
        if timestamp.is_empty()
            || timestamp.len() > 12
            || !timestamp.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        let signature = signature.filter(|s| s.len() == 64)?;
        Some(Self {
            version,
            device_id: DeviceId::parse(device_id?).ok()?,
            timestamp: timestamp.parse().ok()?,
            signature,
        })
    }
}

fn unauthenticated(mode: AuthMode) -> Problem {
    let how = match mode {
        AuthMode::Hmac => "a valid EE-HMAC-SHA256 signature",
        AuthMode::Jwt => "a valid ES256 device JWT (Bearer)",
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

    /// The decoy key is a point on the curve, so a decoy check runs the whole verification (an
    /// invalid key would be refused at once, and the time would tell).
    #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
    #[test]
    fn the_decoy_key_is_a_valid_point_and_a_decoy_never_holds() {
        assert!(p256::ecdsa::VerifyingKey::from_sec1_bytes(&DECOY_KEY).is_ok());
        let check = SignatureCheck {
            check: Es256Check {
                public_key: DECOY_KEY,
                message: b"",
                signature: [0; 64],
            },
            expires_s: 0,
            decoy: true,
        };
        assert!(!check.holds(true) && check.is_decoy());
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";
    const NOW_MS: u64 = 1_700_000_000_000;

    fn secret() -> MasterSecret {
        MasterSecret::new(SECRET).unwrap()
    }

    fn hmac_auth(v1_until_s: Option<u64>) -> DeviceAuth {
        DeviceAuth::Hmac {
            secrets: Secrets::new(secret()),
            v1_until_s,
            host: None,
        }
    }

    fn device(id: &str) -> DeviceId {
        DeviceId::parse(id).unwrap()
    }

    fn parts(body: &[u8]) -> SignedParts<'_> {
        SignedParts {
            method: "POST",
            host: "edge.example.com",
            path: "/v1/readings",
            query: "",
            content_type: "application/json",
            body,
            device_hint: None,
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
        // The rule, never the length of what was given.
        assert_eq!(
            MasterSecret::new("short").unwrap_err(),
            "must be at least 32 bytes"
        );
        assert_eq!(format!("{:?}", secret()), "MasterSecret(..)");
    }

    #[test]
    fn token_is_checked_against_the_named_device_before_the_body() {
        let auth = DeviceAuth::Token(Secrets::new(secret()));
        let header = format!("Bearer {}", secret().device_key("dev-1"));
        let off = Registration::Off;
        // Named before the body: checked before it (`before_body`), for that device.
        let p = auth
            .presented(Some(&header), Some(&device("dev-1")), NOW_MS)
            .unwrap();
        assert_eq!(p.device(), Some(&device("dev-1")));
        let p = auth.before_body(p, &off).unwrap();
        assert!(matches!(p, Presented::Verified(_)));
        let cred = auth.verify(p, &parts(b"not even json"), &off).unwrap();
        assert_eq!(cred.device(), Some(&device("dev-1")));
        let p = auth
            .presented(Some(&header), Some(&device("dev-2")), NOW_MS)
            .unwrap();
        assert_eq!(auth.before_body(p, &off).unwrap_err().status(), 401);
        // Not named: checked against the body's first device (the hint), else refused.
        let p = auth.presented(Some(&header), None, NOW_MS).unwrap();
        assert!(matches!(p, Presented::Token { device: None, .. }));
        let p = auth.before_body(p, &off).unwrap();
        assert_eq!(
            auth.verify(p, &parts(b""), &off).unwrap_err().status(),
            401,
            "no device to check the token against"
        );
        let hint = device("dev-1");
        let p = auth.presented(Some(&header), None, NOW_MS).unwrap();
        let cred = auth
            .verify(
                p,
                &SignedParts {
                    device_hint: Some(&hint),
                    ..parts(b"")
                },
                &off,
            )
            .unwrap();
        assert!(cred
            .authorize_devices(["dev-1", "dev-1"].into_iter())
            .is_ok());
        assert_eq!(
            cred.authorize_devices(["dev-1", "dev-2"].into_iter())
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
            let p = auth
                .presented(bad, Some(&device("dev-1")), NOW_MS)
                .and_then(|p| auth.before_body(p, &off))
                .unwrap_err();
            assert_eq!(p.status(), 401);
            assert!(!p.detail().contains(&header[7..15]));
        }
        assert_eq!(
            format!("{:?}", BearerToken("abc".into())),
            "BearerToken(..)"
        );
    }

    #[test]
    fn signature_v2_covers_every_part_and_the_clock() {
        let auth = hmac_auth(None);
        let key = secret().device_key("dev-1");
        let body = br#"{"device_id":"dev-1","temp":20}"#;
        let ts = NOW_MS / 1000;
        let header = sign(&key, "dev-1", &parts(body), ts);
        assert!(header.starts_with("EE-HMAC-SHA256 v=2,device_id=dev-1,"));
        let cred = auth
            .verify_request(&parts(body), Some(&header), NOW_MS)
            .unwrap();
        assert_eq!(cred.device(), Some(&device("dev-1")));
        assert_eq!(
            cred.authorize_devices(["dev-2"].into_iter())
                .unwrap_err()
                .status(),
            403
        );
        // The host's case does not matter (hosts are case-insensitive).
        assert!(auth
            .verify_request(
                &SignedParts {
                    host: "EDGE.example.com",
                    ..parts(body)
                },
                Some(&header),
                NOW_MS
            )
            .is_ok());
        // Another body, host, path, method, query or content type: refused.
        let tampered = [
            SignedParts {
                body: b"{}",
                ..parts(body)
            },
            SignedParts {
                host: "staging.example.com",
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
            SignedParts {
                content_type: "application/x-ndjson",
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
            &header.replace("v=2", "v=3"),
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
    fn a_configured_host_is_what_signatures_must_name() {
        let auth = DeviceAuth::Hmac {
            secrets: Secrets::new(secret()),
            v1_until_s: None,
            host: Some("edge.example.com".into()),
        };
        let key = secret().device_key("dev-1");
        let body = br#"{"device_id":"dev-1","temp":20}"#;
        let ts = NOW_MS / 1000;
        // Whatever Host the request carries (none, on hosts that do not pass it on).
        for seen in ["", "10.0.0.7:8080", "staging.example.com"] {
            let sent = SignedParts {
                host: seen,
                ..parts(body)
            };
            let for_edge = sign(&key, "dev-1", &parts(body), ts);
            assert!(auth.verify_request(&sent, Some(&for_edge), NOW_MS).is_ok());
            let for_seen = sign(&key, "dev-1", &sent, ts);
            if seen != "edge.example.com" {
                assert_eq!(
                    auth.verify_request(&sent, Some(&for_seen), NOW_MS)
                        .unwrap_err()
                        .status(),
                    401,
                    "signed for {seen:?}"
                );
            }
        }
    }

    #[test]
    fn signature_v1_only_within_its_window() {
        let key = secret().device_key("dev-1");
        let body = br#"{"device_id":"dev-1","temp":20}"#;
        let ts = NOW_MS / 1000;
        let v1 = sign_version(&key, "dev-1", &parts(body), SignatureVersion::V1, ts);
        assert!(v1.starts_with("EE-HMAC-SHA256 device_id=dev-1,"));
        // v1 does not cover the host: valid for any host while accepted.
        let elsewhere = SignedParts {
            host: "staging.example.com",
            ..parts(body)
        };
        assert!(hmac_auth(Some(ts + 1))
            .verify_request(&elsewhere, Some(&v1), NOW_MS)
            .is_ok());
        for closed in [None, Some(ts), Some(ts - 1)] {
            let p = hmac_auth(closed)
                .verify_request(&parts(body), Some(&v1), NOW_MS)
                .unwrap_err();
            assert_eq!(p.status(), 401);
            assert!(p.detail().contains("version-1"), "{}", p.detail());
        }
    }

    #[test]
    fn admin_token_compares_digests() {
        assert_eq!(
            AdminToken::new("short").unwrap_err(),
            "must be at least 32 bytes"
        );
        let token = "t".repeat(40);
        let admin = AdminToken::new(&token).unwrap();
        assert!(admin.admits(Some(&format!("Bearer {token}"))));
        for bad in [
            None,
            Some(token.as_str()),
            Some("Bearer "),
            Some(&format!("Bearer {}", &token[..39])),
            Some(&format!("Bearer {token}x")),
        ] {
            assert!(!admin.admits(bad), "{bad:?}");
        }
        assert_eq!(format!("{admin:?}"), "AdminToken(..)");
    }

    #[test]
    fn off_lets_anyone_in() {
        let cred = DeviceAuth::Off
            .verify_request(&parts(b""), None, NOW_MS)
            .unwrap();
        assert!(cred.authorize_devices(["a", "b"].into_iter()).is_ok());
    }

    fn registered(id: &str, key_version: u32) -> Registration {
        let record = DeviceRecordForTest::with_version(key_version);
        Registration::Known(device(id), std::rc::Rc::new(record))
    }

    struct DeviceRecordForTest;
    impl DeviceRecordForTest {
        fn with_version(v: u32) -> crate::domain::device::DeviceRecord {
            crate::domain::device::DeviceRecord::parse(&format!(
                r#"{{"status":"active","key_version":{v}}}"#
            ))
            .unwrap()
        }
    }

    /// Version 0 is the first release's derivation; from 1 each version is a different key,
    /// domain-separated from it, and the record's version is the one accepted.
    #[test]
    fn the_records_key_version_selects_the_key() {
        let s = secret();
        assert_eq!(s.device_key_v("dev-1", 0), s.device_key("dev-1"));
        let v1 = s.device_key_v("dev-1", 1);
        let v2 = s.device_key_v("dev-1", 2);
        assert!(v1 != v2 && v1 != s.device_key("dev-1"));
        let expected = hex(&hmac(
            SECRET.as_bytes(),
            b"edge-enrich/device-key/v1|dev-1|1",
        ));
        assert_eq!(v1, expected);
        let auth = DeviceAuth::Token(Secrets::new(secret()));
        let check = |key: &str, registration: &Registration| {
            let header = format!("Bearer {key}");
            auth.presented(Some(&header), Some(&device("dev-1")), NOW_MS)
                .and_then(|p| auth.before_body(p, registration))
                .is_ok()
        };
        assert!(check(&v1, &registered("dev-1", 1)));
        assert!(
            !check(&v1, &registered("dev-1", 2)),
            "a key leaked at v1 stops at v2"
        );
        assert!(check(&v2, &registered("dev-1", 2)));
        assert!(!check(&v1, &Registration::Off), "no record: version 0");
        assert!(check(
            &s.device_key("dev-1"),
            &Registration::Unknown(device("dev-1"))
        ));
        // A record of another device lends nothing.
        assert!(!check(&v1, &registered("dev-2", 1)));
        // hmac mode signs with the versioned key too.
        let hmac_auth = DeviceAuth::Hmac {
            secrets: Secrets::new(secret()),
            v1_until_s: None,
            host: None,
        };
        let header = sign(&v2, "dev-1", &parts(b"{}"), NOW_MS / 1000);
        let verify = |registration: &Registration| {
            let p = hmac_auth.presented(Some(&header), None, NOW_MS).unwrap();
            hmac_auth.verify(p, &parts(b"{}"), registration).is_ok()
        };
        assert!(verify(&registered("dev-1", 2)));
        assert!(!verify(&registered("dev-1", 1)));
    }

    /// During a rotation keys of both secrets are accepted; after it, only the new one's.
    #[test]
    fn the_previous_secret_is_accepted_beside_the_current_one() {
        let old = MasterSecret::new("old-secret-old-secret-old-secret-0").unwrap();
        let new = MasterSecret::new("new-secret-new-secret-new-secret-1").unwrap();
        let during = DeviceAuth::Token(Secrets {
            current: new.clone(),
            previous: Some(old.clone()),
        });
        let after = DeviceAuth::Token(Secrets::new(new.clone()));
        let admits = |auth: &DeviceAuth, key: String| {
            let header = format!("Bearer {key}");
            auth.presented(Some(&header), Some(&device("d")), NOW_MS)
                .and_then(|p| auth.before_body(p, &Registration::Off))
                .is_ok()
        };
        assert!(admits(&during, old.device_key("d")));
        assert!(admits(&during, new.device_key("d")));
        assert!(!admits(&after, old.device_key("d")));
        assert!(admits(&after, new.device_key("d")));
        assert!(!admits(&during, secret().device_key("d")));
    }
}
