//! The README's figures, rendered from the committed `bench/results.json`, so that the two
//! cannot disagree: a full bench run rewrites the block between the markers, and a test fails
//! when the README's block is not what the committed results render to.

use serde_json::Value;

pub const BEGIN: &str =
    "<!-- figures: rendered from bench/results.json by the bench (xtask/src/bench/readme.rs) -->";
pub const END: &str = "<!-- /figures -->";

fn runs(section: &Value) -> &[Value] {
    section["runs"].as_array().map_or(&[], Vec::as_slice)
}

fn run<'a>(section: &'a Value, name: &str, connections: u64) -> Option<&'a Value> {
    runs(section)
        .iter()
        .find(|r| r["name"] == name && r["connections"] == connections)
}

/// `12,345`: a count as the README writes it.
fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.round());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// One host's row: 2xx requests/s at 100 and 10 connections, each against its hello-world
/// floor, readings per collector request, the 2xx p99 and (Workers) the bill.
fn host_row(label: &str, section: &Value, floor: &str) -> Option<String> {
    let (a, b) = (
        run(section, "edge-enrich", 100)?,
        run(section, "edge-enrich", 10)?,
    );
    let rps = |r: &Value| r["ok_rps"].as_f64().unwrap_or(0.0);
    let vs = |r: &Value, c: u64| {
        run(section, floor, c)
            .and_then(|h| h["ok_rps"].as_f64())
            .filter(|h| *h > 0.0)
            .map_or("-".into(), |h| format!("{:.2}x", rps(r) / h))
    };
    let batch = |r: &Value| {
        r["delivery"]["readings_per_batch"]
            .as_f64()
            .map_or("-".into(), |v| format!("{v:.1}"))
    };
    let p99 = |r: &Value| {
        r["ok_p99_ms"]
            .as_f64()
            .map_or("-".into(), |v| format!("{v:.1}"))
    };
    let cost = match a["usd_per_million_readings"]["total"].as_f64() {
        Some(usd) => format!("${usd:.2} per million readings"),
        None => String::new(),
    };
    Some(format!(
        "| {label} | {} / {} | {} / {} | {} / {} | {} / {} | {cost} |",
        thousands(rps(a)),
        thousands(rps(b)),
        vs(a, 100),
        vs(b, 10),
        batch(a),
        batch(b),
        p99(a),
        p99(b),
    ))
}

/// The fleet phase: the same load over 1,000 to 1,000,000 devices, per host.
fn fleet_rows(fleet: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for host in ["workerd", "spin"] {
        let Some(rows) = fleet[host]["rows"].as_array() else {
            continue;
        };
        let cell = |devices: u64, f: &dyn Fn(&Value) -> String| {
            rows.iter()
                .find(|r| r["devices"] == devices)
                .map_or("-".into(), f)
        };
        let rps = |r: &Value| thousands(r["load"]["ok_rps"].as_f64().unwrap_or(0.0));
        let p99 = |r: &Value| {
            r["load"]["ok_p99_ms"]
                .as_f64()
                .map_or("-".into(), |p| format!("{p:.1}"))
        };
        let billed = |r: &Value| {
            let b = &r["load"]["billed_per_1000_readings"];
            match (
                b["do_requests"].as_f64(),
                r["sqlite_statements_per_request"].as_f64(),
            ) {
                (Some(req), _) => format!(
                    "{:.3} DO requests, {:.3} rows written",
                    req / 1000.0,
                    b["rows_written"].as_f64().unwrap_or(0.0) / 1000.0
                ),
                (None, Some(s)) => format!("{s:.2} SQLite statements per request"),
                _ => "-".into(),
            }
        };
        let memory = fleet[host]["bytes_per_tracked_device"]
            .as_f64()
            .map_or("-".into(), |b| format!("{b:.0} B"));
        out.push(format!(
            "| {host} | {} / {} / {} | {} / {} / {} | {memory} | {} |",
            cell(1_000, &rps),
            cell(100_000, &rps),
            cell(1_000_000, &rps),
            cell(1_000, &p99),
            cell(100_000, &p99),
            cell(1_000_000, &p99),
            cell(1_000_000, &billed),
        ));
    }
    out
}

