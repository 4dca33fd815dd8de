//! Fleet tooling: device credentials and registry records.
//! - `keygen [--kid KID]`: a new ES256 key pair as a private JWK (keep it on the device);
//! - `sign-jwt --key JWK_FILE --device ID --aud AUD [--ttl SECONDS]`: a device JWT;
//! - `devices put|disable|enable|show|bulk`: registry records, and `profiles put|show|delete`:
//!   the calibration profiles, written where the host reads them: a deployed Worker's KV
//!   namespace (`DEVICES`, `PROFILES`) through wrangler by default, `--local` for the state
//!   `scripts/dev.sh` runs on, a local Spin state dir's key-value store (`--spin-state DIR`);
//!   `--print` only prints the value and the commands. Each says where it wrote.
//!
//! Records and profiles are checked with the edge's own parsers before anything is written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use edge_enrich::application::profile_cache::PROFILES_KEY;
use edge_enrich::application::registry::record_key;
use edge_enrich::domain::device::{base64url, to_base64url, DeviceRecord};
use edge_enrich::domain::reading::DeviceId;
use edge_enrich::http::jwt;
use serde_json::{json, Value};

pub const USAGE: &str = "       cargo xtask keygen [--kid KID]                 > device-key.jwk (private: stays on the device)
       cargo xtask sign-jwt --key JWK_FILE --device ID --aud AUDIENCE [--ttl SECONDS]
       cargo xtask devices put ID [--tag K=V]... [--key-version N] [--key JWK_FILE]... [--not-after UNIX_S]
                               [--gain G] [--offset O] [--calibration-version V] [--disabled] WHERE
       cargo xtask devices disable|enable|show ID WHERE
       cargo xtask devices bulk FILE.json WHERE       ({\"<id>\": record, ...})
       cargo xtask profiles put FILE.json WHERE | show WHERE | delete WHERE   (key `calibration`)
           WHERE: [--env staging|production] [--config wrangler.toml]  (a deployed Worker's KV, the default)
                  | --local [--persist-to DIR]                         (scripts/dev.sh's wrangler dev state, .dev/state)
                  | --spin-state DIR                                   (a local Spin app's key-value store, e.g. .spin)
                  | --print                                            (print the value and the commands only)";

/// Where `scripts/dev.sh` keeps `wrangler dev`'s state (its `--persist-to`).
const DEV_STATE: &str = ".dev/state";

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Flags as `--name value` pairs (repeatable) and the positional arguments.
struct Args {
    positional: Vec<String>,
    flags: Vec<(String, Option<String>)>,
}

const SWITCHES: &[&str] = &["--disabled", "--local", "--print"];

impl Args {
    fn parse(args: &[String]) -> Result<Self, String> {
        let (mut positional, mut flags) = (Vec::new(), Vec::new());
        let mut it = args.iter();
        while let Some(a) = it.next() {
            if SWITCHES.contains(&a.as_str()) {
                flags.push((a.clone(), None));
            } else if a.starts_with("--") {
                let v = it.next().ok_or_else(|| format!("{a} needs a value"))?;
                flags.push((a.clone(), Some(v.clone())));
            } else {
                positional.push(a.clone());
            }
        }
        Ok(Self { positional, flags })
    }

    fn all(&self, name: &str) -> Vec<&str> {
        self.flags
            .iter()
            .filter(|(n, _)| n == name)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.all(name).last().copied()
    }

    fn has(&self, name: &str) -> bool {
        self.flags.iter().any(|(n, _)| n == name)
    }

    fn number<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.one(name)
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("{name}: {v:?} is not a number"))
            })
            .transpose()
    }
}

/// `keygen`: a private JWK with a fresh P-256 scalar from the OS's CSPRNG.
pub fn keygen(args: &[String]) -> Result<String, String> {
    let args = Args::parse(args)?;
    let kid = args.one("--kid").unwrap_or("k1");
    loop {
        let mut d = [0u8; 32];
        getrandom::fill(&mut d).map_err(|e| e.to_string())?;
        // A scalar outside [1, n) (probability ~2^-32) is drawn again.
        if let Some((x, y)) = jwt::public_point(&d) {
            return Ok(json!({
                "kty": "EC", "crv": "P-256", "alg": "ES256", "kid": kid,
                "x": to_base64url(&x), "y": to_base64url(&y), "d": to_base64url(&d),
            })
            .to_string());
        }
    }
}

fn read_jwk(path: &str) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("{path}: not a JWK: {e}"))
}

