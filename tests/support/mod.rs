//! End-to-end test support: the shared harness (`xtask::harness`) and the behaviour every host
//! must show (`scenario`), and the hostile-input suite (`hostile`).
#![allow(dead_code)] // each test binary uses a different part

pub mod hostile;
pub mod scenario;

pub use xtask::harness::*;
