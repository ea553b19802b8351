//! The strict JSON profile (SPEC.md section 4, requirements JSON-1..JSON-12).
//!
//! Every byte that reaches Formica from the network is parsed here, once, into a [`Value`].
//! The profile is I-JSON (RFC 7493) narrowed further so that every accepted document has exactly
//! one RFC 8785 canonical form and nothing is silently altered: duplicate keys, any number that is
//! not an integer in +/-(2^53-1), invalid UTF-8, lone surrogates, a byte-order mark, trailing
//! content, and nesting deeper than a stated limit are all rejected with a stable error code.
//! Parsing is recursive descent over bytes with an explicit depth counter checked before each
//! container is entered, so it never recurses deeper than [`JsonLimits::depth_max`] and hostile
//! nesting cannot exhaust the stack.

use crate::error::ErrorCode;

/// Largest magnitude an integer may have: 2^53 - 1, the largest integer an IEEE-754 double
/// (and so every JSON implementation that follows RFC 8785) represents exactly.
pub const INT_ABS_MAX: i64 = (1 << 53) - 1;

/// Default bound on nesting depth (objects and arrays). Envelopes need 4 levels plus whatever a
/// payload uses; 32 leaves room for structured payloads while keeping every consumer's recursion
/// shallow.
pub const JSON_DEPTH_MAX_DEFAULT: usize = 32;

/// Default bound on a document's size in bytes (64 KiB), the relay's default `envelope_bytes_max`.
pub const JSON_BYTES_MAX_DEFAULT: usize = 64 * 1024;

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Maximum document size in bytes; larger input is refused before parsing (`too_large`).
    pub bytes_max: usize,
    /// Maximum nesting of arrays and objects; the top-level value is depth 1 (`too_deep`).
    pub depth_max: usize,
}

impl Default for JsonLimits {
    fn default() -> Self {
        JsonLimits {
            bytes_max: JSON_BYTES_MAX_DEFAULT,
            depth_max: JSON_DEPTH_MAX_DEFAULT,
        }
    }
}

/// A JSON value admitted by the strict profile. Objects keep their members in input order (the
/// canonicalizer sorts them); keys are unique by construction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    Bool(bool),
    /// Always within `-INT_ABS_MAX..=INT_ABS_MAX`.
    Int(i64),
    String(String),
    Array(Vec<Value>),
    Object(Object),
}

/// A JSON object with unique keys, in insertion order. Equality ignores member order, as JSON's
/// does.
#[derive(Debug, Clone, Eq, Default)]
pub struct Object {
    members: Vec<(String, Value)>,
}

impl PartialEq for Object {
    fn eq(&self, other: &Self) -> bool {
        self.members.len() == other.members.len()
            && self.members.iter().all(|(k, v)| other.get(k) == Some(v))
    }
}

impl Object {
    pub fn new() -> Self {
        Object::default()
    }

    /// Looks a member up by key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Looks a member up by key, for changing it in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut Value> {
        self.members
            .iter_mut()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    /// Inserts or replaces a member; returns the previous value.
    pub fn insert(&mut self, key: impl Into<String>, value: Value) -> Option<Value> {
        let key = key.into();
        if let Some(slot) = self.members.iter_mut().find(|(k, _)| *k == key) {
            return Some(std::mem::replace(&mut slot.1, value));
        }
        self.members.push((key, value));
        None
    }

    /// Removes a member by key.
    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let pos = self.members.iter().position(|(k, _)| k == key)?;
        Some(self.members.remove(pos).1)
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Members in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.members.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(k, _)| k.as_str())
    }
}

