//! A device's registry record: whether it may send, the metadata joined onto its readings, its
//! own calibration, the version its token key is derived with, and its public keys (JWT mode).
//! One JSON document per device (`device/<id>` in the host's key-value store). Every value of
//! these types is valid: parsing is the only way to make one, and it refuses unknown fields, so
//! a misspelt `"stauts": "disabled"` is a bad record, never an active device.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::domain::calibration::{default_decimals, one, Profile};
use crate::domain::unquoted::unquoted;

/// Most tags a record may carry; a tag key's and a tag value's longest length.
pub const MAX_TAGS: usize = 16;
pub const MAX_TAG_KEY_LEN: usize = 32;
pub const MAX_TAG_VALUE_LEN: usize = 128;
/// Most public keys a record may list (rotation keeps the old one beside the new one).
pub const MAX_KEYS: usize = 3;
pub const MAX_KID_LEN: usize = 64;
/// The longest record text read; a longer one is a bad record.
pub const MAX_RECORD_BYTES: usize = 8 * 1024;
/// The `calibration.profile` name a registry calibration is reported under.
pub const REGISTRY_PROFILE: &str = "registry";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceStatus {
    Active,
    Disabled,
}

/// An ES256 public key: the P-256 point's affine coordinates (a JWK's `x` and `y`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    pub kid: String,
    pub x: [u8; 32],
    pub y: [u8; 32],
    /// Unix seconds after which the key is no longer accepted; `None`: no end.
    pub not_after_s: Option<u64>,
}

impl PublicKey {
    /// The point as SEC1 uncompressed bytes (`04 || x || y`).
    pub fn sec1(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[0] = 4;
        out[1..33].copy_from_slice(&self.x);
        out[33..].copy_from_slice(&self.y);
        out
    }

    pub fn is_current(&self, now_s: u64) -> bool {
        self.not_after_s.is_none_or(|end| now_s <= end)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    pub status: DeviceStatus,
    /// Joined onto every reading as `device.tags` (sorted by key, so documents are stable).
    pub tags: BTreeMap<String, String>,
    /// Takes precedence over the profile set for this device.
    pub calibration: Option<Profile>,
    /// Enters the device's token key (`http::auth`): raising it re-keys this device alone.
    pub key_version: u32,
    pub keys: Vec<PublicKey>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RecordSpec {
    status: DeviceStatus,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    calibration: Option<CalibrationSpec>,
    #[serde(default)]
    key_version: u32,
    #[serde(default)]
    keys: Vec<KeySpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CalibrationSpec {
    #[serde(default = "one")]
    gain: f64,
    #[serde(default)]
    offset: f64,
    #[serde(default = "default_decimals")]
    decimals: u8,
    version: u32,
}

/// A JWK-shaped key: `kty`/`crv`, when given, must say EC / P-256.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeySpec {
    kid: String,
    alg: String,
    #[serde(default)]
    kty: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    x: String,
    y: String,
    #[serde(default)]
    not_after: Option<u64>,
}

impl DeviceRecord {
    /// Parses and checks a record; the error names the first fault.
    pub fn parse(json: &str) -> Result<Self, String> {
        if json.len() > MAX_RECORD_BYTES {
            return Err(format!(
                "the record is {} bytes; at most {MAX_RECORD_BYTES}",
                json.len()
            ));
        }
        let spec: RecordSpec = serde_json::from_str(json).map_err(|e| unquoted(&e.to_string()))?;
        if spec.tags.len() > MAX_TAGS {
            return Err(format!("tags: at most {MAX_TAGS}"));
        }
        for (key, value) in &spec.tags {
            check_tag_key(key)?;
            if value.is_empty()
                || value.chars().count() > MAX_TAG_VALUE_LEN
                || value.chars().any(char::is_control)
            {
                return Err(format!(
                    "tags.{key}: must be 1 to {MAX_TAG_VALUE_LEN} characters, no control characters"
                ));
            }
        }
        let calibration = spec.calibration.map(calibration).transpose()?;
        if spec.keys.len() > MAX_KEYS {
            return Err(format!("keys: at most {MAX_KEYS}"));
        }
        let mut keys: Vec<PublicKey> = Vec::with_capacity(spec.keys.len());
        for (i, k) in spec.keys.into_iter().enumerate() {
            let key = public_key(k).map_err(|why| format!("keys[{i}].{why}"))?;
            if keys.iter().any(|other| other.kid == key.kid) {
                return Err(format!("keys[{i}].kid: listed twice"));
            }
            keys.push(key);
        }
        Ok(Self {
            status: spec.status,
            tags: spec.tags,
            calibration,
            key_version: spec.key_version,
            keys,
        })
    }

    pub fn is_active(&self) -> bool {
        self.status == DeviceStatus::Active
    }

    /// The key `kid` names, if listed and not past its `not_after`.
    pub fn key(&self, kid: &str, now_s: u64) -> Option<&PublicKey> {
        self.keys
            .iter()
            .find(|k| k.kid == kid && k.is_current(now_s))
    }
}

/// Tag keys are also Influx tag keys and JSON member names: a conservative alphabet.
pub fn check_tag_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= MAX_TAG_KEY_LEN
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tags: key {key:?} must be 1 to {MAX_TAG_KEY_LEN} characters of A-Z a-z 0-9 _ - ."
        ))
    }
}

/// The record's own calibration: the profile rules, reported under `calibration.`.
fn calibration(spec: CalibrationSpec) -> Result<Profile, String> {
    Profile::new(
        REGISTRY_PROFILE.to_owned(),
        spec.gain,
        spec.offset,
        spec.decimals,
        spec.version,
    )
    .map_err(|why| format!("calibration.{why}"))
}

