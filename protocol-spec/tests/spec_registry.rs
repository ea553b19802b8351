//! Keeps SPEC.md and the code in step: the error-code registry table in SPEC.md section 14 must
//! list exactly the codes of `ErrorCode`, with the same HTTP status and retry class, and every
//! requirement id that the code cites must be defined in SPEC.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use formica_protocol::ErrorCode;
use std::collections::BTreeSet;
use std::path::PathBuf;

fn spec() -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("SPEC.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn registry_table_matches_error_codes() {
    let spec = spec();
    let mut rows = Vec::new();
    for line in spec.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        // | `code` | 400 | no | meaning |
        if cells.len() >= 5 && cells[1].starts_with('`') && cells[2].parse::<u16>().is_ok() {
            let code = cells[1].trim_matches('`').to_owned();
            if ErrorCode::from_wire(&code).is_some()
                || code.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            {
                rows.push((code, cells[2].parse::<u16>().unwrap(), cells[3].to_owned()));
            }
        }
    }
    let want: Vec<(String, u16, String)> = ErrorCode::ALL
        .iter()
        .map(|c| {
            (
                c.as_str().to_owned(),
                c.http_status(),
                c.retry().as_str().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        rows, want,
        "SPEC.md registry table and ErrorCode differ (order, status or retry)"
    );
}

#[test]
fn requirement_ids_cited_in_code_are_defined() {
    let spec = spec();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut cited = BTreeSet::new();
    // Every source file, in subfolders too (`envelope/`, `keylog/`).
    let mut dirs = vec![src];
    let mut files = Vec::new();
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    for path in files {
        let text = std::fs::read_to_string(path).unwrap();
        for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-')) {
            if let Some((prefix, num)) = word.split_once('-') {
                // Not requirement ids: names of encodings and standards.
                let is_standard = matches!(prefix, "UTF" | "IEEE" | "RFC" | "ISO");
                let is_id = !is_standard
                    && prefix.len() >= 3
                    && prefix.chars().all(|c| c.is_ascii_uppercase())
                    && !num.is_empty()
                    && num.chars().all(|c| c.is_ascii_digit());
                if is_id {
                    cited.insert(word.to_owned());
                }
            }
        }
    }
    assert!(cited.len() > 20, "found only {cited:?}");
    let missing: Vec<&String> = cited
        .iter()
        .filter(|id| !spec.contains(&format!("**{id} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "requirement ids cited in code but not defined in SPEC.md: {missing:?}"
    );
}
