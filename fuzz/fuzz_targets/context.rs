//! Fuzz target `context`: see `chorus::fuzzing::context`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus::fuzzing::context(data));