fn public_key(k: KeySpec) -> Result<PublicKey, String> {
    if k.kid.is_empty() || k.kid.len() > MAX_KID_LEN {
        return Err(format!("kid: must be 1 to {MAX_KID_LEN} bytes"));
    }
    if k.alg != "ES256" {
        return Err("alg: must be ES256".into());
    }
    if k.kty.as_deref().is_some_and(|t| t != "EC") || k.crv.as_deref().is_some_and(|c| c != "P-256")
    {
        return Err("kty/crv: must be EC / P-256".into());
    }
    let coordinate = |name: &str, text: &str| -> Result<[u8; 32], String> {
        base64url(text)
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or_else(|| format!("{name}: must be 32 bytes, base64url without padding"))
    };
    Ok(PublicKey {
        x: coordinate("x", &k.x)?,
        y: coordinate("y", &k.y)?,
        kid: k.kid,
        not_after_s: k.not_after,
    })
}

/// base64url without padding (RFC 4648 §5), as JOSE writes it; `None` for anything else.
pub fn base64url(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = text.as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let full = [(acc >> 16) as u8, (acc >> 8) as u8, acc as u8];
        let n = chunk.len() - 1;
        // Bits past the last whole byte must be zero: one encoding per byte string.
        if n < 3 && full[n..].iter().any(|&b| b != 0) {
            return None;
        }
        out.extend_from_slice(&full[..n]);
    }
    Some(out)
}

/// The base64url (no padding) text of `bytes`: for tools and tests that build keys and tokens.
pub fn to_base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let acc = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &b)| acc | (b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(acc >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
    const Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

    #[test]
    fn base64url_round_trips_and_refuses_other_encodings() {
        for n in 0..40u8 {
            let bytes: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            assert_eq!(base64url(&to_base64url(&bytes)).unwrap(), bytes);
        }
        assert_eq!(base64url("aGk").unwrap(), b"hi");
        assert!(base64url("aGk=").is_none(), "padding");
        assert!(base64url("aG+k").is_none(), "standard alphabet");
        assert!(base64url("aGl").is_none(), "non-zero trailing bits");
        assert!(base64url("a").is_none());
    }

    #[test]
    fn a_full_record_parses() {
        let json = format!(
            r#"{{"status":"active","tags":{{"site":"fra-1","owner":"ops team"}},"key_version":3,
               "calibration":{{"gain":1.01,"offset":-0.2,"version":7}},
               "keys":[{{"kid":"k1","alg":"ES256","kty":"EC","crv":"P-256","x":"{X}","y":"{Y}","not_after":100}}]}}"#
        );
        let r = DeviceRecord::parse(&json).unwrap();
        assert!(r.is_active());
        assert_eq!(r.tags["site"], "fra-1");
        assert_eq!(r.key_version, 3);
        assert_eq!(r.calibration.as_ref().unwrap().pattern, REGISTRY_PROFILE);
        assert_eq!(r.keys[0].sec1()[0], 4);
        assert!(r.key("k1", 100).is_some());
        assert!(r.key("k1", 101).is_none(), "past not_after");
        assert!(r.key("k2", 0).is_none());
        let minimal = DeviceRecord::parse(r#"{"status":"disabled"}"#).unwrap();
        assert!(!minimal.is_active());
        assert_eq!((minimal.key_version, minimal.keys.len()), (0, 0));
    }

    #[test]
    fn bad_records_are_refused_with_their_fault() {
        let key = |extra: &str| {
            format!(
                r#"{{"status":"active","keys":[{{"kid":"k","alg":"ES256","x":"{X}","y":"{Y}"{extra}}}]}}"#
            )
        };
        let one = format!(r#"{{"kid":"k","alg":"ES256","x":"{X}","y":"{Y}"}}"#);
        let long_value = "v".repeat(MAX_TAG_VALUE_LEN + 1);
        let many_tags = (0..=MAX_TAGS)
            .map(|i| format!(r#""t{i}":"v""#))
            .collect::<Vec<_>>()
            .join(",");
        let cases = [
            (r#"{"stauts":"disabled"}"#.to_owned(), "unknown field"),
            (r#"{"status":"paused"}"#.to_owned(), "unknown variant"),
            (r#"{}"#.to_owned(), "missing field `status`"),
            (
                r#"{"status":"active","tags":{"a b":"x"}}"#.to_owned(),
                "tags: key",
            ),
            (
                format!(r#"{{"status":"active","tags":{{"a":"{long_value}"}}}}"#),
                "tags.a",
            ),
            (
                format!(r#"{{"status":"active","tags":{{{many_tags}}}}}"#),
                "at most 16",
            ),
            (
                r#"{"status":"active","calibration":{"gain":0,"version":1}}"#.to_owned(),
                "calibration.gain",
            ),
            (key(r#","crv":"P-384""#), "kty/crv"),
            (key("").replace("ES256", "HS256"), "alg: must be ES256"),
            (key("").replace(X, "AAAA"), "x: must be 32 bytes"),
            (
                format!(r#"{{"status":"active","keys":[{one},{one}]}}"#),
                "listed twice",
            ),
            ("x".repeat(MAX_RECORD_BYTES + 1), "bytes; at most"),
        ];
        for (json, fault) in cases {
            let err = DeviceRecord::parse(&json).unwrap_err();
            assert!(err.contains(fault), "{json}: {err}");
        }
        assert!(DeviceRecord::parse(&key("")).is_ok());
    }
}
