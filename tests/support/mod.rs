//! End-to-end test support: the shared harness (`xtask::harness`) and the behaviour every host
//! must show (`scenario`).
#![allow(dead_code)] // each test binary uses a different part

pub mod scenario;

pub use xtask::harness::*;