impl FromIterator<(String, Value)> for Object {
    fn from_iter<T: IntoIterator<Item = (String, Value)>>(iter: T) -> Self {
        let mut o = Object::new();
        for (k, v) in iter {
            o.insert(k, v);
        }
        o
    }
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn as_object(&self) -> Option<&Object> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
    /// The JSON type name used in error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }
    /// Nesting depth as the parser counts it (JSON-8): containers only, so a scalar is 0, `[]`
    /// and `[1]` are 1, `[[]]` is 2.
    pub fn depth(&self) -> usize {
        match self {
            Value::Array(a) => 1 + a.iter().map(Value::depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.iter().map(|(_, v)| v.depth()).max().unwrap_or(0),
            _ => 0,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Self {
        Value::String(s)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}
impl From<Object> for Value {
    fn from(o: Object) -> Self {
        Value::Object(o)
    }
}

/// Why a document was refused. Offsets are byte offsets into the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    #[error("document is {len} bytes, more than the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("invalid UTF-8 at byte {offset}")]
    InvalidUtf8 { offset: usize },
    #[error("malformed JSON at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: &'static str },
    #[error("duplicate object key {key:?} at byte {offset}")]
    DuplicateKey { offset: usize, key: String },
    #[error("number at byte {offset} is not an integer (fractions and exponents are not allowed)")]
    FloatNotAllowed { offset: usize },
    #[error("integer at byte {offset} is outside +/-(2^53-1)")]
    IntegerOutOfRange { offset: usize },
    #[error("lone UTF-16 surrogate escape at byte {offset}")]
    LoneSurrogate { offset: usize },
    #[error("nesting deeper than {max} at byte {offset}")]
    TooDeep { offset: usize, max: usize },
}

impl JsonError {
    /// The stable error code (SPEC.md, error registry).
    pub fn code(&self) -> ErrorCode {
        match self {
            JsonError::TooLarge { .. } => ErrorCode::TooLarge,
            JsonError::InvalidUtf8 { .. } => ErrorCode::InvalidUtf8,
            JsonError::Malformed { .. } => ErrorCode::MalformedJson,
            JsonError::DuplicateKey { .. } => ErrorCode::DuplicateKey,
            JsonError::FloatNotAllowed { .. } => ErrorCode::FloatNotAllowed,
            JsonError::IntegerOutOfRange { .. } => ErrorCode::IntegerOutOfRange,
            JsonError::LoneSurrogate { .. } => ErrorCode::LoneSurrogate,
            JsonError::TooDeep { .. } => ErrorCode::TooDeep,
        }
    }
}

/// Parses one document under the strict profile with the given limits.
pub fn parse(input: &[u8], limits: JsonLimits) -> Result<Value, JsonError> {
    if input.len() > limits.bytes_max {
        return Err(JsonError::TooLarge {
            len: input.len(),
            max: limits.bytes_max,
        });
    }
    // JSON-2: the whole input must be UTF-8 (this also refuses overlong forms and UTF-8-encoded
    // surrogates), checked before any structure is looked at.
    if let Err(e) = std::str::from_utf8(input) {
        return Err(JsonError::InvalidUtf8 {
            offset: e.valid_up_to(),
        });
    }
    let mut p = Parser {
        b: input,
        i: 0,
        depth_max: limits.depth_max,
    };
    p.skip_ws();
    if p.b.len() >= 3 && &p.b[..3] == b"\xEF\xBB\xBF" {
        return Err(p.malformed("byte-order mark is not allowed"));
    }
    let v = p.value(1)?;
    p.skip_ws();
    if p.i != p.b.len() {
        return Err(p.malformed("trailing content after the document"));
    }
    Ok(v)
}

/// Parses with the default limits.
pub fn parse_default(input: &[u8]) -> Result<Value, JsonError> {
    parse(input, JsonLimits::default())
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
    depth_max: usize,
}

impl Parser<'_> {
    fn malformed(&self, reason: &'static str) -> JsonError {
        JsonError::Malformed {
            offset: self.i,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek() {
            if matches!(c, b' ' | b'\t' | b'\n' | b'\r') {
                self.i += 1;
            } else {
                break;
            }
        }
    }

    fn expect_lit(&mut self, lit: &'static [u8], v: Value) -> Result<Value, JsonError> {
        if self.b[self.i..].starts_with(lit) {
            self.i += lit.len();
            Ok(v)
        } else {
            Err(self.malformed("unexpected character"))
        }
    }

    /// Parses a value whose nesting level is `depth` (containers at `depth` are allowed if
    /// `depth <= depth_max`).
    fn value(&mut self, depth: usize) -> Result<Value, JsonError> {
        match self.peek() {
            None => Err(self.malformed("unexpected end of input")),
            Some(b'n') => self.expect_lit(b"null", Value::Null),
            Some(b't') => self.expect_lit(b"true", Value::Bool(true)),
            Some(b'f') => self.expect_lit(b"false", Value::Bool(false)),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'[') => {
                self.check_depth(depth)?;
                self.array(depth)
            }
            Some(b'{') => {
                self.check_depth(depth)?;
                self.object(depth)
            }
            Some(_) => Err(self.malformed("unexpected character")),
        }
    }

    fn check_depth(&self, depth: usize) -> Result<(), JsonError> {
        if depth > self.depth_max {
            Err(JsonError::TooDeep {
                offset: self.i,
                max: self.depth_max,
            })
        } else {
            Ok(())
        }
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.i += 1; // '['
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value(depth + 1)?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.skip_ws();
                    if self.peek() == Some(b']') {
                        return Err(self.malformed("trailing comma"));
                    }
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(Value::Array(items));
                }
                None => return Err(self.malformed("unexpected end of input")),
                Some(_) => return Err(self.malformed("expected ',' or ']'")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.i += 1; // '{'
        let mut obj = Object::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(Value::Object(obj));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(if self.peek().is_none() {
                    self.malformed("unexpected end of input")
                } else {
                    self.malformed("expected a string key")
                });
            }
            let key_offset = self.i;
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.malformed("expected ':'"));
            }
            self.i += 1;
            self.skip_ws();
            let v = self.value(depth + 1)?;
            // JSON-4: keys are compared after unescaping, as code point sequences.
            if obj.get(&key).is_some() {
                return Err(JsonError::DuplicateKey {
                    offset: key_offset,
                    key,
                });
            }
            obj.members.push((key, v));
            self.skip_ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    self.skip_ws();
                    if self.peek() == Some(b'}') {
                        return Err(self.malformed("trailing comma"));
                    }
                }
                Some(b'}') => {
                    self.i += 1;
                    return Ok(Value::Object(obj));
                }
                None => return Err(self.malformed("unexpected end of input")),
                Some(_) => return Err(self.malformed("expected ',' or '}'")),
            }
        }
    }

    fn number(&mut self) -> Result<Value, JsonError> {
        let start = self.i;
        let neg = self.peek() == Some(b'-');
        if neg {
            self.i += 1;
        }
        let digits_start = self.i;
        match self.peek() {
            Some(b'0') => {
                self.i += 1;
                if matches!(self.peek(), Some(b'0'..=b'9')) {
                    return Err(self.malformed("leading zero in number"));
                }
            }
            Some(b'1'..=b'9') => {
                while matches!(self.peek(), Some(b'0'..=b'9')) {
                    self.i += 1;
                }
            }
            _ => return Err(self.malformed("expected a digit")),
        }
        let digits_end = self.i;
        // A fraction or exponent makes this a float, which the profile refuses (JSON-5) even when
        // its value is integral (`1.0`, `1e2`): the canonical form must be the bytes received.
        if matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return Err(JsonError::FloatNotAllowed { offset: start });
        }
        let digits = &self.b[digits_start..digits_end];
        if neg && digits == b"0" {
            return Err(JsonError::Malformed {
                offset: start,
                reason: "negative zero is not allowed",
            });
        }
        if digits.len() > 16 {
            return Err(JsonError::IntegerOutOfRange { offset: start });
        }
        let mut n: i64 = 0;
        for &d in digits {
            n = n * 10 + i64::from(d - b'0'); // at most 16 digits: cannot overflow i64
        }
        if n > INT_ABS_MAX {
            return Err(JsonError::IntegerOutOfRange { offset: start });
        }
        Ok(Value::Int(if neg { -n } else { n }))
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let mut v: u16 = 0;
        for _ in 0..4 {
            let c = self
                .peek()
                .ok_or_else(|| self.malformed("unexpected end of input in \\u escape"))?;
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                b'A'..=b'F' => c - b'A' + 10,
                _ => return Err(self.malformed("invalid hex digit in \\u escape")),
            };
            v = (v << 4) | u16::from(d);
            self.i += 1;
        }
        Ok(v)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.i += 1; // opening quote
        let mut out = String::new();
        loop {
            // Copy a run of plain bytes at once. The input is known to be valid UTF-8 and the run
            // stops only at ASCII bytes, so each run is a whole number of characters.
            let run_start = self.i;
            while let Some(c) = self.peek() {
                if c == b'"' || c == b'\\' || c < 0x20 {
                    break;
                }
                self.i += 1;
            }
            if self.i > run_start {
                match std::str::from_utf8(&self.b[run_start..self.i]) {
                    Ok(s) => out.push_str(s),
                    Err(_) => return Err(JsonError::InvalidUtf8 { offset: run_start }),
                }
            }
            match self.peek() {
                None => return Err(self.malformed("unterminated string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    let esc_start = self.i;
                    self.i += 1;
                    let c = self
                        .peek()
                        .ok_or_else(|| self.malformed("unterminated escape"))?;
                    self.i += 1;
                    match c {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = self.hex4()?;
                            let cp = match hi {
                                0xD800..=0xDBFF => {
                                    // JSON-7: a high surrogate must be followed at once by an
                                    // escaped low surrogate.
                                    if self.b[self.i..].starts_with(b"\\u") {
                                        self.i += 2;
                                        let lo = self.hex4()?;
                                        if !(0xDC00..=0xDFFF).contains(&lo) {
                                            return Err(JsonError::LoneSurrogate {
                                                offset: esc_start,
                                            });
                                        }
                                        0x10000
                                            + ((u32::from(hi) - 0xD800) << 10)
                                            + (u32::from(lo) - 0xDC00)
                                    } else {
                                        return Err(JsonError::LoneSurrogate { offset: esc_start });
                                    }
                                }
                                0xDC00..=0xDFFF => {
                                    return Err(JsonError::LoneSurrogate { offset: esc_start })
                                }
                                _ => u32::from(hi),
                            };
                            match char::from_u32(cp) {
                                Some(ch) => out.push(ch),
                                None => return Err(JsonError::LoneSurrogate { offset: esc_start }),
                            }
                        }
                        _ => {
                            self.i = esc_start;
                            return Err(self.malformed("invalid escape sequence"));
                        }
                    }
                }
                Some(_) => return Err(self.malformed("unescaped control character in string")),
            }
        }
    }
}
