//! Fuzz target `crdt_body`: see `chorus::fuzzing::crdt_body`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| chorus::fuzzing::crdt_body(data));
