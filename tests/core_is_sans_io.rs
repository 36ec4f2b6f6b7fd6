//! DESIGN.md §1: the deterministic core does no I/O, reads no clock, draws no ambient
//! randomness, starts no threads and iterates no randomly ordered hash maps. This test reads the
//! core's sources and fails on any use of those facilities (comments are ignored).

use std::fs;
use std::path::{Path, PathBuf};

/// Core modules: everything the simulator and the runtime share.
const CORE: &[&str] = &[
    "src/causality",
    "src/crdt",
    "src/ring",
    "src/protocol",
    "src/membership",
    "src/node",
    "src/storage/mod.rs",
    "src/id.rs",
];

/// Facilities the core must not touch, with the reason shown on failure.
const FORBIDDEN: &[(&str, &str)] = &[
    ("tokio", "async runtime"),
    ("quinn", "network"),
    ("rocksdb", "storage I/O"),
    ("UdpSocket", "network"),
    ("TcpStream", "network"),
    ("TcpListener", "network"),
    ("std::fs", "file I/O"),
    ("std::thread", "threads"),
    ("Instant", "ambient clock"),
    ("SystemTime", "ambient clock"),
    ("thread_rng", "ambient randomness"),
    ("rand::rng()", "ambient randomness"),
    ("rand::random", "ambient randomness"),
    ("OsRng", "ambient randomness"),
    ("from_entropy", "ambient randomness"),
    ("from_os_rng", "ambient randomness"),
    ("HashMap", "random iteration order"),
    ("HashSet", "random iteration order"),
    ("DefaultHasher", "randomly keyed hash"),
    ("RandomState", "randomly keyed hash"),
];

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        let mut entries: Vec<_> = fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            rust_files(&p, out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

fn violations(source: &str) -> Vec<(usize, &'static str, &'static str)> {
    let mut found = Vec::new();
    for (i, line) in source.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for &(pattern, why) in FORBIDDEN {
            if code.contains(pattern) {
                found.push((i + 1, pattern, why));
            }
        }
    }
    found
}

#[test]
fn core_modules_use_no_ambient_effects() {
    // Read at run time: a test binary reused from a shared target directory may have been
    // compiled in another checkout, so the compile-time value can name a stale path.
    let root = PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    );
    let root = root.as_path();
    let mut files = Vec::new();
    for dir in CORE {
        rust_files(&root.join(dir), &mut files);
    }
    assert!(files.len() >= 5, "core sources not found: {files:?}");
    let mut report = String::new();
    for file in &files {
        let source = fs::read_to_string(file).unwrap();
        for (line, pattern, why) in violations(&source) {
            report.push_str(&format!("{}:{line}: `{pattern}` ({why})\n", file.display()));
        }
    }
    assert!(report.is_empty(), "the sans-IO core uses:\n{report}");
}

#[test]
fn the_scanner_catches_what_it_looks_for() {
    let planted = "use std::collections::HashMap;\nlet t = std::time::Instant::now(); // ok\n";
    let found: Vec<_> = violations(planted).into_iter().map(|v| v.1).collect();
    assert_eq!(found, vec!["HashMap", "Instant"]);
    assert!(violations("let d = std::time::Duration::from_secs(1);").is_empty());
    assert!(violations("// HashMap in a comment is fine").is_empty());
}
