//! Fuzz target `peer_message`: see `chorus::fuzzing::peer_message`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus::fuzzing::peer_message(data));
