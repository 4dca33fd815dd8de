//! `POST /v1/readings` bodies: a JSON object, a JSON array of objects, or NDJSON.
//! A request is accepted or refused whole; the problem lists every bad reading by index.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::domain::reading::{
    parse_device_ts, parse_seq, DeviceId, FieldIssue, Reading, ReadingDraft,
};
use crate::http::problem::{FieldError, Problem, ProblemType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Ndjson,
}

impl BodyFormat {
    /// Reads a `Content-Type` header. Only UTF-8 is accepted (JSON's only interoperable
    /// encoding, RFC 8259 §8.1).
    pub fn from_content_type(header: Option<&str>) -> Result<Self, Problem> {
        let header = header.unwrap_or("");
        let mut parts = header.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let format = match media.as_str() {
            "application/json" => Self::Json,
            "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Self::Ndjson,
            "" => {
                return Err(Problem::new(
                    ProblemType::UnsupportedMediaType,
                    "a Content-Type is required: application/json or application/x-ndjson",
                ))
            }
            _ => {
                return Err(Problem::new(
                    ProblemType::UnsupportedMediaType,
                    "Content-Type must be application/json or application/x-ndjson",
                ))
            }
        };
        for param in parts {
            if let Some((k, v)) = param.split_once('=') {
                let v = v.trim().trim_matches('"');
                if k.trim().eq_ignore_ascii_case("charset") && !v.eq_ignore_ascii_case("utf-8") {
                    return Err(Problem::new(
                        ProblemType::UnsupportedMediaType,
                        "only charset=utf-8 is supported",
                    ));
                }
            }
        }
        Ok(format)
    }
}

/// How deep a body may nest: an array of readings whose fields may hold one level of objects or
/// arrays (ignored unknown fields). Anything deeper is refused before the parser recurses.
pub const MAX_NESTING: usize = 4;

