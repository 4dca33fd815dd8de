//! A device's reading after validation. Every value of these types is already valid, so the
//! enrichment code never re-checks anything.

/// Why one field was refused. `Invalid` maps to 400 (malformed), `Unprocessable` to 422
/// (well-formed but physically meaningless, e.g. below absolute zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Invalid,
    Unprocessable,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldIssue {
    pub field: &'static str,
    pub detail: String,
    pub severity: Severity,
}

impl FieldIssue {
    pub fn invalid(field: &'static str, detail: impl Into<String>) -> Self {
        Self {
            field,
            detail: detail.into(),
            severity: Severity::Invalid,
        }
    }
    pub fn unprocessable(field: &'static str, detail: impl Into<String>) -> Self {
        Self {
            field,
            detail: detail.into(),
            severity: Severity::Unprocessable,
        }
    }
}

pub const DEVICE_ID_MAX_LEN: usize = 128;

/// 1 to 128 characters of `[A-Za-z0-9._:-]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(raw: &str) -> Result<Self, FieldIssue> {
        if raw.is_empty() {
            return Err(FieldIssue::invalid("device_id", "must not be empty"));
        }
        if raw.len() > DEVICE_ID_MAX_LEN {
            return Err(FieldIssue::invalid(
                "device_id",
                format!("must be at most {DEVICE_ID_MAX_LEN} characters"),
            ));
        }
        if let Some(bad) = raw.chars().find(|c| !is_device_id_char(*c)) {
            return Err(FieldIssue::invalid(
                "device_id",
                format!("character {bad:?} is not allowed; use A-Z a-z 0-9 . _ : -"),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn is_device_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Celsius,
    Fahrenheit,
    Kelvin,
}

/// Absolute zero in °C: the lowest temperature a sensor can honestly report.
pub const ABSOLUTE_ZERO_C: f64 = -273.15;

impl Unit {
    /// Case-insensitive `C`, `F` or `K`.
    pub fn parse(raw: &str) -> Result<Self, FieldIssue> {
        match raw {
            "C" | "c" => Ok(Self::Celsius),
            "F" | "f" => Ok(Self::Fahrenheit),
            "K" | "k" => Ok(Self::Kelvin),
            _ => Err(FieldIssue::invalid("unit", "must be one of C, F, K")),
        }
    }

    pub fn symbol(self) -> &'static str {
        match self {
            Self::Celsius => "C",
            Self::Fahrenheit => "F",
            Self::Kelvin => "K",
        }
    }

    pub fn to_celsius(self, value: f64) -> f64 {
        match self {
            Self::Celsius => value,
            Self::Fahrenheit => (value - 32.0) * 5.0 / 9.0,
            Self::Kelvin => value + ABSOLUTE_ZERO_C,
        }
    }
}

/// A finite temperature at or above absolute zero, in the unit the device sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Temperature {
    value: f64,
    unit: Unit,
}

impl Temperature {
    pub fn new(value: f64, unit: Unit) -> Result<Self, FieldIssue> {
        if !value.is_finite() {
            return Err(FieldIssue::unprocessable(
                "temp",
                "must be a finite number (no NaN or infinity)",
            ));
        }
        let celsius = unit.to_celsius(value);
        // A finite °F near f64::MAX overflows on the way to °C (found by fuzz/body_json).
        if !celsius.is_finite() {
            return Err(FieldIssue::unprocessable(
                "temp",
                format!(
                    "{value} {} is out of range in degrees Celsius",
                    unit.symbol()
                ),
            ));
        }
        // A tiny tolerance keeps -273.15 itself (and its F/K spellings) acceptable
        // despite binary floating point.
        if celsius < ABSOLUTE_ZERO_C - 1e-9 {
            return Err(FieldIssue::unprocessable(
                "temp",
                format!(
                    "{value} {} is below absolute zero (-273.15 C)",
                    unit.symbol()
                ),
            ));
        }
        Ok(Self { value, unit })
    }

    pub fn value(self) -> f64 {
        self.value
    }
    pub fn unit(self) -> Unit {
        self.unit
    }
    pub fn celsius(self) -> f64 {
        self.unit.to_celsius(self.value)
    }
}

/// Parses a decimal temperature from text (query string). Accepts what Rust's `f64` parser
/// accepts for finite decimals; refuses hex and empty strings, reports NaN/inf as 422.
pub fn parse_decimal(field: &'static str, raw: &str) -> Result<f64, FieldIssue> {
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return Err(FieldIssue::invalid(field, "must not be empty"));
    }
    let looks_decimal = trimmed
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'));
    match trimmed.parse::<f64>() {
        Ok(v) if looks_decimal && v.is_finite() => Ok(v),
        Ok(_) if looks_decimal => Err(FieldIssue::unprocessable(
            field,
            "is out of the range of a finite number",
        )),
        Ok(_) => Err(FieldIssue::unprocessable(
            field,
            "must be a finite number (no NaN or infinity)",
        )),
        Err(_) => Err(FieldIssue::invalid(field, "must be a decimal number")),
    }
}

/// Largest device timestamp accepted: 2262-04-11T23:47:16.854Z in epoch milliseconds, the end
/// of a signed 64-bit count of nanoseconds. Every sink accepts times up to it (InfluxDB and the
/// line-protocol databases store nanoseconds so, and refuse a later point with a 400 that would
/// otherwise take a whole batch of other devices' readings with it).
pub const MAX_DEVICE_TS_MS: u64 = 9_223_372_036_854;

