//! Shared helpers for unit and property tests (compiled only under `cfg(test)`).

use proptest::test_runner::Config;

/// Cases per property test: 1,000 by default, or `PROPTEST_CASES` when it is set. Failures
/// print their shrunk case but are not persisted to `proptest-regressions/` (the repository's
/// top level is fixed; put a case worth keeping into a named unit test instead).
pub(crate) fn proptest_config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}
