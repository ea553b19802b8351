//! The source tree is the architecture (ARCHITECTURE.md), and these checks keep it so:
//!
//! 1. `relay/src` is in layers, each a folder: `store` < `engine` < `federation` < `http`, with
//!    the crate root files (`lib.rs`, `main.rs`, `config.rs`) above them. A file may name only
//!    its own layer or one below: every `use` tree is expanded (braces, several lines, globs)
//!    and every `crate::`, `super::` and `self::` path resolved as the compiler resolves it; the
//!    crate root itself (`use crate::*`, `super::*` from a layer's `mod.rs`) counts as the top.
//! 2. Within `http/`, a handler module (one resource group) names no other handler module;
//!    only the router (`http/mod.rs`) names them all.
//! 3. Each layer keeps its engines to itself: only `store/` names redb, only `http/` names axum
//!    and hyper, only `federation/` names ureq, only `store/` names tokio_postgres, and
//!    `store/` does not name tokio except `store/postgres/`, which runs the PostgreSQL client on
//!    a runtime of its own ([`ALLOWED_CRATES`]).
//! 4. No source file of `relay/src`, `keytool/src` or `protocol-spec/src` is longer than
//!    [`FILE_LINES_MAX`] lines, not counting a `#[cfg(test)]` module at its end.
//!
//! Comment lines are not read: a doc comment may mention a layer above without depending on it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

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
    "conversations",
    "envelopes",
    "federation",
    "inbox",
    "messages",
    "ops",
    "presence",
    "profiles",
    "replicas",
];

/// External crates each layer may not name.
const FORBIDDEN_CRATES: &[(&str, &[&str])] = &[
    ("store", &["axum", "hyper", "ureq", "tokio"]),
    (
        "engine",
        &[
            "axum",
            "hyper",
            "ureq",
            "redb",
            "tokio_postgres",
            "tokio_postgres_rustls",
        ],
    ),
    (
        "federation",
        &[
            "axum",
            "hyper",
            "redb",
            "tokio_postgres",
            "tokio_postgres_rustls",
        ],
    ),
    (
        "http",
        &["redb", "ureq", "tokio_postgres", "tokio_postgres_rustls"],
    ),
];

/// Exceptions to [`FORBIDDEN_CRATES`]: a folder under `relay/src` and a crate it may name. The
/// PostgreSQL store drives its asynchronous client on a small tokio runtime of its own (the
/// `Store` trait is synchronous and called from the relay's runtime threads).
const ALLOWED_CRATES: &[(&str, &str)] = &[("store/postgres/", "tokio")];

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

/// Where a path's first module stands; the crate root and its items (`config`, `Relay`, ...)
/// stand above every layer.
fn rank(first: Option<&str>) -> usize {
    first
        .and_then(|f| LAYERS.iter().position(|l| *l == f))
        .unwrap_or(LAYERS.len())
}

