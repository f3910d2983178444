//! The committed fuzz corpora (`fuzz/corpus/<target>/`) and the inputs that once failed
//! (`fuzz/regressions/<target>/`, where there are any) replayed through the fuzz targets'
//! functions on the stable toolchain, so `cargo test` keeps every invariant the fuzzers check
//! true for them without cargo-fuzz or nightly. Fuzzing itself: `fuzz/run.sh SECONDS`.

use std::path::{Path, PathBuf};

use queue_gateway::fuzzing;

/// The files of `dir`, sorted; none if it does not exist.
fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

/// Runs `check` on every seed and regression of `target`, and names each input that failed
/// (all of them, not only the first: the panics above say why).
fn replay(target: &str, check: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let seeds = files(&fuzz.join("corpus").join(target));
    assert!(seeds.len() >= 10, "{target}: {} seeds, at least 10 expected", seeds.len());
    let regressions = files(&fuzz.join("regressions").join(target));
    let failed: Vec<&PathBuf> = seeds
        .iter()
        .chain(&regressions)
        .filter(|file| {
            let data = std::fs::read(file).unwrap();
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .collect();
    assert!(failed.is_empty(), "{target}: invariants broken by {failed:#?}");
}

#[test]
fn request_heads() {
    replay("request_head", fuzzing::request_head);
}

#[test]
fn chunked_bodies() {
    replay("chunked", fuzzing::chunked);
}

#[test]
fn response_heads() {
    replay("response_head", fuzzing::response_head);
}

#[test]
fn cookies() {
    replay("cookies", fuzzing::cookies);
}

#[test]
fn paths() {
    replay("path", fuzzing::path);
}
