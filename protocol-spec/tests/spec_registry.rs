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

/// The text of SPEC.md between the heading `start` and the next heading of the same level.
fn section<'a>(spec: &'a str, start: &str) -> &'a str {
    let from = spec
        .find(start)
        .unwrap_or_else(|| panic!("{start} not in SPEC.md"));
    let rest = &spec[from + start.len()..];
    &rest[..rest.find("\n### ").unwrap_or(rest.len())]
}

/// Hex as SPEC.md's appendix writes it: lines of 64 characters.
fn wrapped(hex: &str) -> String {
    hex.as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Appendix A.3 (and the registration body of A.4) shows the bytes the crate makes for the
/// register entry with a recovery key and the rotate after it, proofs of possession included.
#[test]
fn appendix_key_log_example_is_what_the_crate_makes() {
    use formica_protocol::canon::canonicalize;
    use formica_protocol::hex;
    use formica_protocol::keylog::{KeyLog, KeyLogEntry, KeyOp};
    use formica_protocol::{Handle, SecretKey};

    let seed = |start: u8| -> [u8; 32] { std::array::from_fn(|k| start + k as u8) };
    let (key, recovery, next) = (
        SecretKey::from_seed(&seed(0x01)),
        SecretKey::from_seed(&seed(0x61)),
        SecretKey::from_seed(&seed(0x21)),
    );
    let t0 = 1_764_000_000_000;
    let reg = KeyLogEntry {
        handle: Handle::parse("@kevin@relay-a.example").unwrap(),
        seq: 0,
        prev: None,
        ts: t0,
        op: KeyOp::Register {
            key: key.public(),
            recovery: Some(recovery.public()),
        },
        signer: key.public().key_id(),
    };
    let signed = reg.sign(&key, &[&recovery]).unwrap();
    let log = KeyLog::start(signed.clone()).unwrap();
    let (seq, prev) = log.next_position();
    let rot = KeyLogEntry {
        handle: reg.handle.clone(),
        seq,
        prev: Some(prev),
        ts: t0 + 60_000,
        op: KeyOp::Rotate { key: next.public() },
        signer: key.public().key_id(),
    }
    .sign(&key, &[&next])
    .unwrap();
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
    let recovery_sig = signed.proofs().recovery_sig.unwrap().to_hex();
    let without_sig = &signed.signing_input()[b"formica/v1/keylog\0".len()..];
    let a3 = [
        text(&canonicalize(&reg.to_value())),
        wrapped(&hex::encode(&reg.proof_input())),
        wrapped(&recovery_sig),
        text(without_sig),
        wrapped(&hex::encode(signed.signing_input())),
        signed.hash().to_hex(),
        wrapped(&signed.signature().to_hex()),
        text(&signed.wire_bytes()),
        text(&rot.wire_bytes()),
        rot.hash().to_hex(),
    ];
    let spec = spec();
    let section_a3 = section(&spec, "### A.3 Key log");
    for want in &a3 {
        assert!(
            section_a3.contains(want.as_str()),
            "SPEC.md A.3 does not show what the crate makes:\n{want}"
        );
    }
    let body = format!(
        "{{\"entry\":{},\"pow\":{{\"challenge\":\"000102030405060708090a0b0c0d0e0f\",\"difficulty\":8,\"nonce\":328}}}}",
        text(&signed.wire_bytes())
    );
    let section_a4 = section(&spec, "### A.4 Registration with proof-of-work");
    assert!(section_a4.contains(&body), "SPEC.md A.4 body:\n{body}");
    assert!(section_a4.contains(&format!("\"head\":\"{}\"", signed.hash().to_hex())));
}
