//! Per-device temperature calibration: `temp_c = round(gain * celsius(raw) + offset, decimals)`.
//!
//! Profiles are matched by exact device id, then by the longest `prefix*` pattern, then by
//! `*` (the deployment default). With no match the identity applies, rounded to 1 decimal.

use std::collections::HashMap;

use serde::Deserialize;

use crate::domain::reading::{DeviceId, FieldIssue, Temperature};
use crate::domain::unquoted::unquoted;

/// The profile set compiled into the binary; a deployment may replace it (see `Config`).
pub const EMBEDDED_PROFILES: &str = include_str!("../../profiles/calibration.json");

pub const DEFAULT_DECIMALS: u8 = 1;
pub const MAX_DECIMALS: u8 = 6;
const MAX_PROFILES: usize = 10_000;

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// The `match` text as configured: an exact id, `prefix*`, or `*`.
    pub pattern: String,
    pub gain: f64,
    pub offset: f64,
    pub decimals: u8,
    pub version: u32,
}

/// A validated profile set with its lookup indexes.
#[derive(Debug, Clone, Default)]
pub struct Profiles {
    /// The set's own version (`{"version": N, "profiles": [...]}`; 0 for a bare array): every
    /// enriched reading names it, so each `temp_c` can be traced to the profiles in force.
    version: u32,
    profiles: Vec<Profile>,
    exact: HashMap<String, usize>,
    /// `(prefix, index)`, longest prefix first; `*` is the empty prefix, so it comes last.
    prefixes: Vec<(String, usize)>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProfileSpec {
    #[serde(rename = "match")]
    pattern: String,
    #[serde(default = "one")]
    gain: f64,
    #[serde(default)]
    offset: f64,
    #[serde(default = "default_decimals")]
    decimals: u8,
    version: u32,
}

/// The defaults of an unset `gain` and `decimals`, here and in a registry record's calibration.
pub(crate) fn one() -> f64 {
    1.0
}
pub(crate) fn default_decimals() -> u8 {
    DEFAULT_DECIMALS
}

impl Profile {
    /// A profile whose numbers hold: `gain` finite and > 0, `offset` finite, `decimals` at most
    /// `MAX_DECIMALS`. The error names the field (`gain: …`).
    pub fn new(
        pattern: String,
        gain: f64,
        offset: f64,
        decimals: u8,
        version: u32,
    ) -> Result<Self, String> {
        if !(gain.is_finite() && gain > 0.0) {
            return Err("gain: must be a finite number greater than 0".into());
        }
        if !offset.is_finite() {
            return Err("offset: must be a finite number".into());
        }
        if decimals > MAX_DECIMALS {
            return Err(format!("decimals: must be from 0 to {MAX_DECIMALS}"));
        }
        Ok(Self {
            pattern,
            gain,
            offset,
            decimals,
            version,
        })
    }
}

/// `{"version": N, "profiles": [...]}`; the entries stay raw so each is reported by its own
/// index.
#[derive(Deserialize)]
struct ProfileFile<'a> {
    #[serde(default)]
    version: u32,
    #[serde(borrow)]
    profiles: Vec<&'a serde_json::value::RawValue>,
}