/// `sign-jwt`: a token for `--device`, signed with the private JWK in `--key`.
pub fn sign_jwt(args: &[String]) -> Result<String, String> {
    let args = Args::parse(args)?;
    let key = read_jwk(args.one("--key").ok_or("--key JWK_FILE is required")?)?;
    let device = args.one("--device").ok_or("--device ID is required")?;
    DeviceId::parse(device).map_err(|e| format!("--device: {}", e.detail))?;
    let aud = args
        .one("--aud")
        .ok_or("--aud AUDIENCE is required (the deployment's JWT_AUDIENCE)")?;
    let ttl: u64 = args.number("--ttl")?.unwrap_or(3600);
    if ttl == 0 || ttl > jwt::MAX_LIFETIME_S {
        return Err(format!(
            "--ttl must be 1 to {} seconds",
            jwt::MAX_LIFETIME_S
        ));
    }
    let d: [u8; 32] = key["d"]
        .as_str()
        .and_then(base64url)
        .and_then(|b| b.try_into().ok())
        .ok_or("the JWK has no private scalar d (use the file keygen wrote)")?;
    let kid = key["kid"].as_str().unwrap_or("k1");
    let iat = now_s();
    let claims = json!({"sub": device, "aud": aud, "iat": iat, "exp": iat + ttl}).to_string();
    jwt::sign(&d, kid, &claims).ok_or_else(|| "the JWK's d is not a P-256 key".to_owned())
}

/// The record `devices put` builds from its flags, checked by the edge's parser.
pub fn record_from(args: &[String]) -> Result<Value, String> {
    let args = Args::parse(args)?;
    let mut tags = BTreeMap::new();
    for tag in args.all("--tag") {
        let (k, v) = tag
            .split_once('=')
            .ok_or_else(|| format!("--tag {tag:?}: use KEY=VALUE"))?;
        tags.insert(k.to_owned(), v.to_owned());
    }
    let not_after: Option<u64> = args.number("--not-after")?;
    let mut keys = Vec::new();
    for file in args.all("--key") {
        let jwk = read_jwk(file)?;
        let mut public = json!({
            "kid": jwk["kid"].as_str().unwrap_or("k1"),
            "alg": "ES256",
            "x": jwk["x"], "y": jwk["y"],
        });
        if let Some(t) = not_after {
            public["not_after"] = json!(t);
        }
        keys.push(public);
    }
    let mut record = json!({
        "status": if args.has("--disabled") { "disabled" } else { "active" },
        "key_version": args.number::<u32>("--key-version")?.unwrap_or(0),
    });
    if !tags.is_empty() {
        record["tags"] = json!(tags);
    }
    if !keys.is_empty() {
        record["keys"] = json!(keys);
    }
    let (gain, offset) = (
        args.number::<f64>("--gain")?,
        args.number::<f64>("--offset")?,
    );
    if gain.is_some() || offset.is_some() {
        let version: u32 = args
            .number("--calibration-version")?
            .ok_or("--calibration-version is required with --gain or --offset")?;
        record["calibration"] = json!({
            "gain": gain.unwrap_or(1.0), "offset": offset.unwrap_or(0.0), "version": version,
        });
    }
    DeviceRecord::parse(&record.to_string())
        .map_err(|e| format!("the record would be refused: {e}"))?;
    Ok(record)
}

/// Where values are written and read: one binding (`DEVICES`, `PROFILES`) of one place.
enum Store {
    /// Workers KV through wrangler: `extra` selects the place (`--remote --env production`, or
    /// `--local --persist-to .dev/state`); `place` says it in words.
    Workers {
        binding: &'static str,
        extra: Vec<String>,
        place: String,
    },
    Spin {
        db: PathBuf,
    },
    Print {
        binding: &'static str,
    },
}

