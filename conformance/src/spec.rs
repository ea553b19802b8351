//! The requirements of `protocol-spec/SPEC.md`, read from the spec text itself (embedded at
//! build time, so the binary works anywhere): every bold `**ID (LEVEL)**` marker is one
//! requirement. The coverage table and the per-requirement report are keyed by these ids.

use std::collections::BTreeMap;

/// The normative spec this suite was built against.
pub const SPEC_MD: &str = include_str!("../../protocol-spec/SPEC.md");

/// Requirement level (BCP 14 key words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Must,
    Should,
    May,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Must => "MUST",
            Level::Should => "SHOULD",
            Level::May => "MAY",
        }
    }
    pub fn parse(s: &str) -> Option<Level> {
        match s {
            "MUST" => Some(Level::Must),
            "SHOULD" => Some(Level::Should),
            "MAY" => Some(Level::May),
            _ => None,
        }
    }
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One requirement of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement {
    pub id: String,
    pub level: Level,
    /// The section heading the requirement sits under (`6.1 Members`).
    pub section: String,
    /// Marked withdrawn in the spec (kept for its number, checks nothing).
    pub withdrawn: bool,
}

/// Parses every `**ID (LEVEL)**` marker of `text`, in document order. An id looks like
/// `ENV-3` or `RELAY-REQ-1`: upper-case words joined by `-`, ending in a number. The level
/// may be followed by more words (`(MUST, withdrawn)`).
pub fn parse_requirements(text: &str) -> Vec<Requirement> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in text.lines() {
        if let Some(h) = line
            .strip_prefix("## ")
            .or_else(|| line.strip_prefix("### "))
        {
            section = h.trim().to_owned();
        }
        let mut rest = line;
        while let Some(start) = rest.find("**") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("**") else { break };
            let inner = &after[..end];
            rest = &after[end + 2..];
            let Some((id, level)) = inner.split_once(" (") else {
                continue;
            };
            let Some(level) = level.strip_suffix(')') else {
                continue;
            };
            if !is_requirement_id(id) {
                continue;
            }
            let mut words = level.split(',').map(str::trim);
            let Some(lv) = words.next().and_then(Level::parse) else {
                continue;
            };
            let withdrawn = words.any(|w| w.eq_ignore_ascii_case("withdrawn"));
            out.push(Requirement {
                id: id.to_owned(),
                level: lv,
                section: section.clone(),
                withdrawn,
            });
        }
    }
    out
}

/// `WORD(-WORD)*-NUMBER`, words of `A-Z0-9` starting with a letter.
pub fn is_requirement_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    if parts.len() < 2 {
        return false;
    }
    let (num, words) = parts.split_last().unwrap_or((&"", &[]));
    !num.is_empty()
        && num.bytes().all(|b| b.is_ascii_digit())
        && words.iter().all(|w| {
            w.as_bytes().first().is_some_and(u8::is_ascii_uppercase)
                && w.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        })
}

/// The requirements of the embedded spec, by id.
pub fn requirements() -> &'static [Requirement] {
    static REQS: std::sync::OnceLock<Vec<Requirement>> = std::sync::OnceLock::new();
    REQS.get_or_init(|| parse_requirements(SPEC_MD))
}

/// The level of `id` in the embedded spec, if the spec defines it.
pub fn level_of(id: &str) -> Option<Level> {
    requirements().iter().find(|r| r.id == id).map(|r| r.level)
}

/// The committed list of requirements that no black-box HTTP case can check, with the reason
/// (one `ID  reason` per line; `#` starts a comment).
pub const NOT_APPLICABLE_TXT: &str = include_str!("../not_applicable.txt");

/// Parses [`NOT_APPLICABLE_TXT`]-style text into id -> reason.
pub fn parse_not_applicable(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, reason) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("not_applicable.txt line {}: expected `ID  reason`", n + 1))?;
        let reason = reason.trim();
        if !is_requirement_id(id) || reason.is_empty() {
            return Err(format!(
                "not_applicable.txt line {}: expected `ID  reason`",
                n + 1
            ));
        }
        if out.insert(id.to_owned(), reason.to_owned()).is_some() {
            return Err(format!(
                "not_applicable.txt line {}: {id} listed twice",
                n + 1
            ));
        }
    }
    Ok(out)
}

/// The embedded not-applicable list.
pub fn not_applicable() -> &'static BTreeMap<String, String> {
    static NA: std::sync::OnceLock<BTreeMap<String, String>> = std::sync::OnceLock::new();
    NA.get_or_init(|| parse_not_applicable(NOT_APPLICABLE_TXT).unwrap_or_default())
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_markers_with_levels_and_sections() {
        let t = "## 6 Envelopes\n**ENV-3 (MUST)** text **not (an id)** and\n- **RELAY-REQ-1 (SHOULD)** x\n**OLD-2 (MUST, withdrawn)** gone\n";
        let r = parse_requirements(t);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].id, "ENV-3");
        assert_eq!(r[0].level, Level::Must);
        assert_eq!(r[0].section, "6 Envelopes");
        assert_eq!(r[1].id, "RELAY-REQ-1");
        assert_eq!(r[1].level, Level::Should);
        assert!(r[2].withdrawn);
    }

    #[test]
    fn embedded_spec_has_requirements() {
        let r = requirements();
        assert!(r.len() > 100, "{} requirements", r.len());
        assert!(r.iter().any(|x| x.id == "ENV-16" && x.level == Level::Must));
    }

    #[test]
    fn not_applicable_list_parses_and_names_spec_ids() {
        let na = parse_not_applicable(NOT_APPLICABLE_TXT).expect("list parses");
        for id in na.keys() {
            assert!(
                level_of(id).is_some(),
                "{id} in not_applicable.txt is not a SPEC.md id"
            );
        }
    }
}
