//! `cargo xtask <task>`: developer tasks that drive real processes.
//!   bench [--duration SECONDS] [--connections 100,10] [--only core|sizes|workers|workerd|wrangler-dev|wasmtime|registry|spin]
//!   sim [--url URL] [--devices N] [--rate R] [--duration S] [--auth token|hmac] [--sign-host HOST] [--check COLLECTOR]
//!   mint-token DEVICE_ID [--key-version N]    a device's key / bearer token
//!   sign DEVICE_ID METHOD URL [BODY_FILE [CONTENT_TYPE]] [--key-version N]
//!                                             an `hmac`-mode Authorization header for now
//!   readme-figures                            README.md's figures from bench/results.json
//!   keygen, sign-jwt, devices, profiles       device key pairs, JWTs, registry records,
//!                                             calibration profiles (fleet.rs)
//! The master secret is read from the environment (AUTH_SECRET), never from the command line,
//! so it stays out of shell history and process listings.

use std::time::{SystemTime, UNIX_EPOCH};

use edge_enrich::domain::reading::DeviceId;
use edge_enrich::http::auth::{sign, MasterSecret, SignedParts};
use xtask::{bench, fleet, sim};

const USAGE: &str = "usage: cargo xtask bench [--duration SECONDS] [--connections 100,10] [--only core|sizes|workers|workerd|wrangler-dev|wasmtime|registry|spin]
       cargo xtask sim [--url URL] [--devices N] [--rate READINGS_PER_S] [--duration S] [--threads T] [--auth token|hmac] [--sign-host HOST] [--check COLLECTOR_URL]
       AUTH_SECRET=... cargo xtask mint-token DEVICE_ID [--key-version N]
       AUTH_SECRET=... cargo xtask sign DEVICE_ID METHOD URL [BODY_FILE [CONTENT_TYPE]] [--key-version N]
           (URL: https://edge.example.com/v1/readings?...; CONTENT_TYPE: application/json by default
           with a body, none without: both are signed, with the host; N: the key_version of the
           device's registry record, 0 without one)
";

fn fail(message: &str) -> ! {
    eprintln!("xtask: {message}");
    std::process::exit(2);
}

fn device_key(device: &str, key_version: u32) -> String {
    let secret = std::env::var("AUTH_SECRET")
        .unwrap_or_else(|_| fail("set AUTH_SECRET to the deployment's master secret"));
    let secret = MasterSecret::new(&secret).unwrap_or_else(|e| fail(&e));
    if let Err(issue) = DeviceId::parse(device) {
        fail(&format!("device id {device:?}: {}", issue.detail));
    }
    secret.device_key_v(device, key_version)
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let fleet_task = matches!(
        args.first().map(String::as_str),
        Some("keygen" | "sign-jwt" | "devices" | "profiles")
    );
    // `--key-version N` (mint-token, sign), taken out before the positional arguments.
    let mut key_version = 0;
    if !fleet_task {
        if let Some(i) = args.iter().position(|a| a == "--key-version") {
            key_version = args
                .get(i + 1)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| fail("--key-version takes a number"));
            args.drain(i..i + 2);
        }
    }
    let arg = |i: usize| args.get(i).map(String::as_str);
    match arg(0) {
        Some("bench") => match bench::Options::parse(&args[1..]) {
            Ok(options) => bench::run(&options),
            Err(e) => fail(&format!("bench: {e}")),
        },
        Some("sim") => match sim::Options::parse(&args[1..]).and_then(|o| sim::run(&o)) {
            Ok(()) => {}
            Err(e) => {
                eprintln!("xtask sim: {e}");
                std::process::exit(1);
            }
        },
        Some("mint-token") if args.len() == 2 => println!("{}", device_key(&args[1], key_version)),
        Some("keygen") => match fleet::keygen(&args[1..]) {
            Ok(jwk) => println!("{jwk}"),
            Err(e) => fail(&e),
        },
        Some("sign-jwt") => match fleet::sign_jwt(&args[1..]) {
            Ok(token) => println!("{token}"),
            Err(e) => fail(&e),
        },
        Some("devices") => {
            if let Err(e) = fleet::devices(&args[1..]) {
                fail(&e)
            }
        }
        Some("readme-figures") => {
            if let Err(e) = bench::write_readme_figures() {
                fail(&e)
            }
        }
        Some("profiles") => {
            if let Err(e) = fleet::profiles(&args[1..]) {
                fail(&e)
            }
        }
        Some("sign") if (4..=6).contains(&args.len()) => {
            let key = device_key(&args[1], key_version);
            let body = match arg(4) {
                Some(file) => std::fs::read(file).unwrap_or_else(|e| fail(&format!("{file}: {e}"))),
                None => Vec::new(),
            };
            let content_type = match (arg(4), arg(5)) {
                (_, Some(ct)) => ct,
                (Some(_), None) => "application/json",
                (None, None) => "",
            };
            let Some((host, target)) = args[3]
                .split_once("://")
                .and_then(|(_, rest)| rest.find('/').map(|i| rest.split_at(i)))
            else {
                fail("URL must look like https://edge.example.com/v1/readings?...")
            };
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            let parts = SignedParts {
                method: &args[2],
                host,
                path,
                query,
                content_type,
                body: &body,
                device_hint: None,
            };
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            println!("{}", sign(&key, &args[1], &parts, now));
        }
        _ => fail(&format!("{USAGE}{}", fleet::USAGE)),
    }
}