impl Store {
    fn from(args: &Args, binding: &'static str) -> Result<Self, String> {
        if args.has("--print") {
            return Ok(Self::Print { binding });
        }
        if let Some(dir) = args.one("--spin-state") {
            return Ok(Self::Spin {
                db: Path::new(dir).join("sqlite_key_value.db"),
            });
        }
        let mut extra = Vec::new();
        let place = if args.has("--local") {
            if args.has("--env") {
                return Err("--local and --env: choose one (--env is a deployed Worker)".into());
            }
            let dir = args.one("--persist-to").unwrap_or(DEV_STATE);
            extra.extend([
                "--local".to_owned(),
                "--persist-to".to_owned(),
                dir.to_owned(),
            ]);
            format!("the local {binding} namespace in {dir} (what scripts/dev.sh runs on)")
        } else {
            if args.has("--persist-to") {
                return Err("--persist-to needs --local".into());
            }
            extra.push("--remote".to_owned());
            match args.one("--env") {
                Some(env) => {
                    extra.extend(["--env".to_owned(), env.to_owned()]);
                    format!("the deployed {binding} namespace of environment {env:?}")
                }
                None => format!(
                    "the deployed {binding} namespace of the top-level Worker (give --env production for an environment)"
                ),
            }
        };
        if let Some(v) = args.one("--config") {
            extra.extend(["--config".to_owned(), v.to_owned()]);
        }
        Ok(Self::Workers {
            binding,
            extra,
            place,
        })
    }

    /// Where this store is, for the line each command prints.
    fn place(&self) -> String {
        match self {
            Self::Workers { place, .. } => place.clone(),
            Self::Spin { db } => format!("the Spin key-value store {}", db.display()),
            Self::Print { .. } => "nowhere (--print)".into(),
        }
    }