/// The file's text with comment lines blanked (line numbers kept).
fn code(text: &str) -> String {
    text.lines()
        .map(|l| {
            if l.trim_start().starts_with("//") {
                ""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The tokens of a `use` tree: identifiers, `::`, and single characters (`{`, `}`, `,`, `*`).
fn tokens(tree: &str) -> Vec<String> {
    let cs: Vec<char> = tree.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < cs.len() {
        let c = cs[i];
        if c.is_whitespace() {
            i += 1;
        } else if is_ident(c) {
            let start = i;
            while i < cs.len() && is_ident(cs[i]) {
                i += 1;
            }
            out.push(cs[start..i].iter().collect());
        } else if c == ':' && cs.get(i + 1) == Some(&':') {
            out.push("::".into());
            i += 2;
        } else {
            out.push(c.to_string());
            i += 1;
        }
    }
    out
}

/// Expands one `use` tree (`crate::{engine::{a, b}, http}`) into the paths it names; a glob
/// ends its path with `*`, and `x as y` names `x`.
fn expand(toks: &[String], i: &mut usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = prefix;
    while *i < toks.len() {
        match toks[*i].as_str() {
            "{" => {
                *i += 1;
                while *i < toks.len() && toks[*i] != "}" {
                    expand(toks, i, path.clone(), out);
                    if toks.get(*i).map(String::as_str) == Some(",") {
                        *i += 1;
                    }
                }
                *i += 1; // the closing brace
                return;
            }
            "*" => {
                *i += 1;
                path.push("*".into());
                out.push(path);
                return;
            }
            "::" => *i += 1,
            "," | "}" => break,
            "as" => *i += 2,
            seg => {
                path.push(seg.to_owned());
                *i += 1;
            }
        }
    }
    out.push(path);
}

/// Resolves a path as the compiler would from `module`: `crate::` from the root, each `super::`
/// one module up, `self::` here. A path that starts elsewhere (an external crate, a local name)
/// gives `None`. The result is the module path from the crate root, without a trailing `self`
/// or `*`; empty means the crate root itself.
fn resolve(path: &[String], module: &[String]) -> Option<Vec<String>> {
    let mut base = match path.first().map(String::as_str) {
        Some("crate") => Vec::new(),
        Some("super") | Some("self") => module.to_vec(),
        _ => return None,
    };
    let mut rest = if path[0] == "crate" { &path[1..] } else { path };
    while let Some(first) = rest.first() {
        match first.as_str() {
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => break,
        }
        rest = &rest[1..];
    }
    base.extend(
        rest.iter()
            .filter(|s| !matches!(s.as_str(), "self" | "*"))
            .cloned(),
    );
    Some(base)
}

/// Every crate path a file names, with its line: each `use` declaration's tree expanded (across
/// lines and braces), then the `crate::`, `super::` and `self::` paths in the rest of the code.
fn named_paths(text: &str, module: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut code = code(text);
    let line_of = |code: &str, at: usize| code[..at].matches('\n').count() + 1;
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("use ").map(|a| a + from) {
        let starts_item = code[..at]
            .chars()
            .last()
            .is_none_or(|c| !is_ident(c) && c != ':');
        let Some(end) = code[at..].find(';').map(|e| e + at) else {
            break;
        };
        if !starts_item {
            from = at + 4;
            continue;
        }
        let line = line_of(&code, at);
        let toks = tokens(&code[at + 4..end]);
        let mut paths = Vec::new();
        let mut i = 0;
        expand(&toks, &mut i, Vec::new(), &mut paths);
        for p in paths {
            if let Some(r) = resolve(&p, module) {
                out.push((line, r));
            }
        }
        // Blanked once read, so that the pass below does not read it again.
        let blank: String = code[at..end]
            .chars()
            .map(|c| if c == '\n' { c } else { ' ' })
            .collect();
        code.replace_range(at..end, &blank);
        from = end;
    }
    let bytes = code.as_bytes();
    for pat in ["crate::", "super::", "self::"] {
        for (at, _) in code.match_indices(pat) {
            if at > 0 && (is_ident(bytes[at - 1] as char) || bytes[at - 1] == b':') {
                continue; // inside a longer path (`formica_protocol::...`, `super::super::`)
            }
            let mut segs = Vec::new();
            let mut rest = &code[at..];
            loop {
                let seg: String = rest.chars().take_while(|c| is_ident(*c)).collect();
                if seg.is_empty() {
                    break;
                }
                rest = &rest[seg.len()..];
                segs.push(seg);
                match rest.strip_prefix("::") {
                    Some(r) => rest = r,
                    None => break,
                }
            }
            if let Some(r) = resolve(&segs, module) {
                out.push((line_of(&code, at), r));
            }
        }
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
        let own = module.first().map(String::as_str);
        let own_rank = rank(own);
        let own = own.unwrap_or("(root)");
        let text = std::fs::read_to_string(&file).expect("read");
        for (n, path) in named_paths(&text, &module) {
            if rank(path.first().map(String::as_str)) > own_rank {
                let named = if path.is_empty() {
                    "the crate root".to_owned()
                } else {
                    path.join("::")
                };
                bad.push(format!(
                    "{}:{n}: layer `{own}` names `{named}`, which is above it",
                    rel.display()
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
        for (i, line) in code(&text).lines().enumerate() {
            if own_rank < LAYERS.len() && line.contains("formica_relay::") {
                let n = i + 1;
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
        let allowed = |c: &str| {
            ALLOWED_CRATES
                .iter()
                .any(|(dir, a)| *a == c && rel.starts_with(dir))
        };
        for (i, line) in code(&text).lines().enumerate() {
            for c in crates.iter().filter(|c| !allowed(c)) {
                let pat = format!("{c}::");
                let named = line.match_indices(&pat).any(|(at, _)| {
                    let b = line.as_bytes();
                    at == 0 || !(is_ident(b[at - 1] as char) || b[at - 1] == b':')
                });
                if named {
                    bad.push(format!(
                        "{}:{}: layer `{own}` names `{c}`",
                        rel.display(),
                        i + 1
                    ));
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

/// Lines of a source file that count against the limit: all but a `#[cfg(test)]` module that
/// runs to the end of the file.
fn counted_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    let tests_at = lines.iter().enumerate().rev().find_map(|(i, l)| {
        let opens_module = lines[i + 1..]
            .iter()
            .find(|n| !n.trim_start().starts_with("#["))
            .is_some_and(|n| n.trim_start().starts_with("mod "));
        (l.trim() == "#[cfg(test)]" && opens_module && lines.last() == Some(&"}")).then_some(i)
    });
    tests_at.unwrap_or(lines.len())
}

#[test]
fn no_source_file_is_longer_than_the_limit() {
    let root = manifest().join("..");
    let mut lengths = BTreeMap::new();
    for dir in ["relay/src", "keytool/src", "protocol-spec/src"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).expect("read");
            let rel = file
                .strip_prefix(&root)
                .expect("under root")
                .display()
                .to_string();
            lengths.insert(rel, counted_lines(&text));
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

/// The checker itself: paths are found in every shape rustfmt writes, and resolved the way the
/// compiler resolves them.
#[test]
fn named_paths_expand_use_trees_and_resolve_crate_super_and_self() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<String>>();
    let paths = |text: &str, module: &[String]| -> Vec<Vec<String>> {
        named_paths(text, module)
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    };
    let ingest = s(&["engine", "decide", "ingest"]);
    assert_eq!(
        paths("use crate::http::App;", &ingest),
        vec![s(&["http", "App"])]
    );
    assert_eq!(
        paths("use super::{agent, Ctx};", &ingest),
        vec![
            s(&["engine", "decide", "agent"]),
            s(&["engine", "decide", "Ctx"])
        ]
    );
    assert_eq!(
        paths("x(super::super::super::config::X)", &ingest),
        vec![s(&["config", "X"])]
    );
    assert!(paths("formica_protocol::crate::x; let y = reuse a;", &ingest).is_empty());
    // Groups, also across lines and nested, and renames.
    assert_eq!(
        paths("use crate::{engine, http};", &ingest),
        vec![s(&["engine"]), s(&["http"])]
    );
    assert_eq!(
        paths(
            "pub use crate::{\n    engine::{a as b, c},\n    http::App,\n};",
            &ingest
        ),
        vec![
            s(&["engine", "a"]),
            s(&["engine", "c"]),
            s(&["http", "App"])
        ]
    );
    // Globs and `super::` reaching the crate root from a layer's mod.rs: the root itself.
    let engine = s(&["engine"]);
    assert_eq!(paths("use super::*;", &engine), vec![Vec::<String>::new()]);
    assert_eq!(paths("use crate::*;", &ingest), vec![Vec::<String>::new()]);
    assert_eq!(
        paths("use super::{http::App};", &engine),
        vec![s(&["http", "App"])]
    );
    assert_eq!(paths("use super::config;", &engine), vec![s(&["config"])]);
    assert_eq!(
        paths("use self::cell::StateCell;", &engine),
        vec![s(&["engine", "cell", "StateCell"])]
    );
    // What the layer rule makes of them.
    assert_eq!(rank(None), LAYERS.len());
    assert_eq!(rank(Some("config")), LAYERS.len());
    assert_eq!(rank(Some("store")), 0);
    assert_eq!(module_path(Path::new("engine/mod.rs")), engine);
    assert!(module_path(Path::new("lib.rs")).is_empty());
    // Only a test module at the end is left out of a file's length.
    assert_eq!(
        counted_lines("fn a() {}\n#[cfg(test)]\nmod tests {\n    fn t() {}\n}"),
        1
    );
    assert_eq!(
        counted_lines("#[cfg(test)]\nfn helper() {}\nfn a() {}\nfn b() {}"),
        4
    );
}
