//! The device registry on a host with a store: records written with the host's own tool while
//! it runs (`wrangler kv key put`, Spin's key-value store), then revocation, re-enabling,
//! tags at the collector, required mode, key versions, a master-secret rotation, and ES256
//! device JWTs with their hostile cases. Nothing refused may reach the collector.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_enrich::domain::device::to_base64url;
use edge_enrich::http::auth::MasterSecret;
use edge_enrich::http::jwt;

use super::*;

pub const SECRET: &str = "registry-suite-current-secret-0123456789";
pub const PREVIOUS: &str = "registry-suite-previous-secret-012345678";
pub const AUDIENCE: &str = "https://edge.registry.test";
/// The registry TTL the suite runs with: revocation must show within it plus the slack below.
pub const TTL_S: &str = "1";
/// What a store may add to the TTL (Workers KV's read cache; locally small).
pub const SLACK: Duration = Duration::from_secs(60);

/// Settings of the token-mode run (besides COLLECTOR_URL).
pub fn token_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AUTH_MODE", "token"),
        ("AUTH_SECRET", SECRET),
        ("AUTH_SECRET_PREVIOUS", PREVIOUS),
        ("REGISTRY_MODE", "required"),
        ("REGISTRY_TTL_S", TTL_S),
        ("RATE_LIMIT_READINGS_PER_S", "0"),
    ]
}

/// Settings of the JWT run. The header limit is raised so that a 10 kB token meets the JWT
/// size check (401); at the default 8 KiB it is refused earlier, with 431.
pub fn jwt_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("AUTH_MODE", "jwt"),
        ("JWT_AUDIENCE", AUDIENCE),
        ("REGISTRY_MODE", "required"),
        ("REGISTRY_TTL_S", TTL_S),
        ("MAX_HEADER_BYTES", "16384"),
        ("RATE_LIMIT_READINGS_PER_S", "0"),
    ]
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn send(base: &str, device: &str, temp: u32, authorization: &str) -> Resp {
    let url = format!("{base}/v1/readings?device_id={device}&temp={temp}");
    let r = ureq::get(&url)
        .set("authorization", authorization)
        .timeout(Duration::from_secs(30))
        .call();
    let r = match r {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("GET {url}: {e}"),
    };
    let headers = r
        .headers_names()
        .into_iter()
        .filter_map(|n| r.header(&n).map(|v| (n.clone(), v.to_owned())))
        .collect();
    Resp {
        status: r.status(),
        headers,
        body: r.into_string().unwrap_or_default(),
    }
}

fn problem_type(r: &Resp) -> String {
    r.json()["type"].as_str().unwrap_or("").to_owned()
}

fn token(secret: &str, device: &str, version: u32) -> String {
    format!(
        "Bearer {}",
        MasterSecret::new(secret)
            .unwrap()
            .device_key_v(device, version)
    )
}