/// The block between [`BEGIN`] and [`END`], from a whole run's results.
pub fn render(results: &Value) -> String {
    let mut out = vec![
        BEGIN.to_owned(),
        format!(
            "Figures of the committed run (`{}`; {} cores, loopback, `oha`):",
            results["command"].as_str().unwrap_or("scripts/bench.sh"),
            results["machine"]["cpus"].as_str().unwrap_or("?"),
        ),
        String::new(),
        "| host | 2xx requests/s at 100 / 10 connections | vs its hello-world floor | readings per collector request | 2xx p99 ms | cost |".into(),
        "|---|---|---|---|---|---|".into(),
    ];
    let hosts = [
        (
            "workerd (Workers runtime)",
            &results["workers"]["workerd"],
            "hello-rust",
        ),
        (
            "`wrangler dev`",
            &results["workers"]["wrangler-dev"],
            "hello-rust",
        ),
        (
            "`wasmtime serve`, instance reuse",
            &results["wasmtime"]["reuse"],
            "hello-component",
        ),
        (
            "`spin up`, spin flavour",
            &results["spin"],
            "hello-component",
        ),
    ];
    out.extend(
        hosts
            .iter()
            .filter_map(|(label, section, floor)| host_row(label, section, floor)),
    );
    let workerd = &results["workers"]["workerd"];
    if let (Some(edge), Some(js)) = (
        run(workerd, "edge-enrich", 100)
            .and_then(|r| r["usd_per_million_readings"]["total"].as_f64()),
        run(workerd, "js-peer", 100).and_then(|r| r["usd_per_million_readings"]["total"].as_f64()),
    ) {
        out.push(String::new());
        out.push(format!(
            "On Workers that is ${edge:.2} per million readings at 100 connections, {:.0}x less than the JavaScript Worker a user would write (`bench/peers/js-worker`, ${js:.2}).",
            js / edge
        ));
    }
    let sizes = &results["sizes"];
    let core = &results["core"]["wasm"];
    if let (Some(kib), Some(gz)) = (
        sizes["worker_upload_kib"].as_f64(),
        sizes["worker_upload_gzip_kib"].as_f64(),
    ) {
        out.push(String::new());
        out.push(format!(
            "The core costs {:.1} µs per GET reading inside wasm. Worker upload {kib:.1} KiB / {gz:.1} KiB gzip ({}); spin component {} KB, portable {} KB.",
            core["get_ns_per_reading"].as_f64().unwrap_or(0.0) / 1000.0,
            if gz * 1024.0 <= 250_000.0 {
                "within its 250 KB target".to_owned()
            } else {
                format!("{:.1} KB: **over its 250 KB target**", gz * 1.024)
            },
            sizes["spin_component"]["bytes"].as_f64().map_or("-".into(), |b| format!("{:.0}", b / 1000.0)),
            sizes["wasi_http_component"]["bytes"].as_f64().map_or("-".into(), |b| format!("{:.0}", b / 1000.0)),
        ));
    }
    let fleet = fleet_rows(&results["fleet"]);
    if !fleet.is_empty() {
        out.push(String::new());
        out.push(
            "A fleet (the same load from a random device of 1,000, 100,000 and 1,000,000, 100 connections):".into(),
        );
        out.push(String::new());
        out.push("| host | 2xx requests/s | 2xx p99 ms | memory per device held | billed per reading at 1,000,000 |".into());
        out.push("|---|---|---|---|---|".into());
        out.extend(fleet);
    }
    out.push(END.to_owned());
    out.join("\n")
}

/// `readme` with its figures block replaced by `block`.
pub fn splice(readme: &str, block: &str) -> Result<String, String> {
    let start = readme.find(BEGIN).ok_or("README.md has no figures block")?;
    let end = readme[start..]
        .find(END)
        .map(|i| start + i + END.len())
        .ok_or("README.md's figures block is not closed")?;
    Ok(format!("{}{block}{}", &readme[..start], &readme[end..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> String {
        std::fs::read_to_string(crate::harness::repo_root().join(path)).unwrap()
    }

    /// The figures the README quotes are the committed run's: rerun the bench (or
    /// `cargo xtask readme-figures`) after changing either.
    #[test]
    fn the_readme_quotes_the_committed_results() {
        let results: Value = serde_json::from_str(&file("bench/results.json")).unwrap();
        let readme = file("README.md");
        let block = render(&results);
        assert!(block.contains("| workerd (Workers runtime) |"), "{block}");
        assert_eq!(
            splice(&readme, &block).unwrap(),
            readme,
            "README.md's figures are not bench/results.json's: run `cargo xtask readme-figures`"
        );
    }

    #[test]
    fn counts_are_written_with_thousands() {
        assert_eq!(thousands(5330.4), "5,330");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_000_000.0), "1,000,000");
    }
}
