//! Each room script's copy of the shared prelude (`lua/lib.lua`), cut to what it uses.
//!
//! Redis runs a script's whole text on every call, so every `local function` of the prelude
//! is made again on every call, used or not: linking cut a touch's instructions by 14 %
//! (`queue-core/benches/script_cost.py`). A script gets the prelude's header
//! (keys, arguments, constants) and, in the prelude's order, the functions whose names
//! appear in it or in a function it gets. A name is matched as a whole word anywhere in the
//! text, comments included, so a function can be carried needlessly but never left out.

/// `body` after the part of `lib` it needs.
pub(crate) fn link(lib: &str, body: &str) -> String {
    let (header, functions) = split(lib);
    let mut needed = vec![false; functions.len()];
    let mut pending = vec![body];
    while let Some(text) = pending.pop() {
        for (i, f) in functions.iter().enumerate() {
            if !needed[i] && mentions(text, f.name) {
                needed[i] = true;
                pending.push(f.text);
            }
        }
    }
    let mut out = String::with_capacity(lib.len() + body.len() + 1);
    out.push_str(header);
    for (f, _) in functions.iter().zip(&needed).filter(|(_, n)| **n) {
        out.push_str(f.text);
    }
    out.push('\n');
    out.push_str(body);
    out
}

struct Function<'a> {
    name: &'a str,
    /// The definition with the comment lines just above it.
    text: &'a str,
}

/// The header, then each top-level `local function` (its comment included) up to the next.
fn split(lib: &str) -> (&str, Vec<Function<'_>>) {
    let mut starts = Vec::new();
    let mut offset = 0;
    let mut comment_from = None;
    for line in lib.split_inclusive('\n') {
        if line.starts_with("--") {
            comment_from.get_or_insert(offset);
        } else if let Some(rest) = line.strip_prefix("local function ") {
            let name = &rest[..rest.find('(').unwrap_or(rest.len())];
            starts.push((comment_from.unwrap_or(offset), name.trim()));
            comment_from = None;
        } else {
            comment_from = None;
        }
        offset += line.len();
    }
    let header = &lib[..starts.first().map_or(lib.len(), |s| s.0)];
    let functions = starts
        .iter()
        .enumerate()
        .map(|(i, &(start, name))| {
            let end = starts.get(i + 1).map_or(lib.len(), |s| s.0);
            Function { name, text: &lib[start..end] }
        })
        .collect();
    (header, functions)
}

/// `name` as a whole Lua identifier in `text`.
fn mentions(text: &str, name: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name)
        .any(|(at, _)| !text[..at].ends_with(ident) && !text[at + name.len()..].starts_with(ident))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIB: &str = "-- header\nlocal K = KEYS[1]\n\n-- a's comment\nlocal function a()\n  return 1\nend\n\n\
        local function b_x()\n  return a()\nend\n\n-- c\n-- two lines\nlocal function c()\n  return b_x()\nend\n\n\
        local function d()\n  return 4\nend\n";

    #[test]
    fn a_script_gets_what_it_calls_and_what_that_calls_in_order() {
        let out = link(LIB, "return c()");
        assert_eq!(
            out,
            "-- header\nlocal K = KEYS[1]\n\n-- a's comment\nlocal function a()\n  return 1\nend\n\n\
             local function b_x()\n  return a()\nend\n\n-- c\n-- two lines\nlocal function c()\n  return b_x()\nend\n\n\
             \nreturn c()"
        );
    }

    #[test]
    fn names_match_whole_words_only() {
        let out = link(LIB, "local b = 1 return d()");
        assert!(out.contains("local function d()"));
        assert!(!out.contains("local function b_x()"), "`b` is not `b_x`: {out}");
        assert!(!out.contains("local function a()"));
        assert!(out.starts_with("-- header\nlocal K = KEYS[1]\n"));
    }

    #[test]
    fn the_real_prelude_splits_into_every_function() {
        let lib = include_str!("../../../lua/lib.lua");
        let (header, functions) = split(lib);
        let defined = lib.lines().filter(|l| l.starts_with("local function ")).count();
        assert_eq!(functions.len(), defined);
        assert!(header.contains("local K_CFG"));
        let rebuilt: String = std::iter::once(header).chain(functions.iter().map(|f| f.text)).collect();
        assert_eq!(rebuilt, lib, "the pieces are the whole prelude, in order");
        let status = link(lib, include_str!("../../../lua/status.lua"));
        for used in ["local function ticket_status(", "local function undrawn(", "local function stat("] {
            assert!(status.contains(used), "status needs {used}");
        }
        assert!(!status.contains("local function do_draw("), "status never draws");
    }
}
