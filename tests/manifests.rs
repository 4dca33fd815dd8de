//! The deployment manifests and the configuration keys the code reads stay in step.

use edge_enrich::config::KEYS;

fn section<'a>(text: &'a str, header: &str) -> Vec<&'a str> {
    text.split(header)
        .nth(1)
        .unwrap_or_else(|| panic!("no {header}"))
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map(|l| l.split('=').next().unwrap().trim())
        .collect()
}

/// Keys only the Workers adapter reads.
const WORKERS_ONLY: &[&str] = &["BATCHER_SHARDS"];

/// Every key the code reads is a variable of the Spin component, and nothing else is.
#[test]
fn spin_component_variables_are_the_config_keys() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/spin.toml")).unwrap();
    let mut variables = section(&manifest, "[component.edge-enrich.variables]");
    variables.sort_unstable();
    let mut keys: Vec<String> = KEYS
        .iter()
        .filter(|(k, _)| !WORKERS_ONLY.contains(k))
        .map(|(k, _)| k.to_ascii_lowercase())
        .collect();
    keys.sort_unstable();
    assert_eq!(variables, keys);
}

/// Every wrangler `[vars]` entry is a key the code reads (a typo would be silently ignored).
#[test]
fn wrangler_vars_are_config_keys() {
    let manifest =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/wrangler.toml")).unwrap();
    let vars = section(&manifest, "[vars]");
    assert!(vars.contains(&"AUTH_MODE"));
    for var in vars {
        assert!(
            KEYS.iter().any(|(k, _)| *k == var),
            "{var} is not read by the code"
        );
    }
}
