//! Device JWTs (`AUTH_MODE=jwt`): ES256 only, verified against the public keys of the device's
//! registry record, so the edge holds no secret that could mint a token.
//!
//! A token is judged in two steps, both before a byte of the body is read:
//! - [`parse`]: size, shape, the header's `alg` (exactly `ES256`: no `none`, no HMAC, so a
//!   public key can never be used as an HMAC secret) and the claims (`aud`, `iat`, `exp`,
//!   `nbf`, lifetime) against the clock. No store is read for a token that fails here.
//! - [`DeviceJwt::verify`]: the signature, with the key `kid` names in the record of `sub`.
//!
//! High-S signatures are accepted: RFC 7518 does not require low S, common device libraries
//! (OpenSSL, mbedTLS) produce either half the time, and a second encoding of a signature lets
//! no one sign anything new.

use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use serde::Deserialize;

use crate::domain::device::{base64url, DeviceRecord};
use crate::domain::reading::DeviceId;

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

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

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
    signature: Signature,
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
    let header: Header<'_> =
        serde_json::from_slice(&header_bytes).map_err(|_| JwtError::Malformed)?;
    if header.alg != "ES256" {
        return Err(JwtError::Algorithm);
    }
    // No extension this verifier understands may be marked critical (RFC 7515 §4.1.11).
    if header.crit.is_some() {
        return Err(JwtError::Malformed);
    }
    let kid = header.kid.ok_or(JwtError::Malformed)?;
    let claims: Claims = base64url(c)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(JwtError::Malformed)?;
    let device = DeviceId::parse(&claims.sub).map_err(|_| JwtError::Malformed)?;
    let for_us = match &claims.aud {
        Audience::One(a) => a == audience,
        Audience::Many(all) => all.iter().any(|a| a == audience),
    };
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
    let signature = base64url(s)
        .filter(|b| b.len() == 64)
        .and_then(|b| Signature::from_slice(&b).ok())
        .ok_or(JwtError::Signature)?;
    Ok(DeviceJwt {
        device,
        kid,
        signed: token[..h.len() + 1 + c.len()].to_owned(),
        signature,
    })
}

impl DeviceJwt {
    /// The device the token speaks for (`sub`), not yet proven.
    pub fn device(&self) -> &DeviceId {
        &self.device
    }

    /// The signature, with the current key `kid` names in the device's record.
    pub fn verify(&self, record: Option<&DeviceRecord>, now_s: u64) -> Result<(), JwtError> {
        let key = record
            .and_then(|r| r.key(&self.kid, now_s))
            .and_then(|k| VerifyingKey::from_sec1_bytes(&k.sec1()).ok())
            .ok_or(JwtError::Signature)?;
        key.verify(self.signed.as_bytes(), &self.signature)
            .map_err(|_| JwtError::Signature)
    }
}

/// An ES256 JWT over `claims` (JSON) with `kid`, signed by the P-256 private scalar `d`: for
/// `cargo xtask sign-jwt`, the simulator and tests. Signatures come out low-S.
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
    let signature: Signature = key.sign(signed.as_bytes());
    let signature = signature.normalize_s().unwrap_or(signature);
    Some(format!("{signed}.{}", to_base64url(&signature.to_bytes())))
}

/// The public point (`x`, `y`) of the private scalar `d`, or None if `d` is not a valid key.
pub fn public_point(d: &[u8; 32]) -> Option<([u8; 32], [u8; 32])> {
    let key = p256::ecdsa::SigningKey::from_slice(d).ok()?;
    let point = key.verifying_key().to_encoded_point(false);
    Some(((*point.x()?).into(), (*point.y()?).into()))
}

#[cfg(test)]
mod tests;
