#![no_main]
//! Fuzz target: see anomaly_sidecar::fuzzing::detector for the path fed and the invariants checked.

libfuzzer_sys::fuzz_target!(|data: &[u8]| anomaly_sidecar::fuzzing::detector(data));
