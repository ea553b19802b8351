//! The source tree is the architecture (ARCHITECTURE.md), and these checks keep it so:
//!
//! 1. `relay/src` is in layers, each a folder: `store` < `engine` < `federation` < `http`, with
//!    the crate root files (`lib.rs`, `main.rs`, `config.rs`) above them. A file may name
//!    (`crate::x`, or `super::` paths that leave its layer) only its own layer or one below.
//! 2. Within `http/`, a handler module (one resource group) names no other handler module;
//!    only the router (`http/mod.rs`) names them all.
//! 3. Each layer keeps its engines to itself: only `store/` names redb, only `http/` names axum
//!    and hyper, only `federation/` names ureq.
//! 4. No source file of `relay/src`, `keytool/src` or `protocol-spec/src` is longer than
//!    [`FILE_LINES_MAX`] lines, not counting a `#[cfg(test)]` module at its end.
//!
//! Comment lines are not read: a doc comment may mention a layer above without depending on it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Longest source file, in lines before its unit tests: past this, a file is usually two things.
const FILE_LINES_MAX: usize = 600;

/// Layers from the bottom; a file's layer is the first folder of its path under `relay/src`.
const LAYERS: &[&str] = &["store", "engine", "federation", "http"];

/// The handler modules of `http/` (one resource group each).
const HANDLERS: &[&str] = &[
    "admin",
    "agents",
    "contacts",
    "envelopes",
    "federation",
    "inbox",
    "messages",
    "ops",
];

/// External crates each layer may not name.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    ("store", &["axum", "hyper", "ureq", "tokio"]),
    ("engine", &["axum", "hyper", "ureq", "redb"]),
    ("federation", &["axum", "hyper", "redb"]),
    ("http", &["redb", "ureq"]),
];

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.expect("dir entry").path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The module path of a file under `relay/src` (`engine/decide/ingest.rs` -> engine, decide,
/// ingest; `engine/mod.rs` -> engine; `lib.rs` -> nothing).
fn module_path(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if !matches!(stem, "mod" | "lib" | "main") {
        parts.push(stem.to_owned());
    }
    parts
}

/// Where a layer stands; crate root items (`config`, `Relay`, ...) stand above every layer.
fn rank(first: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| *l == first)
        .unwrap_or(LAYERS.len())
}

fn code_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l))
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every module path a line names from the crate: `crate::a::b` gives `[a, b]`, and a chain of
/// `super::` is resolved against `module` (a path that reaches the crate root gives its rest).
fn named_paths(line: &str, module: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes = line.as_bytes();
    for (at, _) in line
        .match_indices("crate::")
        .chain(line.match_indices("super::"))
    {
        if at > 0 && (is_ident(bytes[at - 1] as char) || bytes[at - 1] == b':') {
            continue; // part of a longer path (`formica_protocol::...`, `super::super::`)
        }
        let rest = &line[at..];
        let mut segs: Vec<&str> = Vec::new();
        for s in rest.split("::") {
            let ident: String = s.chars().take_while(|c| is_ident(*c)).collect();
            let whole = ident.len() == s.len();
            if !ident.is_empty() {
                segs.push(&s[..ident.len()]);
            }
            if !whole || ident.is_empty() {
                break;
            }
        }
        let mut base: Vec<String> = Vec::new();
        let mut i = 0;
        if segs.first() == Some(&"crate") {
            i = 1;
        } else {
            base = module.to_vec();
            while segs.get(i) == Some(&"super") {
                base.pop();
                i += 1;
            }
        }
        base.extend(segs[i..].iter().map(|s| s.to_string()));
        // `use super::{a, b}` names the module `super` resolves to: its own layer.
        out.push(base);
    }
    out
}