/// Counts bracket depth outside strings in one pass, so a body of `[[[[...` costs a scan rather
/// than a deep parse.
fn check_nesting(text: &str, format: BodyFormat) -> Result<(), Problem> {
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for b in text.bytes() {
        if b == b'\n' && format == BodyFormat::Ndjson {
            // Each NDJSON line starts afresh, so a truncated line carries nothing over.
            (depth, in_string, escaped) = (0, false, false);
            continue;
        }
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_NESTING {
                    return Err(Problem::new(
                        ProblemType::InvalidRequest,
                        format!("the body nests deeper than {MAX_NESTING} levels"),
                    ));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}

/// Unknown fields one reading may carry. They are skipped, but a key given twice must still be
/// refused (duplicate keys are ambiguous JSON), and that check is a scan of the keys seen: a cap
/// keeps it, and the whole parse, linear in the body however many keys a hostile body holds.
pub const MAX_UNKNOWN_FIELDS: usize = 32;

/// The first reading's `device_id`, found without parsing the body: one pass that tracks
/// strings and nesting, and takes the first key `"device_id"` at a reading's level whose value
/// is a string without escapes. In `token` mode this names the device whose token is checked
/// before the body is parsed, for clients that do not name it in the query. `None` when there
/// is no such key (the request is then refused as unauthenticated). Parsing later checks that
/// every reading is of this device.
pub fn first_device_id(body: &[u8], format: BodyFormat) -> Option<DeviceId> {
    // A UTF-8 byte order mark, as the parser allows one (`parse_readings`).
    let body = body.strip_prefix(b"\xef\xbb\xbf").unwrap_or(body);
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    // Readings are the top-level objects (NDJSON lines, a lone object) or an array's items.
    let reading_depth = if body[start] == b'[' && format == BodyFormat::Json {
        2
    } else {
        1
    };
    let (mut depth, mut i) = (0usize, start);
    while i < body.len() {
        match body[i] {
            b'\n' if format == BodyFormat::Ndjson => depth = 0,
            b'[' | b'{' => depth += 1,
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'"' => {
                let end = string_end(body, i)?;
                let is_key = depth == reading_depth
                    && &body[i + 1..end] == b"device_id"
                    && next_non_space(body, end + 1) == Some(b':');
                if is_key {
                    let at = skip_space(body, skip_space(body, end + 1) + 1);
                    if body.get(at) != Some(&b'"') {
                        return None;
                    }
                    let value_end = string_end(body, at)?;
                    let value = std::str::from_utf8(&body[at + 1..value_end]).ok()?;
                    return if value.contains('\\') {
                        None
                    } else {
                        DeviceId::parse(value).ok()
                    };
                }
                i = end;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// The index of the quote closing the string that opens at `open`.
fn string_end(body: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn skip_space(body: &[u8], mut i: usize) -> usize {
    while body.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

fn next_non_space(body: &[u8], i: usize) -> Option<u8> {
    body.get(skip_space(body, i)).copied()
}

/// Parses a whole request body into validated readings, or one problem describing all faults.
/// Time is linear in the body and memory bounded by `max_readings`: items are counted as they
/// are found, and the body is refused at `max_readings + 1` before any reading is built.
pub fn parse_readings(
    body: &[u8],
    format: BodyFormat,
    max_readings: usize,
) -> Result<Vec<Reading>, Problem> {
    let text = std::str::from_utf8(body).map_err(|e| {
        Problem::new(
            ProblemType::InvalidRequest,
            format!(
                "body is not valid UTF-8 (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    check_nesting(text, format)?;
    let items: Vec<&str> = match format {
        BodyFormat::Json => split_json(text, max_readings)?,
        BodyFormat::Ndjson => split_ndjson(text, max_readings)?,
    };
    if items.is_empty() {
        return Err(Problem::new(
            ProblemType::InvalidRequest,
            "the body holds no readings",
        ));
    }

    let mut readings = Vec::with_capacity(items.len());
    let mut issues: Vec<(usize, FieldIssue)> = Vec::new();
    for (index, item) in items.into_iter().enumerate() {
        match read_object(item).and_then(validate_item) {
            Ok(r) => readings.push(r),
            Err(found) => issues.extend(found.into_iter().map(|issue| (index, issue))),
        }
    }
    if issues.is_empty() {
        return Ok(readings);
    }
    let kind = ProblemType::for_issues(issues.iter().map(|(_, issue)| issue));
    let errors: Vec<_> = issues
        .into_iter()
        .map(|(index, issue)| FieldError::from_issue(issue, Some(index)))
        .collect();
    let bad = {
        let mut idx: Vec<_> = errors.iter().filter_map(|e| e.index).collect();
        idx.dedup();
        idx.len()
    };
    Err(Problem::new(
        kind,
        format!(
            "{bad} of {} readings are invalid; nothing was accepted",
            bad + readings.len()
        ),
    )
    .with_errors(errors))
}

/// One reading's raw fields, or why it could not even be read as an object.
type Item<'a> = Result<WireReading<'a>, Vec<FieldIssue>>;

fn too_many(max_readings: usize) -> Problem {
    Problem::new(
        ProblemType::PayloadTooLarge,
        format!("more than {max_readings} readings in one request; the limit is {max_readings}"),
    )
}

/// The items of a JSON body (one object, or an array of values) as raw text, refused at
/// `max_readings + 1` while the array is still being read.
fn split_json(text: &str, max_readings: usize) -> Result<Vec<&str>, Problem> {
    let syntax = |e: serde_json::Error| {
        Problem::new(
            ProblemType::InvalidRequest,
            format!("body is not valid JSON: {e}"),
        )
    };
    match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            let over = std::cell::Cell::new(false);
            let mut de = serde_json::Deserializer::from_str(text);
            let items = de::DeserializeSeed::deserialize(
                CountedItems {
                    max: max_readings,
                    over: &over,
                },
                &mut de,
            )
            .and_then(|items| de.end().map(|()| items));
            match items {
                Ok(items) => Ok(items),
                Err(_) if over.get() => Err(too_many(max_readings)),
                Err(e) => Err(syntax(e)),
            }
        }
        Some(b'{') => {
            let raw: &RawValue = serde_json::from_str(text).map_err(syntax)?;
            Ok(vec![raw.get()])
        }
        _ => Err(Problem::new(
            ProblemType::InvalidRequest,
            "body must be a JSON object or an array of objects",
        )),
    }
}

/// An array's items as raw text, at most `max`; the next one sets `over` and stops the parse.
struct CountedItems<'c> {
    max: usize,
    over: &'c std::cell::Cell<bool>,
}

impl<'de> de::DeserializeSeed<'de> for CountedItems<'_> {
    type Value = Vec<&'de str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for CountedItems<'_> {
    type Value = Vec<&'de str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of readings")
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            if items.len() == self.max {
                self.over.set(true);
                return Err(de::Error::custom("too many readings"));
            }
            items.push(raw.get());
        }
        Ok(items)
    }
}

/// The non-blank lines of an NDJSON body, refused at `max_readings + 1`.
fn split_ndjson(text: &str, max_readings: usize) -> Result<Vec<&str>, Problem> {
    let mut items = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        if items.len() == max_readings {
            return Err(too_many(max_readings));
        }
        items.push(line);
    }
    Ok(items)
}

fn read_object(json: &str) -> Item<'_> {
    if !json.trim_start().starts_with('{') {
        return Err(vec![FieldIssue::invalid(
            "reading",
            "must be a JSON object",
        )]);
    }
    serde_json::from_str::<WireReading<'_>>(json).map_err(|e| {
        let detail = e.to_string();
        vec![if detail.starts_with(TOO_MANY_FIELDS) {
            FieldIssue::invalid(
                "reading",
                format!("has more than {MAX_UNKNOWN_FIELDS} fields besides device_id, temp, unit, ts and seq"),
            )
        } else {
            FieldIssue::invalid("reading", format!("is not valid JSON: {detail}"))
        }]
    })
}

/// The parse of a reading stops at its `MAX_UNKNOWN_FIELDS + 1`th unknown field with this error:
/// the reading is refused, and the rest of it is not worth reading.
const TOO_MANY_FIELDS: &str = "edge-enrich: too many fields";

fn validate_item(wire: WireReading<'_>) -> Result<Reading, Vec<FieldIssue>> {
    let mut issues: Vec<FieldIssue> = wire
        .duplicates
        .iter()
        .map(|f| FieldIssue::invalid(f, "appears more than once in the object"))
        .collect();
    if let Others::Repeated(key) = &wire.others {
        issues.push(FieldIssue::invalid(
            "reading",
            format!("holds the key {key:?} more than once"),
        ));
    }
    let mut draft = ReadingDraft::default();
    match string_field("device_id", wire.device_id) {
        Ok(v) => draft.device_id = v,
        Err(e) => issues.push(e),
    }
    match string_field("unit", wire.unit) {
        Ok(v) => draft.unit = v,
        Err(e) => issues.push(e),
    }
    draft.temp = wire.temp.map(|r| json_number(r.get()));
    draft.ts = wire.ts.map(|r| parse_device_ts(r.get()));
    draft.seq = wire.seq.map(|r| parse_seq(r.get()));
    match draft.validate() {
        Ok(reading) if issues.is_empty() => Ok(reading),
        Ok(_) => Err(issues),
        Err(more) => {
            for m in more {
                if !issues.iter().any(|i| i.field == m.field) {
                    issues.push(m);
                }
            }
            Err(issues)
        }
    }
}

fn string_field<'a>(
    field: &'static str,
    raw: Option<&'a RawValue>,
) -> Result<Option<Cow<'a, str>>, FieldIssue> {
    raw.map(|r| {
        json_string(r.get()).ok_or_else(|| FieldIssue::invalid(field, "must be a JSON string"))
    })
    .transpose()
}

/// A JSON string literal's value, borrowed when it has no escapes.
fn json_string(raw: &str) -> Option<Cow<'_, str>> {
    let inner = raw.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(raw).ok().map(Cow::Owned)
}

