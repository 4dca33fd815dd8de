//! The sinks other than the default envelope, end to end: `ndjson` into the reference collector
//! and `influx` into a real InfluxDB, queried back with InfluxQL and compared value by value.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::*;

/// Readings sent through the edge at `base`, whose collector takes NDJSON: all stored once.
pub fn ndjson_round_trip(base: &str, collector: &Collector) {
    let mut accepted = BTreeSet::new();
    for i in 0..5 {
        accepted.extend(accepted_ids(&get(&format!(
            "{base}/v1/readings?device_id=nd-{i}&temp={i}.5"
        ))));
    }
    let body: String = (0..30)
        .map(|i| format!("{{\"device_id\":\"nd-batch\",\"temp\":{i},\"seq\":{i}}}\n"))
        .collect();
    accepted.extend(accepted_ids(&post(
        &format!("{base}/v1/readings"),
        "application/x-ndjson",
        &body,
    )));
    collector.assert_stored_exactly(&accepted, Duration::from_secs(30));
}

/// Readings sent through the edge at `base`, whose sink is `influx` writing to `influx`: every
/// one comes back from InfluxQL as one point with the answer's values, tags and time.
pub fn influx_round_trip(base: &str, influx: &Influx) {
    let mut sent: Vec<serde_json::Value> = Vec::new();
    // Ids with every punctuation the id rules allow, mixed units, a calibrated device.
    for (i, (device, temp, unit)) in [
        ("plain-1", "21.5", "C"),
        ("site:berlin.room_2-a", "70.7", "F"),
        ("v1.2.3", "295.15", "K"),
        ("greenhouse-7", "20", "C"),
        ("lab-ref-01", "-40", "F"),
    ]
    .iter()
    .enumerate()
    {
        let r = get(&format!(
            "{base}/v1/readings?device_id={device}&temp={temp}&unit={unit}&seq={i}"
        ));
        assert_eq!(r.status, 200, "{}", r.body);
        sent.push(r.json());
    }
    // A batch of one device's readings, each timed by the device.
    let body: Vec<String> = (0..20)
        .map(|i| {
            format!(
                r#"{{"device_id":"batched","temp":{}.25,"ts":{},"seq":{i}}}"#,
                10 + i,
                now_ms() - 60_000 + i * 1000
            )
        })
        .collect();
    let r = post(
        &format!("{base}/v1/readings"),
        "application/json",
        &format!("[{}]", body.join(",")),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    sent.extend(r.json().as_array().cloned().unwrap_or_default());

    let q = "SELECT temp_c, raw, device_id, edge_node FROM temperature";
    let rows = wait_for(Duration::from_secs(30), "every point in InfluxDB", || {
        let rows = influx.rows(q);
        (rows.len() >= sent.len()).then_some(rows)
    });
    assert_eq!(rows.len(), sent.len(), "one point per reading: {rows:?}");
    for reading in &sent {
        let time = reading
            .get("ts")
            .and_then(|t| t.as_u64())
            .unwrap_or_else(|| reading["received_at_ms"].as_u64().unwrap());
        let device = reading["device_id"].as_str().unwrap();
        let row = rows
            .iter()
            .find(|r| r["device_id"] == device && r["time"].as_u64() == Some(time))
            .unwrap_or_else(|| panic!("no point for {device} at {time}: {rows:?}"));
        assert_eq!(
            row["temp_c"].as_f64(),
            reading["temp_c"].as_f64(),
            "{device}"
        );
        assert_eq!(
            row["raw"].as_f64(),
            reading["raw"]["value"].as_f64(),
            "{device}"
        );
        assert_eq!(row["edge_node"], reading["edge"]["node"], "{device}");
    }
    // Tags are tags (indexed, groupable), not fields.
    let tags = influx.query("SHOW TAG KEYS FROM temperature");
    let keys: Vec<&str> = tags["results"][0]["series"][0]["values"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v[0].as_str())
        .collect();
    assert!(
        keys.contains(&"device_id") && keys.contains(&"edge_node"),
        "{tags}"
    );
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// One batch of 50 readings in which InfluxDB refuses one point (older than the database's
/// retention: a device whose clock was reset to 2001): the other 49 are queried back, and the
/// refused reading, alone, is the only dead letter.
pub fn influx_refused_point(base: &str, influx: &Influx, log: &dyn Fn() -> String) {
    let dead_before = super::hostile::dead_letter_lines(&log());
    let mut items: Vec<String> = (0..49)
        .map(|i| format!(r#"{{"device_id":"fleet-{i}","temp":{i}.5}}"#))
        .collect();
    items.insert(
        20,
        r#"{"device_id":"clock-reset","temp":1.5,"ts":978307200000}"#.into(),
    );
    let r = post(
        &format!("{base}/v1/readings"),
        "application/json",
        &format!("[{}]", items.join(",")),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    // A time past what any sink stores is refused at the edge, before it can poison a batch.
    let r = post(
        &format!("{base}/v1/readings"),
        "application/json",
        r#"{"device_id":"far-future","temp":1,"ts":9999999999999}"#,
    );
    assert_eq!(r.status, 400, "{}", r.body);

    let q = "SELECT temp_c, device_id FROM temperature WHERE device_id =~ /^fleet-/";
    let rows = wait_for(
        Duration::from_secs(30),
        "the 49 other points in InfluxDB",
        || {
            let rows = influx.rows(q);
            (rows.len() >= 49).then_some(rows)
        },
    );
    assert_eq!(rows.len(), 49, "{rows:?}");
    let dead = super::hostile::await_dead_letters(log, &dead_before, 1);
    assert_eq!(dead.len(), 1, "{dead:#?}");
    assert!(
        dead[0].contains("\"readings\":\"1\""),
        "only the refused reading: {}",
        dead[0]
    );
    assert!(dead[0].contains("\"status\":\"400\""), "{}", dead[0]);
    assert!(influx
        .rows(
            "SELECT * FROM temperature WHERE device_id = 'clock-reset' OR device_id = 'far-future'"
        )
        .is_empty());
}

/// Both sinks, each on a fresh host (`start(dir, vars)`): `ndjson` into the reference collector,
/// `influx` into a real InfluxDB.
pub fn ndjson_and_influx<H: EdgeHost>(name: &str, start: impl Fn(&Path, &[(&str, &str)]) -> H) {
    let dir = scratch(&format!("{name}-sink-ndjson"));
    let collector = Collector::start(&dir);
    let ingest = collector.ingest_url();
    let vars = [
        ("COLLECTOR_URL", ingest.as_str()),
        ("AUTH_MODE", "off"),
        ("SINK_FORMAT", "ndjson"),
        ("REGISTRY_MODE", "optional"),
        ("REGISTRY", TAGGED_REGISTRY),
    ];
    let host = start(&dir, &vars);
    ndjson_round_trip(&host.base_url(), &collector);
    // A registered device's tags reach the collector verbatim, in NDJSON too.
    let r = get(&format!(
        "{}/v1/readings?device_id=tagged-1&temp=1",
        host.base_url()
    ));
    let id = accepted_ids(&r).remove(0);
    let stored = wait_for(Duration::from_secs(30), "the tagged reading stored", || {
        collector
            .readings_of("tagged-1")
            .into_iter()
            .find(|v| v["id"] == id.as_str())
    });
    assert_eq!(stored["device"], r.json()["device"]);
    drop(host);

    let dir = scratch(&format!("{name}-sink-influx"));
    let influx = Influx::start(&dir);
    let write = influx.write_url();
    let vars = [
        ("COLLECTOR_URL", write.as_str()),
        ("AUTH_MODE", "off"),
        ("SINK_FORMAT", "influx"),
        ("EDGE_NODE", "influx-node"),
    ];
    let host = start(&dir, &vars);
    influx_round_trip(&host.base_url(), &influx);
    influx_refused_point(&host.base_url(), &influx, &|| host.log());
    drop(host);

    // Registry tags: the chosen ones become tags, in JSON they travel verbatim.
    let dir = scratch(&format!("{name}-sink-influx-tags"));
    let vars = [
        ("COLLECTOR_URL", write.as_str()),
        ("AUTH_MODE", "off"),
        ("SINK_FORMAT", "influx"),
        ("REGISTRY_MODE", "optional"),
        ("REGISTRY", TAGGED_REGISTRY),
        ("INFLUX_TAG_KEYS", "site,building"),
    ];
    let host = start(&dir, &vars);
    influx_registry_tags(&host.base_url(), &influx);
}

/// One device's registry record, for the sinks' tag checks.
const TAGGED_REGISTRY: &str = r#"{"tagged-1":{"status":"active","tags":{"site":"glass house 1","building":"b7","owner":"ops"}}}"#;

/// With `INFLUX_TAG_KEYS=site,building`: the tagged device's point carries those two as tags
/// (escaped), not `owner`; a device without a record gets no extra tags.
pub fn influx_registry_tags(base: &str, influx: &Influx) {
    let r = get(&format!("{base}/v1/readings?device_id=tagged-1&temp=12.5"));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["device"]["tags"]["owner"], "ops");
    let r = get(&format!(
        "{base}/v1/readings?device_id=untagged-1&temp=13.5"
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let q = "SELECT temp_c, site, building FROM temperature WHERE device_id = 'tagged-1' OR device_id = 'untagged-1'";
    let rows = wait_for(Duration::from_secs(30), "both points in InfluxDB", || {
        let rows = influx.rows(q);
        (rows.len() >= 2).then_some(rows)
    });
    let tagged = rows
        .iter()
        .find(|r| r["temp_c"].as_f64() == Some(12.5))
        .expect("tagged point");
    assert_eq!(tagged["site"], "glass house 1", "{rows:?}");
    assert_eq!(tagged["building"], "b7", "{rows:?}");
    let untagged = rows
        .iter()
        .find(|r| r["temp_c"].as_f64() == Some(13.5))
        .expect("untagged point");
    assert!(untagged["site"].is_null(), "{rows:?}");
    let tags = influx.query("SHOW TAG KEYS FROM temperature");
    let text = tags.to_string();
    assert!(
        text.contains("\"site\"") && text.contains("\"building\""),
        "{tags}"
    );
    assert!(
        !text.contains("\"owner\""),
        "only the chosen keys are tags: {tags}"
    );
}