pub fn parse_device_ts(raw: &str) -> Result<u64, FieldIssue> {
    match parse_unsigned(raw) {
        Some(v) if v <= MAX_DEVICE_TS_MS => Ok(v),
        Some(_) => Err(FieldIssue::invalid(
            "ts",
            "must be epoch milliseconds no later than 9223372036854 (2262-04-11T23:47:16.854Z)",
        )),
        None => Err(FieldIssue::invalid(
            "ts",
            "must be a non-negative integer (epoch milliseconds)",
        )),
    }
}

pub fn parse_seq(raw: &str) -> Result<u64, FieldIssue> {
    parse_unsigned(raw)
        .ok_or_else(|| FieldIssue::invalid("seq", "must be a non-negative 64-bit integer"))
}

fn parse_unsigned(raw: &str) -> Option<u64> {
    if raw.is_empty() || raw.len() > 20 || !raw.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    raw.parse().ok()
}

/// A validated reading, ready for calibration.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub device_id: DeviceId,
    pub temp: Temperature,
    pub ts: Option<u64>,
    pub seq: Option<u64>,
}

/// The fields of a reading as text/JSON gave them, before validation. Collects every issue
/// rather than stopping at the first, so one problem document can list them all.
#[derive(Debug, Default)]
pub struct ReadingDraft<'a> {
    pub device_id: Option<std::borrow::Cow<'a, str>>,
    pub temp: Option<Result<f64, FieldIssue>>,
    pub unit: Option<std::borrow::Cow<'a, str>>,
    pub ts: Option<Result<u64, FieldIssue>>,
    pub seq: Option<Result<u64, FieldIssue>>,
}

impl ReadingDraft<'_> {
    pub fn validate(self) -> Result<Reading, Vec<FieldIssue>> {
        let mut issues = Vec::new();
        let device_id = match self.device_id.as_deref().map(DeviceId::parse) {
            Some(Ok(id)) => Some(id),
            Some(Err(e)) => {
                issues.push(e);
                None
            }
            None => {
                issues.push(FieldIssue::invalid("device_id", "is required"));
                None
            }
        };
        let unit = match self.unit.as_deref().map(Unit::parse) {
            None => Some(Unit::Celsius),
            Some(Ok(u)) => Some(u),
            Some(Err(e)) => {
                issues.push(e);
                None
            }
        };
        let temp = match self.temp {
            None => {
                issues.push(FieldIssue::invalid("temp", "is required"));
                None
            }
            Some(Err(e)) => {
                issues.push(e);
                None
            }
            Some(Ok(v)) => match unit.map(|u| Temperature::new(v, u)) {
                Some(Ok(t)) => Some(t),
                Some(Err(e)) => {
                    issues.push(e);
                    None
                }
                None => None, // the unit was already reported
            },
        };
        let ts = collect(self.ts, &mut issues);
        let seq = collect(self.seq, &mut issues);
        match (device_id, temp) {
            (Some(device_id), Some(temp)) if issues.is_empty() => Ok(Reading {
                device_id,
                temp,
                ts,
                seq,
            }),
            _ => Err(issues),
        }
    }
}

fn collect(v: Option<Result<u64, FieldIssue>>, issues: &mut Vec<FieldIssue>) -> Option<u64> {
    match v {
        Some(Ok(v)) => Some(v),
        Some(Err(e)) => {
            issues.push(e);
            None
        }
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids() {
        assert!(DeviceId::parse("abc-01.x_y:z").is_ok());
        assert!(DeviceId::parse(&"a".repeat(128)).is_ok());
        assert!(DeviceId::parse(&"a".repeat(129)).is_err());
        assert!(DeviceId::parse("").is_err());
        assert!(DeviceId::parse("a b").is_err());
        assert!(DeviceId::parse("é").is_err());
    }

    #[test]
    fn units_and_conversion() {
        assert_eq!(Unit::parse("f").unwrap(), Unit::Fahrenheit);
        assert_eq!(Unit::parse("K").unwrap(), Unit::Kelvin);
        assert!(Unit::parse("celsius").is_err());
        assert!((Unit::Fahrenheit.to_celsius(212.0) - 100.0).abs() < 1e-12);
        assert!((Unit::Kelvin.to_celsius(0.0) - ABSOLUTE_ZERO_C).abs() < 1e-12);
    }

    #[test]
    fn absolute_zero_is_the_floor() {
        assert!(Temperature::new(-273.15, Unit::Celsius).is_ok());
        assert!(Temperature::new(-459.67, Unit::Fahrenheit).is_ok());
        assert!(Temperature::new(0.0, Unit::Kelvin).is_ok());
        let e = Temperature::new(-0.01, Unit::Kelvin).unwrap_err();
        assert_eq!(e.severity, Severity::Unprocessable);
        assert!(Temperature::new(f64::NAN, Unit::Celsius).is_err());
        assert!(Temperature::new(f64::MAX, Unit::Fahrenheit).is_err());
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_decimal("temp", "74.3").unwrap(), 74.3);
        assert_eq!(parse_decimal("temp", "-1e2").unwrap(), -100.0);
        assert_eq!(
            parse_decimal("temp", "1e309").unwrap_err().severity,
            Severity::Unprocessable
        );
        assert_eq!(
            parse_decimal("temp", "NaN").unwrap_err().severity,
            Severity::Unprocessable
        );
        assert_eq!(
            parse_decimal("temp", "0x10").unwrap_err().severity,
            Severity::Invalid
        );
        assert_eq!(
            parse_decimal("temp", "").unwrap_err().severity,
            Severity::Invalid
        );
    }
}