/// A JSON number literal read as f64 from its text, so `1e309` is reported as out of range
/// (422) rather than as a syntax error, and strings/booleans/null are refused (400).
fn json_number(raw: &str) -> Result<f64, FieldIssue> {
    let first = raw.as_bytes().first().copied().unwrap_or(b' ');
    if !(first == b'-' || first.is_ascii_digit()) {
        return Err(FieldIssue::invalid("temp", "must be a JSON number"));
    }
    match raw.parse::<f64>() {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(FieldIssue::unprocessable(
            "temp",
            "is out of the range of a finite number",
        )),
        Err(_) => Err(FieldIssue::invalid("temp", "must be a JSON number")),
    }
}

/// The fields we know, as raw JSON slices of the input; unknown fields are skipped.
#[derive(Default)]
struct WireReading<'a> {
    device_id: Option<&'a RawValue>,
    temp: Option<&'a RawValue>,
    unit: Option<&'a RawValue>,
    ts: Option<&'a RawValue>,
    seq: Option<&'a RawValue>,
    duplicates: Vec<&'static str>,
    others: Others<'a>,
}

/// Keys outside the reading fields, to refuse one given twice (a duplicate key is ambiguous JSON
/// whatever it names), at most `MAX_UNKNOWN_FIELDS` of them.
enum Others<'a> {
    Seen(Vec<Cow<'a, str>>),
    Repeated(String),
}

