use super::*;
use crate::domain::device::to_base64url;
use p256::ecdsa::Signature;

const AUD: &str = "edge-enrich-test";
const NOW: u64 = 1_800_000_000;
const D: [u8; 32] = [7; 32];
const OTHER_D: [u8; 32] = [9; 32];

fn record_with(d: &[u8; 32], kid: &str, not_after: Option<u64>) -> DeviceRecord {
    let (x, y) = public_point(d).unwrap();
    let not_after = not_after
        .map(|t| format!(r#","not_after":{t}"#))
        .unwrap_or_default();
    DeviceRecord::parse(&format!(
        r#"{{"status":"active","keys":[{{"kid":"{kid}","alg":"ES256","x":"{}","y":"{}"{not_after}}}]}}"#,
        to_base64url(&x),
        to_base64url(&y)
    ))
    .unwrap()
}

fn claims(sub: &str, aud: &str, iat: u64, exp: u64) -> String {
    serde_json::json!({"sub": sub, "aud": aud, "iat": iat, "exp": exp}).to_string()
}

fn token(d: &[u8; 32], kid: &str, claims: &str) -> String {
    sign(d, kid, claims).unwrap()
}

fn judge(token: &str, record: Option<&DeviceRecord>) -> Result<DeviceId, JwtError> {
    let jwt = parse(token, AUD, NOW)?;
    jwt.verify(record, NOW)?;
    Ok(jwt.device().clone())
}

/// A token with its header replaced, the claims and signature kept.
fn with_header(token: &str, header: &str) -> String {
    let rest = token.split_once('.').unwrap().1;
    format!("{}.{rest}", to_base64url(header.as_bytes()))
}

#[test]
fn a_good_token_names_its_device() {
    let record = record_with(&D, "k1", None);
    let t = token(&D, "k1", &claims("dev-1", AUD, NOW - 10, NOW + 3600));
    assert_eq!(judge(&t, Some(&record)).unwrap().as_str(), "dev-1");
    // `aud` as an array naming us; nbf in the past.
    let c = serde_json::json!({"sub":"dev-1","aud":["x", AUD],"iat":NOW,"exp":NOW+60,"nbf":NOW-5});
    assert!(judge(&token(&D, "k1", &c.to_string()), Some(&record)).is_ok());
    // Within the leeway either way.
    let skewed = token(&D, "k1", &claims("dev-1", AUD, NOW + 500, NOW + 900));
    assert!(judge(&skewed, Some(&record)).is_ok());
}

#[test]
fn hostile_tokens_get_their_error() {
    let record = record_with(&D, "k1", None);
    let good_claims = claims("dev-1", AUD, NOW - 10, NOW + 3600);
    let good = token(&D, "k1", &good_claims);
    let (head, sig) = good.rsplit_once('.').unwrap();
    let mut altered = sig.as_bytes().to_vec();
    altered[10] = if altered[10] == b'A' { b'B' } else { b'A' };
    let altered = format!("{head}.{}", String::from_utf8(altered).unwrap());
    // HS256 over the token with the public key's bytes as the secret: algorithm confusion.
    let hs = {
        use hmac::{Hmac, Mac};
        let h = with_header(&good, r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
        let signed = h.rsplit_once('.').unwrap().0.to_owned();
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&record.keys[0].sec1()).unwrap();
        mac.update(signed.as_bytes());
        format!("{signed}.{}", to_base64url(&mac.finalize().into_bytes()))
    };
    let none = format!(
        "{}.",
        with_header(&good, r#"{"alg":"none","kid":"k1"}"#)
            .rsplit_once('.')
            .unwrap()
            .0
    );
    let cases: Vec<(&str, String, JwtError)> = vec![
        ("alg none", none, JwtError::Algorithm),
        ("HS256 with the public key", hs, JwtError::Algorithm),
        (
            "alg es256 (case)",
            with_header(&good, r#"{"alg":"es256","kid":"k1"}"#),
            JwtError::Algorithm,
        ),
        (
            "crit",
            with_header(&good, r#"{"alg":"ES256","kid":"k1","crit":["b64"]}"#),
            JwtError::Malformed,
        ),
        (
            "no kid",
            with_header(&good, r#"{"alg":"ES256"}"#),
            JwtError::Malformed,
        ),
        (
            "expired",
            token(&D, "k1", &claims("dev-1", AUD, NOW - 7200, NOW - 3600)),
            JwtError::Expired,
        ),
        (
            "not yet valid",
            token(&D, "k1", &claims("dev-1", AUD, NOW + 3600, NOW + 7200)),
            JwtError::NotYetValid,
        ),
        (
            "nbf in the future",
            token(
                &D,
                "k1",
                &serde_json::json!({"sub":"dev-1","aud":AUD,"iat":NOW,"exp":NOW+3600,"nbf":NOW+1200})
                    .to_string(),
            ),
            JwtError::NotYetValid,
        ),
        (
            "lifetime over 24 h",
            token(&D, "k1", &claims("dev-1", AUD, NOW, NOW + 86_401)),
            JwtError::Lifetime,
        ),
        (
            "exp before iat",
            token(&D, "k1", &claims("dev-1", AUD, NOW, NOW - 1)),
            JwtError::Lifetime,
        ),
        (
            "wrong aud",
            token(&D, "k1", &claims("dev-1", "someone-else", NOW, NOW + 60)),
            JwtError::Audience,
        ),
        (
            "unknown kid",
            token(&D, "k2", &good_claims),
            JwtError::Signature,
        ),
        (
            "another device's key",
            token(&OTHER_D, "k1", &good_claims),
            JwtError::Signature,
        ),
        (
            "truncated signature",
            good[..good.len() - 4].to_owned(),
            JwtError::Signature,
        ),
        ("altered signature", altered, JwtError::Signature),
        (
            "a 10 kB token",
            format!("{good}{}", "A".repeat(10_000)),
            JwtError::TooLong,
        ),
        ("two parts", head.to_owned(), JwtError::Malformed),
        ("four parts", format!("{good}.x"), JwtError::Malformed),
        (
            "sub not a device id",
            token(&D, "k1", &claims("a b", AUD, NOW, NOW + 60)),
            JwtError::Malformed,
        ),
        ("not base64url", "%%%.%%%.%%%".into(), JwtError::Malformed),
    ];
    for (name, t, want) in cases {
        assert_eq!(judge(&t, Some(&record)), Err(want), "{name}");
    }
    // The right key, but the device has no record, or the key is past its not_after.
    assert_eq!(judge(&good, None), Err(JwtError::Signature));
    let retired = record_with(&D, "k1", Some(NOW - 1));
    assert_eq!(judge(&good, Some(&retired)), Err(JwtError::Signature));
}

/// High-S signatures are accepted (see the module comment): the same signature with `s`
/// replaced by `n - s` still verifies.
#[test]
fn high_s_signatures_are_accepted() {
    let record = record_with(&D, "k1", None);
    let good = token(&D, "k1", &claims("dev-1", AUD, NOW, NOW + 60));
    let (head, sig) = good.rsplit_once('.').unwrap();
    let low = Signature::from_slice(&base64url(sig).unwrap()).unwrap();
    assert!(low.normalize_s().is_none(), "sign() makes low-S signatures");
    let (r, s) = low.split_scalars();
    let high = Signature::from_scalars(r, -*s).unwrap();
    assert!(high.normalize_s().is_some(), "n - s is high");
    let high_token = format!("{head}.{}", to_base64url(&high.to_bytes()));
    assert_eq!(judge(&high_token, Some(&record)).unwrap().as_str(), "dev-1");
}

/// The most recently used checks are kept, one forgotten at a time past the bound (at 557087d
/// the whole set was cleared when none had expired); an expired token's check is not trusted.
#[test]
fn verified_signatures_are_bounded() {
    let digest = |i: usize| {
        let mut d = [0u8; 32];
        d[..8].copy_from_slice(&(i as u64).to_le_bytes());
        d[31] = 7;
        d
    };
    let mut seen = VerifiedSignatures::new(crate::application::recent::tests::fingerprints());
    assert!(seen.is_empty());
    for i in 0..VerifiedSignatures::MAX_ENTRIES {
        seen.insert(digest(i), NOW + 60);
    }
    assert!(seen.contains(&digest(0), NOW)); // digest(1) is now the oldest
    seen.insert(digest(usize::MAX), NOW + 60);
    assert_eq!(seen.len(), VerifiedSignatures::MAX_ENTRIES);
    assert!(seen.contains(&digest(usize::MAX), NOW));
    assert!(seen.contains(&digest(0), NOW));
    assert!(
        !seen.contains(&digest(1), NOW),
        "the least recently used went"
    );
    // Past its expiry (and the leeway) a check is not trusted; nor is a digest that only shares
    // the first 8 bytes.
    assert!(!seen.contains(&digest(0), NOW + 61 + LEEWAY_S));
    let mut near = digest(5);
    near[31] = 8;
    assert!(!seen.contains(&near, NOW));
}
