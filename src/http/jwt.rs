//! Device JWTs (`AUTH_MODE=jwt`): ES256 only, verified against the public keys of the device's
//! registry record, so the edge holds no secret that could mint a token.
//!
//! A token is judged in two steps, both before a byte of the body is read:
//! - [`parse`]: size, shape, the header's `alg` (exactly `ES256`: no `none`, no HMAC, so a
//!   public key can never be used as an HMAC secret) and the claims (`aud`, `iat`, `exp`,
//!   `nbf`, lifetime) against the clock. No store is read for a token that fails here.
//! - [`DeviceJwt::check`]: the signature, with the key `kid` names in the record of `sub`,
//!   which the host verifies with its crypto (Workers: WebCrypto; elsewhere [`verify_es256`]).
//!
//! High-S signatures are accepted: RFC 7518 does not require low S, common device libraries
//! (OpenSSL, mbedTLS) produce either half the time, and a second encoding of a signature lets
//! no one sign anything new.

use serde::Deserialize;

use crate::application::recent::{Fingerprints, Recent};
use crate::domain::device::{base64url, DeviceRecord};
use crate::domain::reading::DeviceId;
use crate::ports::Es256Check;

/// The longest token read; longer is refused before it is decoded.
pub const MAX_TOKEN_BYTES: usize = 2048;
/// The longest lifetime (`exp - iat`) accepted.
pub const MAX_LIFETIME_S: u64 = 24 * 3600;
/// How far the device's clock may be from the edge's.
pub const LEEWAY_S: u64 = 600;

/// Why a token was refused. Each is a 401; the detail names the claim (which tells a device
/// developer what to fix and an attacker nothing about keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    TooLong,
    Malformed,
    Algorithm,
    Audience,
    Expired,
    NotYetValid,
    Lifetime,
    /// `kid` is not a current key of the device (or the device has no record), or the
    /// signature does not verify: one answer, so a probe learns nothing about the record.
    Signature,
}

impl JwtError {
    pub fn detail(self) -> String {
        match self {
            Self::TooLong => format!("the token is longer than {MAX_TOKEN_BYTES} bytes"),
            Self::Malformed => {
                "the token is not a JWT (header.claims.signature, base64url JSON, with kid, sub, aud, iat, exp)".into()
            }
            Self::Algorithm => "the token's alg must be ES256".into(),
            Self::Audience => "the token's aud is not this deployment's (JWT_AUDIENCE)".into(),
            Self::Expired => "the token has expired".into(),
            Self::NotYetValid => "the token is not valid yet (iat or nbf is in the future)".into(),
            Self::Lifetime => format!(
                "the token's lifetime (exp - iat) must be at most {MAX_LIFETIME_S} s"
            ),
            Self::Signature => "the token's signature does not verify with a current key of its device".into(),
        }
    }
}

#[derive(Deserialize)]
struct Header<'a> {
    alg: &'a str,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// `aud`: one string or an array of them. Written by hand: serde's `untagged` buffers any
/// value through its generic `Content` tree, some kilobytes of the Worker for one claim.
struct Audience(Vec<String>);

