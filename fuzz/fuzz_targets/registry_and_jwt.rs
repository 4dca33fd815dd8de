#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| edge_enrich_fuzz::registry_and_jwt(data));
