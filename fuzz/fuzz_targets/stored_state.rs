//! Fuzz target `stored_state`: see `chorus::fuzzing::stored_state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus::fuzzing::stored_state(data));