impl Default for Others<'_> {
    fn default() -> Self {
        Self::Seen(Vec::new())
    }
}

enum Key<'a> {
    DeviceId,
    Temp,
    Unit,
    Ts,
    Seq,
    Other(Cow<'a, str>),
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key::known(v).unwrap_or(Key::Other(Cow::Borrowed(v))))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key::known(v).unwrap_or_else(|| Key::Other(Cow::Owned(v.to_owned()))))
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl Key<'_> {
    fn known(name: &str) -> Option<Self> {
        Some(match name {
            "device_id" => Self::DeviceId,
            "temp" => Self::Temp,
            "unit" => Self::Unit,
            "ts" => Self::Ts,
            "seq" => Self::Seq,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for WireReading<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ObjectVisitor;
        impl<'de> Visitor<'de> for ObjectVisitor {
            type Value = WireReading<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a reading object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut w = WireReading::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let (name, slot) = match key {
                        Key::DeviceId => ("device_id", &mut w.device_id),
                        Key::Temp => ("temp", &mut w.temp),
                        Key::Unit => ("unit", &mut w.unit),
                        Key::Ts => ("ts", &mut w.ts),
                        Key::Seq => ("seq", &mut w.seq),
                        Key::Other(name) => {
                            map.next_value::<IgnoredAny>()?;
                            if let Others::Seen(seen) = &mut w.others {
                                if seen.contains(&name) {
                                    w.others = Others::Repeated(name.into_owned());
                                } else if seen.len() == MAX_UNKNOWN_FIELDS {
                                    return Err(de::Error::custom(TOO_MANY_FIELDS));
                                } else {
                                    seen.push(name);
                                }
                            }
                            continue;
                        }
                    };
                    let value = map.next_value::<&'de RawValue>()?;
                    if slot.is_some() {
                        if !w.duplicates.contains(&name) {
                            w.duplicates.push(name);
                        }
                    } else {
                        *slot = Some(value);
                    }
                }
                Ok(w)
            }
        }
        d.deserialize_map(ObjectVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_json(s: &str) -> Result<Vec<Reading>, Problem> {
        parse_readings(s.as_bytes(), BodyFormat::Json, 500)
    }

    #[test]
    fn content_types() {
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json; charset=UTF-8")).unwrap(),
            BodyFormat::Json
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("Application/X-NDJSON")).unwrap(),
            BodyFormat::Ndjson
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("text/plain"))
                .unwrap_err()
                .status(),
            415
        );
        assert_eq!(
            BodyFormat::from_content_type(None).unwrap_err().status(),
            415
        );
        assert_eq!(
            BodyFormat::from_content_type(Some("application/json;charset=latin1"))
                .unwrap_err()
                .status(),
            415
        );
    }

    #[test]
    fn object_array_and_ndjson() {
        assert_eq!(
            parse_json(r#"{"device_id":"a","temp":1}"#).unwrap().len(),
            1
        );
        let v = parse_json(r#"[{"device_id":"a","temp":1},{"device_id":"b","temp":2,"unit":"F","seq":3,"extra":{"x":[1]}}]"#).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].seq, Some(3));
        let nd = "{\"device_id\":\"a\",\"temp\":1}\r\n\n{\"device_id\":\"b\",\"temp\":2}\n";
        assert_eq!(
            parse_readings(nd.as_bytes(), BodyFormat::Ndjson, 10)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn lists_every_bad_reading_by_index() {
        let p = parse_json(
            r#"[{"device_id":"ok","temp":1},{"temp":"x"},{"device_id":"b","temp":-500}]"#,
        )
        .unwrap_err();
        assert_eq!(p.status(), 400);
        let e = p.errors();
        assert!(e
            .iter()
            .any(|e| e.index == Some(1) && e.field == "device_id"));
        assert!(e.iter().any(|e| e.index == Some(1) && e.field == "temp"));
        assert!(e.iter().any(|e| e.index == Some(2) && e.field == "temp"));
        assert!(!e.iter().any(|e| e.index == Some(0)));
    }

    #[test]
    fn physically_impossible_is_422() {
        let p = parse_json(r#"{"device_id":"a","temp":1e309}"#).unwrap_err();
        assert_eq!(p.status(), 422);
        let p = parse_json(r#"{"device_id":"a","temp":-1,"unit":"K"}"#).unwrap_err();
        assert_eq!(p.status(), 422);
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let p = parse_json(r#"{"device_id":"a","temp":1,"temp":2}"#).unwrap_err();
        assert_eq!(p.errors()[0].field, "temp");
        assert!(p.errors()[0].detail.contains("more than once"));
        // Outside the reading fields too: a duplicate key is ambiguous whatever it names.
        let p = parse_json(r#"{"device_id":"a","temp":1,"note":"x","note":"y"}"#).unwrap_err();
        assert_eq!(p.status(), 400);
        assert!(p.errors()[0].detail.contains("\"note\" more than once"));
        // Escaped and plain spellings of one key are one key.
        assert!(parse_json(r#"{"device_id":"a","temp":1,"n\u006fte":1,"note":2}"#).is_err());
        assert!(parse_json(r#"{"device_id":"a","temp":1,"note":1,"other":2}"#).is_ok());
    }

    #[test]
    fn limits_and_syntax() {
        let many = format!("[{}]", [r#"{"device_id":"a","temp":1}"#; 11].join(","));
        assert_eq!(
            parse_readings(many.as_bytes(), BodyFormat::Json, 10)
                .unwrap_err()
                .status(),
            413
        );
        assert_eq!(parse_json("[]").unwrap_err().status(), 400);
        assert_eq!(parse_json("[1]").unwrap_err().errors()[0].field, "reading");
        assert_eq!(parse_json("\"x\"").unwrap_err().status(), 400);
        assert_eq!(parse_json("{\"device_id\":").unwrap_err().status(), 400);
        assert_eq!(
            parse_readings(b"\xff\xfe", BodyFormat::Json, 10)
                .unwrap_err()
                .status(),
            400
        );
        let truncated = "{\"device_id\":\"a\",\"temp\":1}\n{\"device_id\":\"b\",\"te";
        let p = parse_readings(truncated.as_bytes(), BodyFormat::Ndjson, 10).unwrap_err();
        assert_eq!(p.errors()[0].index, Some(1));
    }

    #[test]
    fn escaped_strings_decode() {
        let v = parse_json(r#"{"device_id":"a\u002db","temp":1,"unit":"\u0046"}"#).unwrap();
        assert_eq!(v[0].device_id.as_str(), "a-b");
    }

    #[test]
    fn unknown_fields_are_capped() {
        let with = |n: usize| {
            let extra: String = (0..n).map(|i| format!(",\"k{i}\":{i}")).collect();
            format!(r#"{{"device_id":"a","temp":1{extra}}}"#)
        };
        assert!(parse_json(&with(MAX_UNKNOWN_FIELDS)).is_ok());
        let p = parse_json(&with(MAX_UNKNOWN_FIELDS + 1)).unwrap_err();
        assert_eq!(p.status(), 400);
        assert!(
            p.errors()[0].detail.contains("more than 32 fields"),
            "{:?}",
            p.errors()
        );
        // A repeat is still found among the first ones.
        let p = parse_json(r#"{"device_id":"a","temp":1,"x":1,"y":2,"x":3}"#).unwrap_err();
        assert!(p.errors()[0].detail.contains("\"x\" more than once"));
    }

    #[test]
    fn items_are_refused_at_the_limit_plus_one_while_parsing() {
        let limit = 10;
        let of = |n: usize| format!("[{}]", vec!["{}"; n].join(","));
        // At the limit: read, then refused item by item (400); one more: 413 before any item.
        assert_eq!(
            parse_readings(of(limit).as_bytes(), BodyFormat::Json, limit)
                .unwrap_err()
                .status(),
            400
        );
        let p = parse_readings(of(limit + 1).as_bytes(), BodyFormat::Json, limit).unwrap_err();
        assert_eq!(p.status(), 413);
        assert!(p.errors().is_empty());
        // Even when the rest of the body is not JSON: the count stops the parse first.
        let broken = format!("[{},{{{{{{", vec!["{}"; limit + 1].join(","));
        assert_eq!(
            parse_readings(broken.as_bytes(), BodyFormat::Json, limit)
                .unwrap_err()
                .status(),
            413
        );
        let lines = "{}\n".repeat(limit + 1);
        assert_eq!(
            parse_readings(lines.as_bytes(), BodyFormat::Ndjson, limit)
                .unwrap_err()
                .status(),
            413
        );
    }

    /// At 557087d a byte order mark before `[` was taken for the start of a lone object, so the
    /// pre-scan looked at the wrong depth and found the device of a reading's nested field.
    #[test]
    fn the_pre_scan_skips_a_byte_order_mark_as_the_parser_does() {
        let body =
            "\u{feff}[{\"meta\":{\"device_id\":\"inner\"},\"device_id\":\"outer\",\"temp\":1}]";
        let found = first_device_id(body.as_bytes(), BodyFormat::Json).unwrap();
        assert_eq!(found.as_str(), "outer");
        assert_eq!(parse_json(body).unwrap()[0].device_id.as_str(), "outer");
    }

    #[test]
    fn first_device_id_is_found_without_parsing() {
        let find = |body: &str, format| {
            first_device_id(body.as_bytes(), format).map(|d| d.as_str().to_owned())
        };
        let json = BodyFormat::Json;
        assert_eq!(
            find(r#"{"temp":1,"device_id":"a"}"#, json).as_deref(),
            Some("a")
        );
        assert_eq!(
            find(r#" [ {"device_id" : "b"}, {"device_id":"c"}]"#, json).as_deref(),
            Some("b")
        );
        // Not inside a string, not in a nested object, not a value.
        let tricky = r#"[{"note":"\"device_id\":\"x\"","meta":{"device_id":"y"},"k":"device_id","device_id":"z"}]"#;
        assert_eq!(find(tricky, json).as_deref(), Some("z"));
        assert_eq!(
            find(
                "{\"device_id\":\"n1\"}\n{\"device_id\":\"n2\"}",
                BodyFormat::Ndjson
            )
            .as_deref(),
            Some("n1")
        );
        // The rest of the body does not matter to the pre-scan.
        assert_eq!(find(r#"{"device_id":"a",{{{{"#, json).as_deref(), Some("a"));
        for none in [
            "",
            "[]",
            r#"{"device_id":7}"#,
            r#"{"device_id":"a\u0062"}"#,
            r#"{"device_id":"a b"}"#,
            r#"{"device_id":"unterminated"#,
            r#"{"temp":1}"#,
        ] {
            assert_eq!(find(none, json), None, "{none}");
        }
    }
}
