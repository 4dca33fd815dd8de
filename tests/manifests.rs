//! The deployment manifests and the configuration table (`config::KEYS`) stay in step: the same
//! keys, and the same defaults, in wrangler.toml's `[vars]` and spin.toml's variables.

use edge_enrich::config::{Kind, KEYS};

/// `name = value` lines of a manifest section, comments and blank lines left out.
fn section<'a>(text: &'a str, header: &str) -> Vec<(&'a str, &'a str)> {
    text.split(header)
        .nth(1)
        .unwrap_or_else(|| panic!("no {header}"))
        .lines()
        .skip(1)
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

/// Every wrangler `[vars]` entry is a key the code reads (a typo would be silently ignored).
#[test]
fn wrangler_vars_are_config_keys() {
    let manifest = manifest("wrangler.toml");
    let vars = section(&manifest, "[vars]");
    assert!(vars.iter().any(|(k, _)| *k == "AUTH_MODE"));
    for (var, _) in vars {
        assert!(
            KEYS.iter().any(|k| k.name == var),
            "{var} is not read by the code"
        );
    }
}
