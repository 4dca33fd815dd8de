//! The deployment manifests and the configuration table (`config::KEYS`) stay in step: the same
//! keys, and the same defaults, in wrangler.toml's `[vars]` and spin.toml's variables; and the
//! manifests deploy as they are: complete environments, no placeholder ids, no secret files in git.

use edge_enrich::config::{Kind, KEYS};

/// `name = value` lines of a manifest section, comments and blank lines left out.
fn section<'a>(text: &'a str, header: &str) -> Vec<(&'a str, &'a str)> {
    let mut lines = text.lines().skip_while(|l| l.trim() != header);
    assert!(lines.next().is_some(), "no {header}");
    lines
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect()
}

fn manifest(name: &str) -> String {
    std::fs::read_to_string(format!("{}/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every key the code reads is a variable of the Spin component, and nothing else is.
#[test]
fn spin_component_variables_are_the_config_keys() {
    let manifest = manifest("spin.toml");
    let mut variables: Vec<&str> = section(&manifest, "[component.edge-enrich.variables]")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    variables.sort_unstable();
    let mut keys: Vec<String> = KEYS
        .iter()
        .filter(|k| !k.workers_only)
        .map(|k| k.name.to_ascii_lowercase())
        .collect();
    keys.sort_unstable();
    assert_eq!(variables, keys);
}

/// Every number the manifests set by default is the table's default: one place for defaults.
#[test]
fn manifest_defaults_are_the_table_defaults() {
    let wrangler = manifest("wrangler.toml");
    let vars = section(&wrangler, "[vars]");
    let spin = manifest("spin.toml");
    let spin_vars = section(&spin, "[variables]");
    let mut checked = 0;
    for key in KEYS {
        if !matches!(key.kind, Kind::Integer { .. } | Kind::Decimal { .. }) {
            continue;
        }
        let want = format!("\"{}\"", key.default_text());
        if let Some((_, v)) = vars.iter().find(|(k, _)| *k == key.name) {
            assert_eq!(*v, want, "wrangler.toml [vars] {}", key.name);
            checked += 1;
        }
        let lower = key.name.to_ascii_lowercase();
        if let Some((_, v)) = spin_vars.iter().find(|(k, _)| *k == lower) {
            assert!(
                v.contains(&format!("default = {want}")),
                "spin.toml {lower}: {v}, the table says {want}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 20,
        "only {checked} defaults found in the manifests"
    );
}

/// Every entry of a manifest's vars section is a key the code reads (a typo would be silently
/// ignored).
fn assert_read_by_the_code(header: &str, vars: &[(&str, &str)]) {
    for (var, _) in vars {
        assert!(
            KEYS.iter().any(|k| k.name == *var),
            "{header} {var} is not read by the code"
        );
    }
}

#[test]
fn wrangler_vars_are_config_keys() {
    let manifest = manifest("wrangler.toml");
    let vars = section(&manifest, "[vars]");
    assert!(vars.iter().any(|(k, _)| *k == "AUTH_MODE"));
    assert_read_by_the_code("[vars]", &vars);
}

/// The environments a deploy names (`--env staging|production`): wrangler inherits neither vars
/// nor bindings, so each repeats the Batcher and both namespaces, and sets only keys the code
/// reads.
#[test]
fn each_deployed_environment_is_complete() {
    let manifest = manifest("wrangler.toml");
    for env in ["staging", "production"] {
        let header = format!("[env.{env}.vars]");
        let vars = section(&manifest, &header);
        assert_read_by_the_code(&header, &vars);
        for required in ["COLLECTOR_URL", "AUTH_MODE"] {
            assert!(
                vars.iter().any(|(k, _)| *k == required),
                "{header} must set {required}"
            );
        }
        let auth = vars.iter().find(|(k, _)| *k == "AUTH_MODE").unwrap().1;
        assert_ne!(auth, "\"off\"", "{env} deploys with authentication");
        let batcher = format!("[[env.{env}.durable_objects.bindings]]");
        assert!(
            section(&manifest, &batcher).contains(&("class_name", "\"Batcher\"")),
            "{env}: no Batcher binding"
        );
        let namespaces = format!("[[env.{env}.kv_namespaces]]");
        let bindings: Vec<&str> = manifest
            .split(namespaces.as_str())
            .skip(1)
            .filter_map(|part| {
                part.lines()
                    .skip(1)
                    .take_while(|l| !l.starts_with('['))
                    .find_map(|l| l.strip_prefix("binding = "))
            })
            .collect();
        assert_eq!(bindings, ["\"PROFILES\"", "\"DEVICES\""], "{env}");
    }
}

/// A KV binding either has no id (wrangler creates the namespace on the first deploy and keeps it
/// linked) or a real one (32 hex digits): a made-up name passes `--dry-run` and fails a deploy.
#[test]
fn kv_bindings_carry_no_placeholder_ids() {
    let manifest = manifest("wrangler.toml");
    let mut checked = 0;
    for line in manifest.lines().map(str::trim) {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !matches!(key.trim(), "id" | "preview_id") {
            continue;
        }
        let id = value.trim().trim_matches('"');
        assert!(
            id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
            "wrangler.toml: {line} is not a namespace id (remove it: wrangler provisions one)"
        );
        checked += 1;
    }
    let bindings = manifest.matches("kv_namespaces]]").count();
    assert!(
        bindings >= 6,
        "{bindings} KV bindings found ({checked} with ids)"
    );
}

/// Local secrets and Spin's state stay out of git; the example of the secrets file is in it.
#[test]
fn local_secrets_are_ignored_by_git() {
    let ignore = manifest(".gitignore");
    let lines: Vec<&str> = ignore.lines().map(str::trim).collect();
    for needed in [".dev.vars", ".spin/", ".env", "!.dev.vars.example"] {
        assert!(lines.contains(&needed), ".gitignore lacks {needed}");
    }
    let example = manifest(".dev.vars.example");
    assert!(example.lines().any(|l| l == "AUTH_SECRET="), "{example}");
    // Where git is at hand, ask it (a later pattern could re-include a file).
    if let Ok(out) = std::process::Command::new("git")
        .args([
            "check-ignore",
            "--no-index",
            ".dev.vars",
            ".spin/sqlite_key_value.db",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
    {
        if out.status.code() != Some(128) {
            let ignored = String::from_utf8_lossy(&out.stdout);
            assert_eq!(ignored.lines().count(), 2, "git ignores only: {ignored}");
        }
    }
}

/// One version a user can pin: the crate's, in spin.toml, the API document and the CHANGELOG's
/// newest release.
#[test]
fn the_version_is_one_everywhere() {
    let version = env!("CARGO_PKG_VERSION");
    let spin = manifest("spin.toml");
    assert!(
        section(&spin, "[application]").contains(&("version", &format!("\"{version}\""))),
        "spin.toml [application] version is not {version}"
    );
    let api: serde_json::Value = serde_json::from_str(&manifest("openapi/openapi.json")).unwrap();
    assert_eq!(
        api["info"]["version"], version,
        "openapi/openapi.json info.version"
    );
    let changelog = manifest("CHANGELOG.md");
    let newest = changelog
        .lines()
        .find(|l| l.starts_with("## "))
        .expect("a release in CHANGELOG.md");
    assert!(
        newest.starts_with(&format!("## {version} (")),
        "CHANGELOG.md's newest release is {newest:?}, the crate is {version}"
    );
}
