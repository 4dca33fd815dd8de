//! Properties of calibration that must hold for every input, not just the examples in the unit
//! tests: ordering is kept, unit conversion loses nothing beyond the rounding, rounding is stable.

#![cfg(not(target_arch = "wasm32"))] // proptest is a native dev-dependency

use edge_enrich::domain::calibration::{round_half_away, Profiles, MAX_DECIMALS};
use edge_enrich::domain::reading::{DeviceId, Temperature, Unit};
use proptest::prelude::*;

fn profiles(gain: f64, offset: f64, decimals: u8) -> Profiles {
    Profiles::parse(&format!(
        r#"[{{"match":"*","gain":{gain},"offset":{offset},"decimals":{decimals},"version":1}}]"#
    ))
    .expect("a valid profile")
}

fn unit() -> impl Strategy<Value = Unit> {
    prop_oneof![
        Just(Unit::Celsius),
        Just(Unit::Fahrenheit),
        Just(Unit::Kelvin)
    ]
}

/// Raw values a device could send in `unit`, at or above absolute zero.
fn raw(unit: Unit) -> impl Strategy<Value = f64> {
    let low = match unit {
        Unit::Celsius => -273.15,
        Unit::Fahrenheit => -459.67,
        Unit::Kelvin => 0.0,
    };
    low..1.0e6
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2_000))]

    /// For gain > 0, a larger raw value never calibrates to a smaller one (any unit, offset,
    /// rounding).
    #[test]
    fn calibration_is_monotone_for_positive_gain(
        (unit, a, b) in unit().prop_flat_map(|u| (Just(u), raw(u), raw(u))),
        gain in 0.001f64..1000.0,
        offset in -1000.0f64..1000.0,
        decimals in 0..=MAX_DECIMALS,
    ) {
        let p = profiles(gain, offset, decimals);
        let device = DeviceId::parse("dev-1").unwrap();
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        let c_lo = p.calibrate(&device, Temperature::new(lo, unit).unwrap()).unwrap().0;
        let c_hi = p.calibrate(&device, Temperature::new(hi, unit).unwrap()).unwrap().0;
        prop_assert!(c_lo <= c_hi, "{lo} -> {c_lo} but {hi} -> {c_hi}");
    }

    /// A °F reading normalised to °C (identity profile) and converted back lands within the
    /// rounding step (in °F) of what the device sent.
    #[test]
    fn fahrenheit_round_trip_within_rounding(
        f in -459.67f64..1.0e6,
        decimals in 0..=MAX_DECIMALS,
    ) {
        let p = profiles(1.0, 0.0, decimals);
        let device = DeviceId::parse("dev-1").unwrap();
        let c = p.calibrate(&device, Temperature::new(f, Unit::Fahrenheit).unwrap()).unwrap().0;
        let back = c * 9.0 / 5.0 + 32.0;
        let step_f = 0.5 * 10f64.powi(-i32::from(decimals)) * 9.0 / 5.0;
        let float_slack = f.abs().max(1.0) * 1e-9;
        prop_assert!((back - f).abs() <= step_f + float_slack, "{f} F -> {c} C -> {back} F");
    }

    /// Rounding a rounded value changes nothing, and never produces -0.
    #[test]
    fn rounding_is_idempotent(x in -1.0e9f64..1.0e9, decimals in 0..=MAX_DECIMALS) {
        let once = round_half_away(x, decimals);
        let twice = round_half_away(once, decimals);
        prop_assert_eq!(once.to_bits(), twice.to_bits(), "{} -> {} -> {}", x, once, twice);
        prop_assert!(!(once == 0.0 && once.is_sign_negative()));
    }
}