impl Profiles {
    /// Parses `{"profiles": [...]}` or a bare array. Every fault is reported with its
    /// position, e.g. `profiles[2].gain: must be a finite number greater than 0`.
    pub fn parse(json: &str) -> Result<Self, Vec<String>> {
        let shape_error = |e: serde_json::Error| {
            vec![format!(
                "calibration profiles are not valid JSON of the form {{\"profiles\": [...]}}: {}",
                unquoted(&e.to_string())
            )]
        };
        // A bare array is accepted too (set version 0).
        let (version, raw): (u32, Vec<&serde_json::value::RawValue>) =
            if json.trim_start().starts_with('[') {
                (0, serde_json::from_str(json).map_err(shape_error)?)
            } else {
                let file = serde_json::from_str::<ProfileFile<'_>>(json).map_err(shape_error)?;
                (file.version, file.profiles)
            };
        if raw.len() > MAX_PROFILES {
            return Err(vec![format!(
                "{} profiles; at most {MAX_PROFILES} are supported",
                raw.len()
            )]);
        }
        let mut errors = Vec::new();
        let mut set = Profiles {
            version,
            ..Profiles::default()
        };
        for (i, value) in raw.into_iter().enumerate() {
            let spec: ProfileSpec = match serde_json::from_str(value.get()) {
                Ok(s) => s,
                Err(e) => {
                    errors.push(format!("profiles[{i}]: {}", unquoted(&e.to_string())));
                    continue;
                }
            };
            match set.add(spec) {
                Ok(()) => {}
                Err(why) => errors.push(format!("profiles[{i}].{why}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        // Prefixes are unique (`add` refuses a repeat), so an unstable sort orders them fully.
        set.prefixes
            .sort_unstable_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        Ok(set)
    }

    fn add(&mut self, spec: ProfileSpec) -> Result<(), String> {
        let profile = Profile::new(
            spec.pattern,
            spec.gain,
            spec.offset,
            spec.decimals,
            spec.version,
        )?;
        let index = self.profiles.len();
        let pattern = profile.pattern.clone();
        if let Some(prefix) = pattern.strip_suffix('*') {
            if !prefix.is_empty() {
                DeviceId::parse(prefix).map_err(|e| format!("match: prefix {}", e.detail))?;
            }
            if self.prefixes.iter().any(|(p, _)| p == prefix) {
                return Err("match: the pattern is listed twice".into());
            }
            self.prefixes.push((prefix.to_owned(), index));
        } else {
            DeviceId::parse(&pattern).map_err(|e| {
                format!("match: must be a device id, `prefix*` or `*`: {}", e.detail)
            })?;
            if self.exact.insert(pattern.clone(), index).is_some() {
                return Err("match: the pattern is listed twice".into());
            }
        }
        self.profiles.push(profile);
        Ok(())
    }

    /// The set's version (see the field).
    pub fn version(&self) -> u32 {
        self.version
    }

    pub fn len(&self) -> usize {
        self.profiles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.profiles.is_empty()
    }

    pub fn lookup(&self, device_id: &str) -> Option<&Profile> {
        if let Some(&i) = self.exact.get(device_id) {
            return Some(&self.profiles[i]);
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| device_id.starts_with(prefix.as_str()))
            .map(|&(_, i)| &self.profiles[i])
    }

    /// Calibrated °C for one reading, and the profile that produced it (None: identity).
    pub fn calibrate(
        &self,
        device_id: &DeviceId,
        temp: Temperature,
    ) -> Result<(f64, Option<&Profile>), FieldIssue> {
        apply(self.lookup(device_id.as_str()), temp)
    }
}

/// `temp` calibrated by `profile` (the identity without one), or 422 when the result is not a
/// finite number.
pub fn apply(
    profile: Option<&Profile>,
    temp: Temperature,
) -> Result<(f64, Option<&Profile>), FieldIssue> {
    let (gain, offset, decimals) =
        profile
            .map(|p| (p.gain, p.offset, p.decimals))
            .unwrap_or((1.0, 0.0, DEFAULT_DECIMALS));
    let value = round_half_away(gain * temp.celsius() + offset, decimals);
    if !value.is_finite() {
        return Err(FieldIssue::unprocessable(
            "temp",
            "calibrated value is out of the range of a finite number",
        ));
    }
    Ok((value, profile))
}

/// Rounds half away from zero at `decimals` places.
///
/// Binary floating point stores 0.15 as 0.1499999…, so a plain `(x * 10).round()` would round
/// some decimal halves down. The scaled value is nudged by a few units in its last place
/// towards its own sign before rounding, so a decimal half rounds away from zero. (A fixed
/// relative 1e-12 once moved large values by whole rounding steps; the property tests caught
/// it.) Past 2^50 steps a double holds no finer digits worth rounding: the value is kept.
pub fn round_half_away(value: f64, decimals: u8) -> f64 {
    const NUDGE_ULPS: f64 = 4.0;
    const PRECISION_LIMIT: f64 = (1u64 << 50) as f64;
    let scale = 10f64.powi(i32::from(decimals));
    let scaled = value * scale;
    if !scaled.is_finite() || scaled.abs() >= PRECISION_LIMIT {
        return if value == 0.0 { 0.0 } else { value };
    }
    let nudge = (scaled.abs().max(1.0) * NUDGE_ULPS * f64::EPSILON).min(1e-3);
    let nudged = scaled + scaled.signum() * nudge;
    let rounded = nudged.round() / scale;
    if rounded == 0.0 {
        0.0 // never answer "-0.0"
    } else {
        rounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::reading::Unit;

    fn profiles() -> Profiles {
        Profiles::parse(
            r#"{"profiles":[
                {"match":"lab-01","gain":1.0,"offset":-0.4,"decimals":2,"version":3},
                {"match":"lab-*","gain":2.0,"offset":0,"version":1},
                {"match":"l*","gain":1.5,"offset":0,"version":1},
                {"match":"*","gain":1.0,"offset":0.5,"decimals":0,"version":9}
            ]}"#,
        )
        .unwrap()
    }

    fn dev(s: &str) -> DeviceId {
        DeviceId::parse(s).unwrap()
    }

    #[test]
    fn exact_then_longest_prefix_then_default() {
        let p = profiles();
        assert_eq!(p.lookup("lab-01").unwrap().version, 3);
        assert_eq!(p.version(), 0, "a bare array has set version 0");
        let file = Profiles::parse(r#"{"version":12,"profiles":[{"match":"a","version":1}]}"#);
        assert_eq!(file.unwrap().version(), 12);
        assert_eq!(p.lookup("lab-02").unwrap().gain, 2.0);
        assert_eq!(p.lookup("lx").unwrap().gain, 1.5);
        assert_eq!(p.lookup("zzz").unwrap().pattern, "*");
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn formula_units_and_decimals() {
        let p = profiles();
        let t = Temperature::new(74.3, Unit::Fahrenheit).unwrap();
        // lab-01: 23.5 - 0.4 = 23.1 at 2 decimals
        assert_eq!(p.calibrate(&dev("lab-01"), t).unwrap().0, 23.1);
        // default: 23.5 + 0.5 = 24.0 at 0 decimals
        assert_eq!(p.calibrate(&dev("q"), t).unwrap().0, 24.0);
        let k = Temperature::new(300.0, Unit::Kelvin).unwrap();
        assert_eq!(p.calibrate(&dev("lab-9"), k).unwrap().0, 53.7); // 2 * 26.85
        let none = Profiles::parse("[]").unwrap();
        let (v, prof) = none
            .calibrate(&dev("x"), Temperature::new(21.25, Unit::Celsius).unwrap())
            .unwrap();
        assert_eq!((v, prof), (21.3, None));
    }

    #[test]
    fn rounding_keeps_large_values_in_place() {
        // Found by tests/calibration_props.rs: the old fixed relative nudge moved this by 4 steps.
        let x = 423_444_785.231_959_1;
        assert_eq!(round_half_away(x, 4), 423_444_785.232);
        assert_eq!(round_half_away(round_half_away(x, 4), 4), 423_444_785.232);
        let y = round_half_away(722_869_792.966_834_9, 6);
        assert_eq!(round_half_away(y, 6), y);
    }

    #[test]
    fn rounding_half_away_from_zero() {
        assert_eq!(round_half_away(0.15, 1), 0.2);
        assert_eq!(round_half_away(-0.15, 1), -0.2);
        assert_eq!(round_half_away(2.5, 0), 3.0);
        assert_eq!(round_half_away(-2.5, 0), -3.0);
        assert_eq!(round_half_away(1.005, 2), 1.01);
        assert_eq!(round_half_away(0.04999, 1), 0.0);
        assert_eq!(round_half_away(-0.04, 1).to_string(), "0");
        assert_eq!(round_half_away(23.45, 1), 23.5);
        assert_eq!(round_half_away(-40.0, 1), -40.0);
    }

    #[test]
    fn overflow_after_gain_is_unprocessable() {
        let p = Profiles::parse(r#"[{"match":"*","gain":10,"version":1}]"#).unwrap();
        let t = Temperature::new(1e308, Unit::Celsius).unwrap();
        assert!(p.calibrate(&dev("a"), t).is_err());
    }

    #[test]
    fn invalid_sets_are_reported_precisely() {
        let e = Profiles::parse(
            r#"{"profiles":[
                {"match":"a","gain":0,"version":1},
                {"match":"b c","version":1},
                {"match":"x*","version":1},
                {"match":"x*","version":2},
                {"match":"d","decimals":9,"version":1},
                {"match":"e"},
                {"match":"f","version":1,"gian":2}
            ]}"#,
        )
        .unwrap_err();
        assert!(e[0].starts_with("profiles[0].gain"), "{e:?}");
        assert!(e[1].starts_with("profiles[1].match"), "{e:?}");
        assert!(e[2].starts_with("profiles[3].match"), "{e:?}");
        assert!(e[3].starts_with("profiles[4].decimals"), "{e:?}");
        assert!(
            e[4].starts_with("profiles[5]") && e[4].contains("version"),
            "{e:?}"
        );
        assert!(
            e[5].starts_with("profiles[6]") && e[5].contains("unknown field (not shown)"),
            "{e:?}"
        );
        assert!(Profiles::parse("not json").is_err());
    }

    #[test]
    fn embedded_profiles_are_valid() {
        let p = Profiles::parse(EMBEDDED_PROFILES).unwrap();
        assert!(!p.is_empty());
    }
}
