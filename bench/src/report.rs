//! The results: an ordered JSON document (numbers may be fractional, unlike the protocol's
//! strict profile, so this is a small writer of its own) and the table printed to stdout.

use std::fmt::Write as _;

/// A JSON value whose objects keep their insertion order.
#[derive(Debug, Clone)]
pub enum J {
    Null,
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

impl J {
    pub fn obj() -> J {
        J::Obj(Vec::new())
    }

    /// Adds a member (objects only; on anything else it does nothing).
    pub fn set(&mut self, k: &str, v: impl Into<J>) -> &mut J {
        if let J::Obj(m) = self {
            m.push((k.to_owned(), v.into()));
        }
        self
    }

    pub fn with(mut self, k: &str, v: impl Into<J>) -> J {
        self.set(k, v);
        self
    }

    /// The number at `path` (object members, in order), if there is one.
    pub fn get(&self, path: &[&str]) -> Option<f64> {
        let mut cur = self;
        for k in path {
            let J::Obj(m) = cur else { return None };
            cur = &m.iter().find(|(n, _)| n == k)?.1;
        }
        match cur {
            J::Int(n) => Some(*n as f64),
            J::Num(x) => Some(*x),
            _ => None,
        }
    }

    /// A figure that could not be measured, and why. Never a number.
    pub fn not_measurable(reason: &str) -> J {
        J::obj().with("not_measurable", reason)
    }

    pub fn write(&self, out: &mut String, indent: usize) {
        let pad = |n: usize| "  ".repeat(n);
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => {
                let _ = write!(out, "{i}");
            }
            J::Num(x) if x.is_finite() => {
                // Four significant decimals are plenty for rates and ratios.
                let s = if x.abs() >= 1000.0 {
                    format!("{x:.1}")
                } else {
                    format!("{x:.4}")
                };
                out.push_str(&s);
            }
            J::Num(_) => out.push_str("null"),
            J::Str(s) => {
                out.push('"');
                for c in s.chars() {
                    match c {
                        '"' => out.push_str("\\\""),
                        '\\' => out.push_str("\\\\"),
                        '\n' => out.push_str("\\n"),
                        c if (c as u32) < 0x20 => {
                            let _ = write!(out, "\\u{:04x}", c as u32);
                        }
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
            J::Arr(a) if a.is_empty() => out.push_str("[]"),
            J::Arr(a) => {
                out.push_str("[\n");
                for (i, v) in a.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    v.write(out, indent + 1);
                    out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(indent));
                out.push(']');
            }
            J::Obj(m) if m.is_empty() => out.push_str("{}"),
            J::Obj(m) => {
                out.push_str("{\n");
                for (i, (k, v)) in m.iter().enumerate() {
                    out.push_str(&pad(indent + 1));
                    J::Str(k.clone()).write(out, indent + 1);
                    out.push_str(": ");
                    v.write(out, indent + 1);
                    out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
                }
                out.push_str(&pad(indent));
                out.push('}');
            }
        }
    }

    pub fn to_pretty(&self) -> String {
        let mut s = String::new();
        self.write(&mut s, 0);
        s.push('\n');
        s
    }
}

impl From<&str> for J {
    fn from(s: &str) -> J {
        J::Str(s.to_owned())
    }
}
impl From<String> for J {
    fn from(s: String) -> J {
        J::Str(s)
    }
}
impl From<f64> for J {
    fn from(x: f64) -> J {
        J::Num(x)
    }
}
impl From<i64> for J {
    fn from(x: i64) -> J {
        J::Int(x)
    }
}
impl From<u64> for J {
    fn from(x: u64) -> J {
        J::Int(i64::try_from(x).unwrap_or(i64::MAX))
    }
}
impl From<usize> for J {
    fn from(x: usize) -> J {
        J::Int(i64::try_from(x).unwrap_or(i64::MAX))
    }
}
impl From<u32> for J {
    fn from(x: u32) -> J {
        J::Int(i64::from(x))
    }
}
impl From<bool> for J {
    fn from(b: bool) -> J {
        J::Bool(b)
    }
}
impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}
impl<T: Into<J>> From<Option<T>> for J {
    fn from(v: Option<T>) -> J {
        v.map(Into::into).unwrap_or(J::Null)
    }
}

/// Whether a figure meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Met,
    Missed,
    /// No target for this figure.
    Info,
    NotMeasurable,
}

impl Verdict {
    pub fn check(ok: bool) -> Verdict {
        if ok {
            Verdict::Met
        } else {
            Verdict::Missed
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::Missed => "MISSED",
            Verdict::Info => "",
            Verdict::NotMeasurable => "n/a",
        }
    }
}

/// One line of the printed table.
#[derive(Debug, Clone)]
pub struct Row {
    pub item: String,
    pub figure: String,
    pub value: String,
    pub target: String,
    pub verdict: Verdict,
}

/// The table printed at the end (and kept in the JSON as `table`).
#[derive(Debug, Default)]
pub struct Table {
    pub rows: Vec<Row>,
}

impl Table {
    pub fn add(&mut self, item: &str, figure: &str, value: String, target: &str, verdict: Verdict) {
        self.rows.push(Row {
            item: item.into(),
            figure: figure.into(),
            value,
            target: target.into(),
            verdict,
        });
    }

    pub fn info(&mut self, item: &str, figure: &str, value: String) {
        self.add(item, figure, value, "", Verdict::Info);
    }

    pub fn not_measurable(&mut self, item: &str, figure: &str, reason: &str) {
        self.add(
            item,
            figure,
            format!("not measurable: {reason}"),
            "",
            Verdict::NotMeasurable,
        );
    }

    pub fn render(&self) -> String {
        let w = |f: &dyn Fn(&Row) -> usize, h: &str| {
            self.rows.iter().map(f).chain([h.len()]).max().unwrap_or(0)
        };
        let (wi, wf, wv, wt) = (
            w(&|r| r.item.len(), "item"),
            w(&|r| r.figure.len(), "figure"),
            w(&|r| r.value.len().min(60), "value"),
            w(&|r| r.target.len(), "target"),
        );
        let mut s = String::new();
        let _ = writeln!(
            s,
            "| {:wi$} | {:wf$} | {:>wv$} | {:wt$} | verdict |",
            "item", "figure", "value", "target"
        );
        let _ = writeln!(
            s,
            "|{}|{}|{}:|{}|---------|",
            "-".repeat(wi + 2),
            "-".repeat(wf + 2),
            "-".repeat(wv + 1),
            "-".repeat(wt + 2)
        );
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {:wi$} | {:wf$} | {:>wv$} | {:wt$} | {:7} |",
                r.item,
                r.figure,
                r.value,
                r.target,
                r.verdict.as_str()
            );
        }
        s
    }

    pub fn to_json(&self) -> J {
        J::Arr(
            self.rows
                .iter()
                .map(|r| {
                    J::obj()
                        .with("item", r.item.as_str())
                        .with("figure", r.figure.as_str())
                        .with("value", r.value.as_str())
                        .with("target", r.target.as_str())
                        .with("verdict", r.verdict.as_str())
                })
                .collect(),
        )
    }
}

/// Percentile (nearest rank) of sorted samples.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Human form of a rate.
pub fn rate(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2} M/s", x / 1e6)
    } else {
        format!("{x:.0}/s")
    }
}
