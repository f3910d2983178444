//! The gateway's layering, checked from its sources (the crate docs' Layout): a module imports
//! only from its own layer or those below, the transport and the codec import nothing of what
//! a request means, policy modules never take the whole gateway state, and every module is
//! named in its parent's docs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level modules by layer, top first (`lib.rs`'s Layout; the codec is its own layer
/// below the transport).
const LAYERS: [&[&str]; 7] = [
    &["lib", "main", "fuzzing"],
    &["pipeline"],
    &["api", "background", "state"],
    &["policy", "upstream"],
    &["transport"],
    &["http1"],
    &["config", "error", "metrics"],
];

fn layer(module: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&module))
        .unwrap_or_else(|| panic!("module `{module}` is in no layer"))
}

/// Every source file under `src/` with its top-level module.
fn sources() -> Vec<(String, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&src).unwrap();
            let top = rel.components().next().unwrap().as_os_str().to_str().unwrap();
            (top.trim_end_matches(".rs").to_owned(), path)
        })
        .collect()
}

/// The top-level modules a file names as `crate::x`, outside comments.
fn imports(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
        for hidden in ["crate::{", "super::super", "crate as ", "crate::*"] {
            assert!(!line.contains(hidden), "name each import's path from the crate root: {line}");
        }
        let mut rest = line;
        while let Some(at) = rest.find("crate::") {
            rest = &rest[at + "crate::".len()..];
            let name: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn imports_go_down_the_layers() {
    let mut violations = BTreeMap::new();
    let sources = sources();
    assert!(sources.len() > 30, "found the sources");
    for (module, path) in &sources {
        let text = std::fs::read_to_string(path).unwrap();
        for used in imports(&text) {
            if used != *module && layer(&used) < layer(module) {
                violations.entry(path.display().to_string()).or_insert_with(Vec::new).push(used);
            }
        }
    }
    assert!(violations.is_empty(), "imports up the layers: {violations:#?}");
}

/// The sources of `modules`, each checked to import only from `allowed`.
fn importing_only(modules: &[&str], allowed: &[&str]) -> Vec<(PathBuf, String)> {
    let mut checked = Vec::new();
    for (_, path) in sources().into_iter().filter(|(m, _)| modules.contains(&m.as_str())) {
        let text = std::fs::read_to_string(&path).unwrap();
        for used in imports(&text) {
            assert!(allowed.contains(&used.as_str()), "{} imports `{used}`", path.display());
        }
        checked.push((path, text));
    }
    assert!(!checked.is_empty(), "no sources of {modules:?}");
    checked
}

#[test]
fn the_transport_knows_nothing_of_what_a_request_means() {
    for (path, text) in importing_only(&["transport", "http1"], &["transport", "http1", "config", "error"]) {
        let code: String =
            text.lines().filter(|l| !l.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        let code = code.split("#[cfg(test)]").next().unwrap();
        let words: Vec<&str> = code.split(|c: char| !c.is_ascii_alphanumeric() && c != '_').collect();
        for word in [
            "App",
            "RoomId",
            "TicketId",
            "ADMISSION_HEADER",
            "REPLAY_HEADER",
            "Store",
            "GateId",
            "queue_core",
        ] {
            assert!(!words.contains(&word), "{} names `{word}`", path.display());
        }
        let lower = code.to_ascii_lowercase();
        for header in ["x-admission-token", "x-gate-replay", "wr_admission", "/api/v1/"] {
            assert!(!lower.contains(header), "{} names `{header}`", path.display());
        }
    }
}

/// Policy works on what it is given: no gateway state, no backend connections, no transport.
#[test]
fn policy_takes_narrow_arguments() {
    importing_only(&["policy"], &["policy", "config", "error", "metrics"]);
}

/// A production gateway links no backend code: the library does not depend on the ticketing
/// backend (the all-in-one binary composes the two).
#[test]
fn the_gateway_does_not_depend_on_the_backend() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(!manifest.contains("ticketing-backend") && !manifest.contains("ticketing_backend"), "{manifest}");
    for (_, path) in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("ticketing_backend"), "{} names the backend crate", path.display());
    }
}

/// Each `mod x;` is named in the docs of the file that declares it: a newcomer finds any
/// module from the crate's Layout in one hop.
#[test]
fn every_module_is_in_its_parents_layout() {
    for (_, path) in sources() {
        let text = std::fs::read_to_string(&path).unwrap();
        let docs: String = text.lines().filter(|l| l.starts_with("//!")).collect::<Vec<_>>().join("\n");
        for line in text.lines() {
            let line = line.trim();
            let Some(name) = line.strip_prefix("pub mod ").or_else(|| line.strip_prefix("mod ")) else {
                continue;
            };
            let Some(name) = name.strip_suffix(';') else { continue };
            if name == "tests" {
                continue;
            }
            assert!(
                docs.contains(&format!("[`{name}`]")) || docs.contains(&format!("`{name}`")),
                "{}: module `{name}` is not in its Layout",
                path.display()
            );
        }
    }
}