    fn wrangler(&self, args: &[&str]) -> Result<String, String> {
        let Self::Workers { binding, extra, .. } = self else {
            unreachable!("wrangler only for Workers")
        };
        let local = Path::new("node_modules/.bin/wrangler");
        let mut cmd = if local.exists() {
            Command::new(local)
        } else {
            let mut c = Command::new("npx");
            c.arg("wrangler");
            c
        };
        let out = cmd
            .args(["kv"])
            .args(args)
            .args(["--binding", binding])
            .args(extra)
            .env("WRANGLER_SEND_METRICS", "false")
            .output()
            .map_err(|e| format!("wrangler: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "wrangler kv {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn spin_db(db: &Path) -> Result<rusqlite::Connection, String> {
        let c = rusqlite::Connection::open(db).map_err(|e| format!("{}: {e}", db.display()))?;
        c.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
        c.execute(
            "CREATE TABLE IF NOT EXISTS spin_key_value (store TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY (store, key))",
            [],
        )
        .map_err(|e| e.to_string())?;
        Ok(c)
    }

    fn put(&self, key: &str, text: &str) -> Result<(), String> {
        match self {
            Self::Workers { .. } => self.wrangler(&["key", "put", key, text]).map(drop),
            Self::Spin { db } => Self::spin_db(db)?
                .execute(
                    "INSERT INTO spin_key_value (store, key, value) VALUES ('default', ?1, ?2)
                     ON CONFLICT (store, key) DO UPDATE SET value = excluded.value",
                    rusqlite::params![key, text.as_bytes()],
                )
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::Print { binding } => {
                // Quoted for a POSIX shell, and for SQL inside the heredoc.
                let shell = text.replace('\'', "'\\''");
                let sql = text.replace('\'', "''");
                println!("{text}");
                println!("# Workers (deployed; --local --persist-to {DEV_STATE} for scripts/dev.sh):\nnpx wrangler kv key put --binding {binding} {key} '{shell}' --remote --env production");
                println!("# Spin, a local state dir (or: cargo xtask ... --spin-state DIR):\nsqlite3 .spin/sqlite_key_value.db <<'SQL'\nINSERT OR REPLACE INTO spin_key_value (store, key, value) VALUES ('default', '{key}', CAST('{sql}' AS BLOB));\nSQL");
                Ok(())
            }
        }
    }

    fn delete(&self, key: &str) -> Result<(), String> {
        match self {
            Self::Workers { .. } => self.wrangler(&["key", "delete", key]).map(drop),
            Self::Spin { db } => Self::spin_db(db)?
                .execute(
                    "DELETE FROM spin_key_value WHERE store = 'default' AND key = ?1",
                    [key],
                )
                .map(drop)
                .map_err(|e| e.to_string()),
            Self::Print { .. } => Err("--print cannot delete".into()),
        }
    }

    fn get(&self, key: &str) -> Result<Option<String>, String> {
        match self {
            Self::Workers { .. } => match self.wrangler(&["key", "get", key]) {
                Ok(text) if text.trim() == "Value not found" => Ok(None),
                Ok(text) => Ok(Some(text.trim().to_owned())),
                Err(e) if e.contains("not found") => Ok(None),
                Err(e) => Err(e),
            },
            Self::Spin { db } => {
                use rusqlite::OptionalExtension;
                Self::spin_db(db)?
                    .query_row(
                        "SELECT value FROM spin_key_value WHERE store = 'default' AND key = ?1",
                        [key],
                        |row| row.get::<_, Vec<u8>>(0),
                    )
                    .optional()
                    .map(|v| v.map(|b| String::from_utf8_lossy(&b).into_owned()))
                    .map_err(|e| e.to_string())
            }
            Self::Print { .. } => Err("--print cannot read".into()),
        }
    }
}

/// A fleet command's verb, its other arguments, and the store of `binding` they name, which it
/// says before anything is written.
fn command<'a>(
    args: &'a [String],
    binding: &'static str,
) -> Result<(&'a str, &'a [String], Args, Store), String> {
    let (Some(verb), rest) = (args.first(), args.get(1..).unwrap_or_default()) else {
        return Err(USAGE.into());
    };
    let parsed = Args::parse(rest)?;
    let store = Store::from(&parsed, binding)?;
    eprintln!("{}: {}", binding.to_ascii_lowercase(), store.place());
    Ok((verb, rest, parsed, store))
}

/// The registry key of device `id`, as the edge reads it.
fn device_key(id: &str) -> Result<String, String> {
    let device = DeviceId::parse(id).map_err(|e| format!("device id {id:?}: {}", e.detail))?;
    Ok(record_key(&device))
}

/// `devices ...`: prints what it did.
pub fn devices(args: &[String]) -> Result<(), String> {
    let (verb, rest, parsed, registry) = command(args, "DEVICES")?;
    let key = || -> Result<String, String> {
        device_key(
            parsed
                .positional
                .first()
                .ok_or("which device? give its id")?,
        )
    };
    match verb {
        "put" => {
            let key = key()?;
            let record = record_from(rest)?;
            registry.put(&key, &record.to_string())?;
            eprintln!("{key}: {record}");
            Ok(())
        }
        "disable" | "enable" => {
            let key = key()?;
            let text = registry
                .get(&key)?
                .ok_or_else(|| format!("{key}: no record (put one first)"))?;
            let mut record: Value =
                serde_json::from_str(&text).map_err(|e| format!("{key}: {e}"))?;
            record["status"] = json!(if verb == "disable" {
                "disabled"
            } else {
                "active"
            });
            DeviceRecord::parse(&record.to_string()).map_err(|e| format!("{key}: {e}"))?;
            registry.put(&key, &record.to_string())?;
            eprintln!("{key}: {record}");
            Ok(())
        }
        "show" => {
            let key = key()?;
            match registry.get(&key)? {
                Some(text) => {
                    println!("{text}");
                    if let Err(e) = DeviceRecord::parse(&text) {
                        eprintln!("warning: the edge ignores this record: {e}");
                    }
                    Ok(())
                }
                None => Err(format!("{key}: no record")),
            }
        }
        "bulk" => {
            let file = parsed.positional.first().ok_or("bulk FILE.json")?;
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            let all: BTreeMap<String, Value> = serde_json::from_str(&text)
                .map_err(|e| format!("{file}: {{\"<id>\": record}}: {e}"))?;
            let mut records = Vec::with_capacity(all.len());
            for (id, record) in &all {
                let text = record.to_string();
                DeviceRecord::parse(&text).map_err(|e| format!("{id}: {e}"))?;
                records.push((device_key(id)?, text));
            }
            match &registry {
                Store::Workers { .. } => {
                    // One `kv bulk put` (up to 10,000 pairs per call) rather than a call each.
                    let pairs: Vec<Value> = records
                        .iter()
                        .map(|(key, text)| json!({"key": key, "value": text}))
                        .collect();
                    let dir = std::env::temp_dir()
                        .join(format!("edge-enrich-bulk-{}", std::process::id()));
                    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
                    for (n, chunk) in pairs.chunks(10_000).enumerate() {
                        let path = dir.join(format!("chunk-{n}.json"));
                        std::fs::write(&path, Value::Array(chunk.to_vec()).to_string())
                            .map_err(|e| e.to_string())?;
                        registry.wrangler(&["bulk", "put", &path.to_string_lossy()])?;
                    }
                }
                _ => {
                    for (key, text) in &records {
                        registry.put(key, text)?;
                    }
                }
            }
            eprintln!("{} records written", records.len());
            Ok(())
        }
        _ => Err(USAGE.into()),
    }
}

/// `profiles put FILE|show|delete`: the calibration profiles in the host's key-value store.
pub fn profiles(args: &[String]) -> Result<(), String> {
    let (verb, _, parsed, store) = command(args, "PROFILES")?;
    match verb {
        "put" => {
            let file = parsed.positional.first().ok_or("put FILE.json")?;
            let text = std::fs::read_to_string(file).map_err(|e| format!("{file}: {e}"))?;
            let profiles = edge_enrich::domain::calibration::Profiles::parse(&text)
                .map_err(|e| format!("{file}: the edge would refuse it: {}", e.join("; ")))?;
            // Compact, as the edge reads it: a smaller value to store and to read.
            let value: Value = serde_json::from_str(&text).map_err(|e| format!("{file}: {e}"))?;
            store.put(PROFILES_KEY, &value.to_string())?;
            eprintln!(
                "{PROFILES_KEY}: {} profiles, version {}",
                profiles.len(),
                profiles.version()
            );
            Ok(())
        }
        "show" => match store.get(PROFILES_KEY)? {
            Some(text) => {
                println!("{text}");
                Ok(())
            }
            None => Err(format!(
                "{PROFILES_KEY}: not set (the deployment's own profiles apply)"
            )),
        },
        "delete" => store.delete(PROFILES_KEY),
        _ => Err(USAGE.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn keys_sign_tokens_the_edge_verifies() {
        let dir = std::env::temp_dir().join(format!("fleet-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key_file = dir.join("k.jwk");
        std::fs::write(&key_file, keygen(&strings(&["--kid", "k7"])).unwrap()).unwrap();
        let key = key_file.to_string_lossy().to_string();
        let record = record_from(&strings(&[
            "--tag",
            "site=fra-1",
            "--key",
            &key,
            "--key-version",
            "2",
        ]))
        .unwrap();
        assert!(
            record["keys"][0].get("d").is_none(),
            "only the public part: {record}"
        );
        let record = DeviceRecord::parse(&record.to_string()).unwrap();
        assert_eq!(
            (record.key_version, record.tags["site"].as_str()),
            (2, "fra-1")
        );
        let token = sign_jwt(&strings(&[
            "--key", &key, "--device", "dev-9", "--aud", "aud-1",
        ]))
        .unwrap();
        let parsed = jwt::parse(&token, "aud-1", now_s()).unwrap();
        assert_eq!(parsed.device().as_str(), "dev-9");
        parsed.verify(Some(&record), now_s()).unwrap();
        // Into a Spin state dir and back, disabled and enabled again.
        let spin = dir.join("spin-state");
        std::fs::create_dir_all(&spin).unwrap();
        let spin = spin.to_string_lossy().to_string();
        devices(&strings(&[
            "put",
            "dev-9",
            "--tag",
            "a=b",
            "--spin-state",
            &spin,
        ]))
        .unwrap();
        devices(&strings(&["disable", "dev-9", "--spin-state", &spin])).unwrap();
        let registry = Store::Spin {
            db: Path::new(&spin).join("sqlite_key_value.db"),
        };
        let stored = DeviceRecord::parse(&registry.get("device/dev-9").unwrap().unwrap()).unwrap();
        assert!(!stored.is_active());
        assert_eq!(stored.tags["a"], "b", "the rest of the record kept");
        devices(&strings(&["enable", "dev-9", "--spin-state", &spin])).unwrap();
        assert!(
            DeviceRecord::parse(&registry.get("device/dev-9").unwrap().unwrap())
                .unwrap()
                .is_active()
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn bad_records_are_refused_before_anything_is_written() {
        assert!(record_from(&strings(&["--tag", "bad key=x"]))
            .unwrap_err()
            .contains("refused"));
        assert!(record_from(&strings(&["--gain", "2"]))
            .unwrap_err()
            .contains("calibration-version"));
        assert!(devices(&strings(&["put", "bad id", "--print"])).is_err());
    }

    /// Deployed by default (wrangler 4 would write locally), `--local` where dev.sh runs.
    #[test]
    fn commands_say_and_choose_where_they_write() {
        let place = |a: &[&str]| match Store::from(&Args::parse(&strings(a)).unwrap(), "DEVICES") {
            Ok(Store::Workers { extra, place, .. }) => Ok((extra.join(" "), place)),
            Ok(_) => Err("not workers".to_owned()),
            Err(e) => Err(e),
        };
        let (args, said) = place(&["--env", "production"]).unwrap();
        assert_eq!(args, "--remote --env production");
        assert!(said.contains("deployed DEVICES namespace of environment \"production\""));
        assert_eq!(place(&[]).unwrap().0, "--remote");
        let (args, said) = place(&["--local"]).unwrap();
        assert_eq!(args, format!("--local --persist-to {DEV_STATE}"));
        assert!(said.contains("scripts/dev.sh"));
        assert!(place(&["--local", "--env", "production"]).is_err());
        assert!(place(&["--persist-to", "x"]).is_err());
    }

    #[test]
    fn profiles_are_checked_written_shown_and_deleted() {
        let dir = std::env::temp_dir().join(format!("profiles-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.to_string_lossy().to_string();
        let file = dir.join("p.json");
        std::fs::write(
            &file,
            r#"{"profiles":[{"match":"a","gain":-1,"version":1}]}"#,
        )
        .unwrap();
        let file = file.to_string_lossy().to_string();
        let refused = profiles(&strings(&["put", &file, "--spin-state", &state])).unwrap_err();
        assert!(refused.contains("refuse"), "{refused}");
        std::fs::write(
            &file,
            "{\"profiles\": [{\"match\": \"lab-*\", \"gain\": 1.0, \"offset\": -0.3, \"version\": 2}]}",
        )
        .unwrap();
        profiles(&strings(&["put", &file, "--spin-state", &state])).unwrap();
        let store = Store::Spin {
            db: dir.join("sqlite_key_value.db"),
        };
        let stored = store.get(PROFILES_KEY).unwrap().unwrap();
        assert!(!stored.contains(' '), "stored compact: {stored}");
        assert_eq!(
            edge_enrich::domain::calibration::Profiles::parse(&stored)
                .unwrap()
                .len(),
            1
        );
        profiles(&strings(&["delete", "--spin-state", &state])).unwrap();
        assert_eq!(store.get(PROFILES_KEY).unwrap(), None);
        std::fs::remove_dir_all(&dir).ok();
    }
}