impl<'de> Deserialize<'de> for Audience {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Audience;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E>(self, v: &str) -> Result<Audience, E> {
                Ok(Audience(vec![v.to_owned()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Audience, A::Error> {
                let mut all = Vec::new();
                while let Some(a) = seq.next_element::<String>()? {
                    if all.len() == MAX_AUDIENCES {
                        return Err(serde::de::Error::custom("too many audiences"));
                    }
                    all.push(a);
                }
                Ok(Audience(all))
            }
        }
        d.deserialize_any(Visit)
    }
}

/// Most entries of an `aud` array read.
const MAX_AUDIENCES: usize = 16;

#[derive(Deserialize)]
struct Claims {
    sub: String,
    aud: Audience,
    iat: u64,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
}

/// A token whose shape and claims passed, its signature not yet checked.
#[derive(Debug)]
pub struct DeviceJwt {
    device: DeviceId,
    kid: String,
    /// `header.claims`, the bytes the signature covers.
    signed: String,
    /// `r || s`.
    signature: [u8; 64],
    /// `exp`, Unix seconds.
    expires_s: u64,
}

/// Checks a token's shape, algorithm and claims (see the module comment).
pub fn parse(token: &str, audience: &str, now_s: u64) -> Result<DeviceJwt, JwtError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(JwtError::TooLong);
    }
    let mut parts = token.split('.');
    let (Some(h), Some(c), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let header_bytes = base64url(h).ok_or(JwtError::Malformed)?;
    // JSON is read from `str`s only, here as everywhere: each reader type serde_json is given
    // is a second copy of its parser in the Worker's upload (some 7 KB gzip).
    let header: Header<'_> = std::str::from_utf8(&header_bytes)
        .ok()
        .and_then(|json| serde_json::from_str(json).ok())
        .ok_or(JwtError::Malformed)?;
    if header.alg != "ES256" {
        return Err(JwtError::Algorithm);
    }
    // No extension this verifier understands may be marked critical (RFC 7515 §4.1.11).
    if header.crit.is_some() {
        return Err(JwtError::Malformed);
    }
    let kid = header.kid.ok_or(JwtError::Malformed)?;
    let claims: Claims = base64url(c)
        .and_then(|b| serde_json::from_str(std::str::from_utf8(&b).ok()?).ok())
        .ok_or(JwtError::Malformed)?;
    let device = DeviceId::parse(&claims.sub).map_err(|_| JwtError::Malformed)?;
    let for_us = claims.aud.0.iter().any(|a| a == audience);
    if !for_us {
        return Err(JwtError::Audience);
    }
    if claims.exp <= claims.iat || claims.exp - claims.iat > MAX_LIFETIME_S {
        return Err(JwtError::Lifetime);
    }
    if claims.exp.saturating_add(LEEWAY_S) < now_s {
        return Err(JwtError::Expired);
    }
    let not_before = claims.nbf.unwrap_or(0).max(claims.iat);
    if not_before > now_s.saturating_add(LEEWAY_S) {
        return Err(JwtError::NotYetValid);
    }
    let signature: [u8; 64] = base64url(s)
        .and_then(|b| b.try_into().ok())
        .ok_or(JwtError::Signature)?;
    Ok(DeviceJwt {
        device,
        kid,
        signed: token[..h.len() + 1 + c.len()].to_owned(),
        signature,
        expires_s: claims.exp,
    })
}

impl DeviceJwt {
    /// The device the token speaks for (`sub`), not yet proven.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// When the token expires (`exp`, Unix seconds).
    pub fn expires_s(&self) -> u64 {
        self.expires_s
    }

    /// What the host must verify: the signature with the current key `kid` names in the
    /// device's record (none there: refused without a check).
    pub fn check(
        &self,
        record: Option<&DeviceRecord>,
        now_s: u64,
    ) -> Result<Es256Check<'_>, JwtError> {
        let key = record
            .and_then(|r| r.key(&self.kid, now_s))
            .ok_or(JwtError::Signature)?;
        Ok(Es256Check {
            public_key: key.sec1(),
            message: self.signed.as_bytes(),
            signature: self.signature,
        })
    }

    /// The same check against `public_key` (SEC1 uncompressed): a decoy's (`http::auth`).
    pub fn check_with(&self, public_key: [u8; 65]) -> Es256Check<'_> {
        Es256Check {
            public_key,
            message: self.signed.as_bytes(),
            signature: self.signature,
        }
    }

    /// [`check`](Self::check) and [`verify_es256`] at once, for tests and tools.
    #[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
    pub fn verify(&self, record: Option<&DeviceRecord>, now_s: u64) -> Result<(), JwtError> {
        let check = self.check(record, now_s)?;
        if verify_es256(&check) {
            Ok(())
        } else {
            Err(JwtError::Signature)
        }
    }
}

