//! `GET /v1/readings?device_id=…&temp=…[&unit=][&ts=][&seq=]`: one reading from a query string.

use std::borrow::Cow;

use crate::domain::reading::{
    parse_decimal, parse_device_ts, parse_seq, DeviceId, FieldIssue, ReadingDraft,
};

/// The parameters a reading's query string may carry (the OpenAPI document lists the same).
pub const KNOWN: [&str; 5] = ["device_id", "temp", "unit", "ts", "seq"];

/// Parses the query string (without the leading `?`). Unknown parameters are ignored so that
/// devices may add cache-busters; a known parameter given twice is refused, because silently
/// picking one of two temperatures would be a guess.
pub fn parse_reading_query(
    query: &str,
) -> Result<crate::domain::reading::Reading, Vec<FieldIssue>> {
    let mut draft = ReadingDraft::default();
    let mut seen = [false; KNOWN.len()];
    let mut issues = Vec::new();

    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = match percent_decode(raw_name) {
            Ok(n) => n,
            Err(_) => continue, // an undecodable name cannot be one of ours
        };
        let Some(slot) = KNOWN.iter().position(|k| *k == name) else {
            continue;
        };
        let field = KNOWN[slot];
        if seen[slot] {
            issues.push(FieldIssue::invalid(field, "is repeated; give it once"));
            continue;
        }
        seen[slot] = true;
        let value = match percent_decode(raw_value) {
            Ok(v) => v,
            Err(why) => {
                issues.push(FieldIssue::invalid(field, why));
                continue;
            }
        };
        match field {
            "device_id" => draft.device_id = Some(value),
            "temp" => draft.temp = Some(parse_decimal("temp", &value)),
            "unit" => draft.unit = Some(value),
            "ts" => draft.ts = Some(parse_device_ts(&value)),
            _ => draft.seq = Some(parse_seq(&value)),
        }
    }

    match draft.validate() {
        Ok(reading) if issues.is_empty() => Ok(reading),
        Ok(_) => Err(issues),
        Err(mut more) => {
            // A repeated field is reported once, not again as "invalid".
            more.retain(|m| !issues.iter().any(|i| i.field == m.field));
            issues.extend(more);
            Err(issues)
        }
    }
}

/// The device a query string names (`device_id=`), if it names exactly one, validly. A POST
/// names its device this way so that its token is checked before the body is read.
pub fn named_device(query: &str) -> Result<Option<DeviceId>, FieldIssue> {
    let mut named = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        if percent_decode(raw_name).ok().as_deref() != Some("device_id") {
            continue;
        }
        if named.is_some() {
            return Err(FieldIssue::invalid(
                "device_id",
                "is repeated; give it once",
            ));
        }
        let value =
            percent_decode(raw_value).map_err(|why| FieldIssue::invalid("device_id", why))?;
        named = Some(DeviceId::parse(&value)?);
    }
    Ok(named)
}

/// `application/x-www-form-urlencoded` decoding: `+` is a space, `%XX` a byte; the result
/// must be UTF-8.
pub fn percent_decode(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    if !raw.bytes().any(|b| b == b'%' || b == b'+') {
        return Ok(Cow::Borrowed(raw));
    }
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = bytes.get(i + 1).and_then(|b| hex_value(*b));
                let lo = bytes.get(i + 2).and_then(|b| hex_value(*b));
                match (hi, lo) {
                    (Some(h), Some(l)) => out.push(h << 4 | l),
                    _ => return Err("has a malformed percent-encoding"),
                }
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| "is not valid UTF-8 after percent-decoding")
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reading::Unit;

    #[test]
    fn parses_a_full_reading() {
        let r =
            parse_reading_query("device_id=abc&temp=74.3&unit=f&ts=1700000000000&seq=7").unwrap();
        assert_eq!(r.device_id.as_str(), "abc");
        assert_eq!(r.temp.value(), 74.3);
        assert_eq!(r.temp.unit(), Unit::Fahrenheit);
        assert_eq!(r.ts, Some(1_700_000_000_000));
        assert_eq!(r.seq, Some(7));
    }

    #[test]
    fn decodes_and_ignores_unknown() {
        let r = parse_reading_query("device%5Fid=a%3Ab&temp=%2D5&cb=123&&").unwrap();
        assert_eq!(r.device_id.as_str(), "a:b");
        assert_eq!(r.temp.value(), -5.0);
        assert_eq!(r.temp.unit(), Unit::Celsius);
    }

    #[test]
    fn repeated_parameter_is_reported_once() {
        let e = parse_reading_query("device_id=a&temp=1&temp=2").unwrap_err();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field, "temp");
        assert!(e[0].detail.contains("repeated"));
    }

    #[test]
    fn reports_every_bad_field() {
        let e = parse_reading_query("unit=X&ts=-1").unwrap_err();
        let fields: Vec<_> = e.iter().map(|i| i.field).collect();
        assert!(fields.contains(&"device_id"));
        assert!(fields.contains(&"temp"));
        assert!(fields.contains(&"unit"));
        assert!(fields.contains(&"ts"));
    }

    #[test]
    fn percent_decoding_errors() {
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%4").is_err());
        assert!(percent_decode("%ff%fe").is_err());
        assert_eq!(percent_decode("a+b").unwrap(), "a b");
    }
}
