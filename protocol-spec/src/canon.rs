//! RFC 8785 (JCS) canonical bytes for values of the strict profile (SPEC.md section 4, CANON-1..4).
//!
//! Because the profile admits only integers within +/-(2^53-1), the ECMAScript number
//! serialization of RFC 8785 section 3.2.2.3 reduces to the plain decimal form of the integer.
//! Strings use the RFC 8785 escaping rules, and object members are sorted by the UTF-16 code
//! units of their keys. This is the only canonicalizer in the project.

use crate::json::{Object, Value};

/// Returns the canonical bytes of a value.
pub fn canonicalize(v: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_value(v, &mut out);
    out
}

/// Appends the canonical bytes of a value to `out`.
pub fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        Value::Object(o) => write_object(o, None, out),
    }
}

/// Writes an object, leaving out the members named in `skip` (used to drop `id` and `sig` when
/// building a signing input without copying the object).
pub fn write_object(o: &Object, skip: Option<&[&str]>, out: &mut Vec<u8>) {
    let mut members: Vec<(&str, &Value)> = o
        .iter()
        .filter(|(k, _)| skip.is_none_or(|s| !s.contains(k)))
        .collect();
    // CANON-3: sort by UTF-16 code units, not by UTF-8 bytes or code points.
    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    out.push(b'{');
    for (n, (k, v)) in members.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        write_value(v, out);
    }
    out.push(b'}');
}

/// Writes the canonical bytes of `o` to `full` and, in the same pass, the canonical bytes of
/// `o` without the members named in `skip` to `partial`: each member is serialized once and
/// copied. This is how an envelope's signing input and its wire form are made together.
pub fn write_object_split(o: &Object, skip: &[&str], full: &mut Vec<u8>, partial: &mut Vec<u8>) {
    let mut members: Vec<(&str, &Value)> = o.iter().collect();
    members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
    full.push(b'{');
    partial.push(b'{');
    let mut partial_members = 0;
    for (n, (k, v)) in members.iter().enumerate() {
        if n > 0 {
            full.push(b',');
        }
        let start = full.len();
        write_string(k, full);
        full.push(b':');
        write_value(v, full);
        if !skip.contains(k) {
            if partial_members > 0 {
                partial.push(b',');
            }
            partial.extend_from_slice(&full[start..]);
            partial_members += 1;
        }
    }
    full.push(b'}');
    partial.push(b'}');
}

/// The length of the canonical bytes of `v`, computed without writing them (size limits are
/// checked with this before anything is copied).
pub fn canonical_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(true) => 4,
        Value::Bool(false) => 5,
        Value::Int(i) => {
            let mut n = usize::from(*i < 0);
            let mut m = i.unsigned_abs();
            loop {
                n += 1;
                m /= 10;
                if m == 0 {
                    break n;
                }
            }
        }
        Value::String(s) => string_len(s),
        Value::Array(items) => {
            2 + items.iter().map(canonical_len).sum::<usize>() + items.len().saturating_sub(1)
        }
        Value::Object(o) => {
            2 + o
                .iter()
                .map(|(k, v)| string_len(k) + 1 + canonical_len(v))
                .sum::<usize>()
                + o.len().saturating_sub(1)
        }
    }
}

fn string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|c| match c {
            b'"' | b'\\' | 0x08 | 0x09 | 0x0A | 0x0C | 0x0D => 2,
            0x00..=0x1F => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// CANON-2: RFC 8785 string escaping. Only `"`, `\` and U+0000..U+001F are escaped; the five
/// control characters with short forms use them, the rest use `\u00xx` with lower-case hex.
/// Everything else, including U+007F and U+2028, is written as its UTF-8 bytes.
pub fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut run_start = 0;
    for (i, &c) in bytes.iter().enumerate() {
        let esc: Option<&[u8]> = match c {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            0x08 => Some(b"\\b"),
            0x09 => Some(b"\\t"),
            0x0A => Some(b"\\n"),
            0x0C => Some(b"\\f"),
            0x0D => Some(b"\\r"),
            0x00..=0x1F => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[run_start..i]);
        match esc {
            Some(e) => out.extend_from_slice(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(c >> 4)]);
                out.push(HEX[usize::from(c & 0xF)]);
            }
        }
        run_start = i + 1;
    }
    out.extend_from_slice(&bytes[run_start..]);
    out.push(b'"');
}

/// A readable rendering (two-space indent, members in insertion order, strings escaped as in
/// the canonical form) for files and terminals. Never used for signing.
pub fn to_pretty(v: &Value) -> String {
    let mut out = Vec::new();
    pretty(v, 0, &mut out);
    // Only whole UTF-8 strings and ASCII punctuation were written.
    String::from_utf8_lossy(&out).into_owned()
}

fn pretty(v: &Value, indent: usize, out: &mut Vec<u8>) {
    let pad = |n: usize, out: &mut Vec<u8>| out.extend(std::iter::repeat_n(b' ', n));
    match v {
        Value::Array(items) if !items.is_empty() => {
            // Short arrays of scalars stay on one line.
            if items.len() <= 8
                && items
                    .iter()
                    .all(|i| !matches!(i, Value::Array(_) | Value::Object(_)))
            {
                write_value(v, out);
                return;
            }
            out.extend_from_slice(b"[\n");
            for (n, item) in items.iter().enumerate() {
                pad(indent + 2, out);
                pretty(item, indent + 2, out);
                if n + 1 < items.len() {
                    out.push(b',');
                }
                out.push(b'\n');
            }
            pad(indent, out);
            out.push(b']');
        }
        Value::Object(o) if !o.is_empty() => {
            out.extend_from_slice(b"{\n");
            let n_members = o.len();
            for (n, (k, item)) in o.iter().enumerate() {
                pad(indent + 2, out);
                write_string(k, out);
                out.extend_from_slice(b": ");
                pretty(item, indent + 2, out);
                if n + 1 < n_members {
                    out.push(b',');
                }
                out.push(b'\n');
            }
            pad(indent, out);
            out.push(b'}');
        }
        _ => write_value(v, out),
    }
}