/// Token mode with a required registry. `put` writes a record (`device/<id>`, JSON) through
/// the host's own tool. Returns the ids accepted.
pub fn token_mode(base: &str, put: &dyn Fn(&str, &str), collector: &Collector) -> BTreeSet<String> {
    let mut accepted = BTreeSet::new();
    put(
        "device/reg-a",
        r#"{"status":"active","tags":{"site":"fra-1","building":"b 7"},"key_version":1}"#,
    );
    let v1 = token(SECRET, "reg-a", 1);
    // The record's key version is the one accepted; the tags are joined on.
    let r = wait_for(Duration::from_secs(30), "reg-a's record in use", || {
        let r = send(base, "reg-a", 1, &v1);
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.json()["device"]["tags"]["site"], "fra-1", "{}", r.body);
    assert_eq!(r.json()["device"]["key_version"], 1);
    accepted.extend(accepted_ids(&r));
    // A master-secret rotation: keys of the previous secret are accepted meanwhile.
    let r = send(base, "reg-a", 2, &token(PREVIOUS, "reg-a", 1));
    accepted.extend(accepted_ids(&r));
    // Version 0 (the first release's derivation) is not this device's key any more.
    assert_problem(&send(base, "reg-a", 3, &token(SECRET, "reg-a", 0)), 401);
    // Required mode: a device with valid credentials but no record.
    let r = send(base, "reg-unknown", 4, &token(SECRET, "reg-unknown", 0));
    assert_problem(&r, 403);
    assert_eq!(problem_type(&r), "urn:edge-enrich:problem:unknown-device");

    // Revocation, timed from the write.
    put("device/reg-a", r#"{"status":"disabled","key_version":1}"#);
    let written = Instant::now();
    let mut temp = 10;
    let refused = wait_for(SLACK, "reg-a refused once disabled", || {
        temp += 1;
        let r = send(base, "reg-a", temp, &v1);
        match r.status {
            200 => {
                accepted.extend(accepted_ids(&r));
                None
            }
            _ => Some(r),
        }
    });
    assert_problem(&refused, 403);
    assert_eq!(
        problem_type(&refused),
        "urn:edge-enrich:problem:device-disabled"
    );
    eprintln!(
        "registry: a disabled device was refused {:.1} s after the write (TTL {TTL_S} s)",
        written.elapsed().as_secs_f64()
    );
    // Re-enabled: accepted again.
    put(
        "device/reg-a",
        r#"{"status":"active","tags":{"site":"fra-2"},"key_version":1}"#,
    );
    let r = wait_for(SLACK, "reg-a accepted once re-enabled", || {
        temp += 1;
        let r = send(base, "reg-a", temp, &v1);
        (r.status == 200).then_some(r)
    });
    accepted.extend(accepted_ids(&r));
    assert_eq!(r.json()["device"]["tags"]["site"], "fra-2");

    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
    let at_collector = collector.readings_of("reg-a");
    assert!(
        at_collector
            .iter()
            .all(|v| v["device"]["tags"]["site"].is_string()),
        "every reading carries its tags at the collector"
    );
    accepted
}

const D: [u8; 32] = [0x11; 32];
const OTHER_D: [u8; 32] = [0x22; 32];

fn record(d: &[u8; 32], kid: &str) -> String {
    let (x, y) = jwt::public_point(d).unwrap();
    format!(
        r#"{{"status":"active","tags":{{"auth":"jwt"}},"keys":[{{"kid":"{kid}","alg":"ES256","x":"{}","y":"{}"}}]}}"#,
        to_base64url(&x),
        to_base64url(&y)
    )
}

fn claims(sub: &str, aud: &str, iat: u64, exp: u64) -> String {
    serde_json::json!({"sub": sub, "aud": aud, "iat": iat, "exp": exp}).to_string()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A token with another header, its claims and signature kept.
fn with_header(token: &str, header: &str) -> String {
    let rest = token.split_once('.').unwrap().1;
    format!("{}.{rest}", to_base64url(header.as_bytes()))
}

/// JWT mode with records written while the host runs: [`jwt_cases`], then a revocation.
/// Returns the ids accepted.
pub fn jwt_mode(base: &str, put: &dyn Fn(&str, &str), collector: &Collector) -> BTreeSet<String> {
    for (key, value) in jwt_records() {
        put(&key, &value);
    }
    let mut accepted = jwt_cases(base);
    let now = now_s();
    let good = jwt::sign(&D, "k1", &claims("jwt-a", AUDIENCE, now, now + 600)).unwrap();
    // Revoked: its still-valid token is refused.
    put(
        "device/jwt-a",
        &record(&D, "k1").replace("active", "disabled"),
    );
    let refused = wait_for(SLACK, "jwt-a refused once disabled", || {
        let r = send(base, "jwt-a", 3, &bearer(&good));
        match r.status {
            200 => {
                accepted.extend(accepted_ids(&r));
                None
            }
            _ => Some(r),
        }
    });
    assert_eq!(
        problem_type(&refused),
        "urn:edge-enrich:problem:device-disabled"
    );
    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
    assert!(
        collector
            .readings_of("jwt-a")
            .iter()
            .all(|v| v["raw"]["value"] != 99.0),
        "nothing of a refused request reached the collector"
    );
    accepted
}

/// The records the JWT suite runs with: `jwt-a` and `jwt-b` with their own keys, `jwt-off`
/// disabled (with `jwt-a`'s key).
pub fn jwt_records() -> Vec<(String, String)> {
    vec![
        ("device/jwt-a".into(), record(&D, "k1")),
        ("device/jwt-b".into(), record(&OTHER_D, "k1")),
        (
            "device/jwt-off".into(),
            record(&D, "k1").replace("active", "disabled"),
        ),
    ]
}

/// The same records as one `REGISTRY` value (the portable flavour's registry).
pub fn jwt_registry_var() -> String {
    let entries: Vec<String> = jwt_records()
        .into_iter()
        .map(|(k, v)| format!("\"{}\":{v}", k.trim_start_matches("device/")))
        .collect();
    format!("{{{}}}", entries.join(","))
}

/// With [`jwt_records`] in place: a good token, a high-S one, a disabled device, and every
/// hostile case with its status. Returns the ids accepted.
pub fn jwt_cases(base: &str) -> BTreeSet<String> {
    use hmac::Mac;
    let mut accepted = BTreeSet::new();
    let now = now_s();
    let good = jwt::sign(&D, "k1", &claims("jwt-a", AUDIENCE, now, now + 600)).unwrap();
    let r = wait_for(Duration::from_secs(30), "jwt-a's record in use", || {
        let r = send(base, "jwt-a", 1, &bearer(&good));
        (r.status == 200).then_some(r)
    });
    assert_eq!(r.json()["device"]["tags"]["auth"], "jwt");
    accepted.extend(accepted_ids(&r));

    // The same signature with s replaced by n - s (high S): accepted, as documented.
    let (head, sig) = good.rsplit_once('.').unwrap();
    let low =
        p256::ecdsa::Signature::from_slice(&edge_enrich::domain::device::base64url(sig).unwrap())
            .unwrap();
    let (r_, s_) = low.split_scalars();
    let high = p256::ecdsa::Signature::from_scalars(r_, -*s_).unwrap();
    let high_s = format!("{head}.{}", to_base64url(&high.to_bytes()));
    accepted.extend(accepted_ids(&send(base, "jwt-a", 2, &bearer(&high_s))));

    let mut altered = sig.as_bytes().to_vec();
    altered[5] = if altered[5] == b'A' { b'B' } else { b'A' };
    let altered = format!("{head}.{}", String::from_utf8(altered).unwrap());
    let hs256 = {
        let h = with_header(&good, r#"{"alg":"HS256","typ":"JWT","kid":"k1"}"#);
        let signed = h.rsplit_once('.').unwrap().0.to_owned();
        let (x, y) = jwt::public_point(&D).unwrap();
        let mut public = vec![4u8];
        public.extend(x);
        public.extend(y);
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&public).unwrap();
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
    let signed = |d: &[u8; 32], kid: &str, c: String| jwt::sign(d, kid, &c).unwrap();
    let cases: Vec<(&str, String, u16)> = vec![
        ("alg none", none, 401),
        ("HS256 keyed with the public key", hs256, 401),
        (
            "expired",
            signed(&D, "k1", claims("jwt-a", AUDIENCE, now - 7200, now - 3600)),
            401,
        ),
        (
            "not yet valid",
            signed(&D, "k1", claims("jwt-a", AUDIENCE, now + 3600, now + 7200)),
            401,
        ),
        (
            "lifetime over 24 h",
            signed(&D, "k1", claims("jwt-a", AUDIENCE, now, now + 90_000)),
            401,
        ),
        (
            "wrong aud",
            signed(
                &D,
                "k1",
                claims("jwt-a", "https://elsewhere", now, now + 600),
            ),
            401,
        ),
        (
            "unknown kid",
            signed(&D, "k9", claims("jwt-a", AUDIENCE, now, now + 600)),
            401,
        ),
        (
            "another device's key",
            signed(&OTHER_D, "k1", claims("jwt-a", AUDIENCE, now, now + 600)),
            401,
        ),
        (
            "truncated signature",
            good[..good.len() - 6].to_owned(),
            401,
        ),
        ("altered signature", altered, 401),
        (
            "a 10 kB token",
            format!("{good}{}", "A".repeat(10_000)),
            401,
        ),
        (
            "an unregistered sub",
            signed(&D, "k1", claims("jwt-nobody", AUDIENCE, now, now + 600)),
            401,
        ),
    ];
    for (name, token, status) in &cases {
        let r = send(base, "jwt-a", 99, &bearer(token));
        let doc = assert_problem(&r, *status);
        assert_eq!(
            doc["type"], "urn:edge-enrich:problem:unauthorized",
            "{name}: {doc}"
        );
    }
    // A good token of jwt-b cannot send jwt-a's readings.
    let b = signed(&OTHER_D, "k1", claims("jwt-b", AUDIENCE, now, now + 600));
    assert_problem(&send(base, "jwt-a", 99, &bearer(&b)), 403);
    // A disabled device's valid token.
    let off = signed(&D, "k1", claims("jwt-off", AUDIENCE, now, now + 600));
    let r = send(base, "jwt-off", 99, &bearer(&off));
    assert_problem(&r, 403);
    assert_eq!(problem_type(&r), "urn:edge-enrich:problem:device-disabled");
    eprintln!("registry: {} hostile JWTs refused", cases.len() + 2);
    accepted
}

/// After a master-secret rotation (`AUTH_SECRET_PREVIOUS` removed): only keys of the new
/// secret are accepted. Run on a host started with [`after_rotation_vars`].
pub fn after_rotation(base: &str, put: &dyn Fn(&str, &str), collector: &Collector) {
    put("device/reg-r", r#"{"status":"active","key_version":1}"#);
    let current = token(SECRET, "reg-r", 1);
    let r = wait_for(Duration::from_secs(30), "reg-r's record in use", || {
        let r = send(base, "reg-r", 1, &current);
        (r.status == 200).then_some(r)
    });
    let accepted: BTreeSet<String> = accepted_ids(&r).into_iter().collect();
    assert_problem(&send(base, "reg-r", 2, &token(PREVIOUS, "reg-r", 1)), 401);
    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
}

/// [`token_vars`] once the rotation is over.
pub fn after_rotation_vars() -> Vec<(&'static str, &'static str)> {
    token_vars()
        .into_iter()
        .filter(|(k, _)| *k != "AUTH_SECRET_PREVIOUS")
        .collect()
}

/// The whole suite on a host with a store, each part on a fresh host from `start(dir, vars)`:
/// token mode with a rotation and a revocation, token mode after the rotation, then JWTs.
/// `put(host, key, value)` writes a record with the host's own tool while it runs.
pub fn on_a_host_with_a_store<H: EdgeHost>(
    name: &str,
    start: impl Fn(&Path, &[(&str, &str)]) -> H,
    put: impl Fn(&H, &str, &str),
) {
    for (part, vars) in [
        ("token", token_vars()),
        ("rotated", after_rotation_vars()),
        ("jwt", jwt_vars()),
    ] {
        let dir = scratch(&format!("{name}-registry-{part}"));
        let collector = Collector::start(&dir);
        let ingest = collector.ingest_url();
        let mut all = vars.clone();
        all.push(("COLLECTOR_URL", ingest.as_str()));
        let host = start(&dir, &all);
        let write = |key: &str, value: &str| put(&host, key, value);
        let base = host.base_url();
        match part {
            "token" => drop(token_mode(&base, &write, &collector)),
            "rotated" => after_rotation(&base, &write, &collector),
            _ => drop(jwt_mode(&base, &write, &collector)),
        }
    }
}