#[test]
fn layers_import_only_layers_below_them() {
    let src = manifest().join("src");
    let mut bad = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).expect("under src").to_path_buf();
        let module = module_path(&rel);
        let own = module.first().map(String::as_str).unwrap_or("");
        let own_rank = rank(own);
        let text = std::fs::read_to_string(&file).expect("read");
        for (n, line) in code_lines(&text) {
            for path in named_paths(line, &module) {
                let Some(first) = path.first() else { continue };
                if rank(first) > own_rank {
                    bad.push(format!(
                        "{}:{n}: layer `{own}` names `{}`, which is above it",
                        rel.display(),
                        path.join("::")
                    ));
                }
                // Rule 2: handler modules stay apart.
                if own == "http" && path.len() >= 2 && path[0] == "http" {
                    let me = module.get(1).map(String::as_str).unwrap_or("mod");
                    let target = path[1].as_str();
                    if HANDLERS.contains(&target) && me != "mod" && me != target {
                        bad.push(format!(
                            "{}:{n}: `http::{me}` names the handler module `http::{target}`",
                            rel.display()
                        ));
                    }
                }
            }
            if own_rank < LAYERS.len() && line.contains("formica_relay::") {
                bad.push(format!(
                    "{}:{n}: names the crate by its external name",
                    rel.display()
                ));
            }
        }
    }
    assert!(bad.is_empty(), "layering broken:\n{}", bad.join("\n"));
}

#[test]
fn each_layer_keeps_its_engines_to_itself() {
    let src = manifest().join("src");
    let mut bad = Vec::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).expect("under src").to_path_buf();
        let module = module_path(&rel);
        let own = module.first().map(String::as_str).unwrap_or("");
        let Some((_, crates)) = FORBIDDEN_CRATES.iter().find(|(l, _)| *l == own) else {
            continue;
        };
        let text = std::fs::read_to_string(&file).expect("read");
        for (n, line) in code_lines(&text) {
            for c in *crates {
                let pat = format!("{c}::");
                let named = line.match_indices(&pat).any(|(at, _)| {
                    at == 0
                        || !(is_ident(line.as_bytes()[at - 1] as char)
                            || line.as_bytes()[at - 1] == b':')
                });
                if named {
                    bad.push(format!("{}:{n}: layer `{own}` names `{c}`", rel.display()));
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "a layer names another layer's engine:\n{}",
        bad.join("\n")
    );
}

#[test]
fn no_source_file_is_longer_than_the_limit() {
    let root = manifest().join("..");
    let mut lengths = BTreeMap::new();
    for dir in ["relay/src", "keytool/src", "protocol-spec/src"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).expect("read");
            let lines = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .count();
            let rel = file
                .strip_prefix(&root)
                .expect("under root")
                .display()
                .to_string();
            lengths.insert(rel, lines);
        }
    }
    assert!(lengths.len() > 40, "found only {lengths:?}");
    let long: Vec<String> = lengths
        .iter()
        .filter(|(_, n)| **n > FILE_LINES_MAX)
        .map(|(f, n)| format!("{f}: {n} lines"))
        .collect();
    assert!(
        long.is_empty(),
        "source files over {FILE_LINES_MAX} lines (split them by concern):\n{}",
        long.join("\n")
    );
}

/// The checker itself: paths are resolved the way the compiler resolves them.
#[test]
fn named_paths_resolve_crate_and_super() {
    let m: Vec<String> = ["engine", "decide", "ingest"].map(String::from).to_vec();
    assert_eq!(
        named_paths("use crate::http::App;", &m),
        vec![vec!["http".to_string(), "App".into()]]
    );
    assert_eq!(
        named_paths("use super::{agent, Ctx};", &m),
        vec![vec!["engine".to_string(), "decide".into()]]
    );
    assert_eq!(
        named_paths("x(super::super::super::config::X)", &m),
        vec![vec!["config".to_string(), "X".into()]]
    );
    assert!(named_paths("formica_protocol::crate::x", &m).is_empty());
    // A layer's mod.rs reaching up with `super::` leaves the layer.
    let root: Vec<String> = vec!["engine".into()];
    assert_eq!(
        named_paths("use super::config;", &root),
        vec![vec!["config".to_string()]]
    );
    assert_eq!(module_path(Path::new("engine/mod.rs")), root);
    assert!(module_path(Path::new("lib.rs")).is_empty());
}
