//! Replays the committed fuzz corpus (`fuzz/corpus/<target>/*`) through the fuzz targets'
//! bodies (`chorus::fuzzing`) on stable Rust: every input that ever crashed a decoder stays
//! fixed, and every seed still passes the targets' assertions. `.dev/fuzz` grows the corpus
//! with cargo-fuzz (nightly); this test needs neither.

use std::path::{Path, PathBuf};

use chorus::fuzzing::TARGETS;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn inputs(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("a readable directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn every_corpus_input_passes_its_target() {
    let mut total = 0;
    for (name, target) in TARGETS {
        let files = inputs(&corpus().join(name));
        assert!(
            !files.is_empty(),
            "no corpus for target {name}: run .dev/fuzz"
        );
        for file in &files {
            let data = std::fs::read(file).expect("a readable corpus file");
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name}: {} fails", file.display());
        }
        total += files.len();
    }
    assert!(total >= TARGETS.len());
}

#[test]
fn the_corpus_has_no_directory_without_a_target() {
    for entry in std::fs::read_dir(corpus()).expect("fuzz/corpus exists") {
        let name = entry.expect("a readable entry").file_name();
        let name = name.to_string_lossy();
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "fuzz/corpus/{name} belongs to no target in chorus::fuzzing::TARGETS"
        );
    }
}
