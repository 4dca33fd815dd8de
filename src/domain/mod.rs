//! The domain: what a reading is, how it is calibrated and enriched. No I/O, no HTTP.

pub mod calibration;
pub mod device;
pub mod enrich;
pub mod ids;
pub mod reading;
pub mod unquoted;