/// Signatures this isolate/instance has verified. An ECDSA verification is a pure function of
/// (key, message, signature), so a triple that verified once verifies for ever: a device that
/// re-sends its token (the usual case, for the token's lifetime) pays the curve arithmetic
/// once per isolate or instance, not per request (in software inside wasm it is about 4 ms).
/// The claims are still judged, and the key still looked up in the record, on every request.
/// The most recently used [`MAX_ENTRIES`](Self::MAX_ENTRIES) are kept (`application::recent`).
#[derive(Debug)]
pub struct VerifiedSignatures {
    /// By the digest's first 8 bytes; the whole digest is compared, and when the token expires.
    seen: Recent<([u8; 32], u64)>,
}

impl VerifiedSignatures {
    pub const MAX_ENTRIES: usize = 50_000;

    pub fn new(fingerprints: Fingerprints) -> Self {
        Self {
            seen: Recent::new(Self::MAX_ENTRIES, fingerprints),
        }
    }

    /// What identifies a check: SHA-256 of key, signature and message.
    pub fn digest(check: &Es256Check<'_>) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(check.public_key);
        h.update(check.signature);
        h.update(check.message);
        h.finalize().into()
    }

    fn slot(digest: &[u8; 32]) -> u64 {
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        u64::from_le_bytes(head)
    }

    /// Whether this check verified before, for a token not expired at `now_s`.
    pub fn contains(&mut self, digest: &[u8; 32], now_s: u64) -> bool {
        self.seen
            .get_mut_by(Self::slot(digest))
            .is_some_and(|(d, exp)| d == digest && exp.saturating_add(LEEWAY_S) >= now_s)
    }

    /// Records a verified check of a token that expires at `expires_s`.
    pub fn insert(&mut self, digest: [u8; 32], expires_s: u64) {
        self.seen
            .insert_by(Self::slot(&digest), (digest, expires_s));
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// An ES256 signature checked in software (RustCrypto `p256`): for hosts without native
/// crypto. An invalid key, an out-of-range `r` or `s`, or a wrong signature: false.
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub fn verify_es256(check: &Es256Check<'_>) -> bool {
    use p256::ecdsa::signature::Verifier;
    use p256::ecdsa::{Signature, VerifyingKey};
    let (Ok(key), Ok(signature)) = (
        VerifyingKey::from_sec1_bytes(&check.public_key),
        Signature::from_slice(&check.signature),
    ) else {
        return false;
    };
    key.verify(check.message, &signature).is_ok()
}

/// An ES256 JWT over `claims` (JSON) with `kid`, signed by the P-256 private scalar `d`: for
/// `cargo xtask sign-jwt`, the simulator and tests. Signatures come out low-S.
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub fn sign(d: &[u8; 32], kid: &str, claims: &str) -> Option<String> {
    use crate::domain::device::to_base64url;
    use p256::ecdsa::signature::Signer;
    let key = p256::ecdsa::SigningKey::from_slice(d).ok()?;
    let header = serde_json::json!({"alg": "ES256", "typ": "JWT", "kid": kid}).to_string();
    let signed = format!(
        "{}.{}",
        to_base64url(header.as_bytes()),
        to_base64url(claims.as_bytes())
    );
    let signature: p256::ecdsa::Signature = key.sign(signed.as_bytes());
    let signature = signature.normalize_s().unwrap_or(signature);
    Some(format!("{signed}.{}", to_base64url(&signature.to_bytes())))
}

/// The public point (`x`, `y`) of the private scalar `d`, or None if `d` is not a valid key.
#[cfg(not(all(target_arch = "wasm32", target_os = "unknown")))]
pub fn public_point(d: &[u8; 32]) -> Option<([u8; 32], [u8; 32])> {
    let key = p256::ecdsa::SigningKey::from_slice(d).ok()?;
    let point = key.verifying_key().to_encoded_point(false);
    Some(((*point.x()?).into(), (*point.y()?).into()))
}

#[cfg(all(test, not(all(target_arch = "wasm32", target_os = "unknown"))))]
mod tests;
