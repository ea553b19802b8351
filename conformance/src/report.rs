//! Results: one line per case (pass / fail / skip with the reason), the verdict per SPEC.md
//! requirement, the exit code, and the JSON Lines and JUnit renderings.
//!
//! Exit codes (stable): 0 no MUST case failed unexpectedly; 1 at least one MUST case failed
//! and is not in the expected-failures file; 2 usage or setup error (the relay cannot be
//! reached, a file cannot be read); 3 the expected-failures file is stale (a listed case
//! passed or does not exist) and nothing else failed.

use crate::spec::Level;
use formica_protocol::{canon, Value};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    Pass,
    Fail,
    Skip,
    /// Failed, and listed in the expected-failures file.
    XFail,
    /// Passed, but listed in the expected-failures file.
    XPass,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Fail => "fail",
            Status::Skip => "skip",
            Status::XFail => "xfail",
            Status::XPass => "xpass",
        }
    }
    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Pass,
            Status::Fail,
            Status::Skip,
            Status::XFail,
            Status::XPass,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// The result of one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    pub id: String,
    pub reqs: Vec<String>,
    pub level: Level,
    pub status: Status,
    pub reason: String,
    pub title: String,
}

impl CaseResult {
    /// The JSON Lines record: id, requirement ids, level, status, reason (no timings, so a
    /// committed file stays comparable from run to run).
    pub fn to_json(&self) -> String {
        let mut o = formica_protocol::Object::new();
        o.insert("id", self.id.clone().into());
        o.insert(
            "requirements",
            Value::Array(self.reqs.iter().map(|r| Value::String(r.clone())).collect()),
        );
        o.insert("level", self.level.as_str().into());
        o.insert("status", self.status.as_str().into());
        o.insert("reason", self.reason.clone().into());
        String::from_utf8_lossy(&canon::canonicalize(&Value::Object(o))).into_owned()
    }

    /// Parses a JSON Lines record.
    pub fn from_json(line: &str) -> Option<CaseResult> {
        let v = formica_protocol::json::parse_default(line.as_bytes()).ok()?;
        let o = v.as_object()?;
        let st = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(CaseResult {
            id: st("id")?,
            reqs: o
                .get("requirements")?
                .as_array()?
                .iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect(),
            level: Level::parse(&st("level")?)?,
            status: Status::parse(&st("status")?)?,
            reason: st("reason").unwrap_or_default(),
            title: String::new(),
        })
    }
}

/// A requirement's verdict over the cases that ran for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReqVerdict {
    pub id: String,
    pub level: Level,
    pub status: Status,
    pub cases: Vec<String>,
}

/// A run's results, in case order.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub results: Vec<CaseResult>,
    /// Expected-failure entries whose case passed or does not exist.
    pub stale_expected: Vec<String>,
}

/// Parses an expected-failures file: one `CASE-ID  reason` per line, `#` comments.
pub fn parse_expected(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (id, reason) = line
            .split_once(char::is_whitespace)
            .ok_or_else(|| format!("line {}: expected `CASE-ID  reason`", n + 1))?;
        if reason.trim().is_empty() {
            return Err(format!("line {}: {id} has no reason", n + 1));
        }
        out.insert(id.to_owned(), reason.trim().to_owned());
    }
    Ok(out)
}

impl Report {
    /// Marks listed failures as expected, and listed passes (or unknown ids) as stale.
    pub fn apply_expected(&mut self, expected: &BTreeMap<String, String>) {
        for r in &mut self.results {
            if let Some(why) = expected.get(&r.id) {
                match r.status {
                    Status::Fail => {
                        r.status = Status::XFail;
                        r.reason = format!("{} [expected failure: {why}]", r.reason);
                    }
                    Status::Pass => {
                        r.status = Status::XPass;
                        r.reason = format!("listed as an expected failure ({why}) but passed");
                        self.stale_expected.push(r.id.clone());
                    }
                    _ => {}
                }
            }
        }
        for id in expected.keys() {
            if !self.results.iter().any(|r| &r.id == id) {
                self.stale_expected
                    .push(format!("{id} (no such case in this run)"));
            }
        }
    }

    pub fn count(&self, status: Status, level: Option<Level>) -> usize {
        self.results
            .iter()
            .filter(|r| r.status == status && level.is_none_or(|l| r.level == l))
            .count()
    }

    /// MUST cases that failed and were not expected to.
    pub fn must_failures(&self) -> Vec<&CaseResult> {
        self.results
            .iter()
            .filter(|r| r.status == Status::Fail && r.level == Level::Must)
            .collect()
    }

    pub fn exit_code(&self) -> i32 {
        if !self.must_failures().is_empty() {
            1
        } else if !self.stale_expected.is_empty() {
            3
        } else {
            0
        }
    }

    /// The verdict per requirement: fail if any of its cases failed, else pass if any passed,
    /// else the status of its cases (skip, xfail).
    pub fn requirements(&self) -> Vec<ReqVerdict> {
        let mut by: BTreeMap<String, Vec<&CaseResult>> = BTreeMap::new();
        for r in &self.results {
            for q in &r.reqs {
                by.entry(q.clone()).or_default().push(r);
            }
        }
        let order = |id: &str| {
            crate::spec::requirements()
                .iter()
                .position(|r| r.id == id)
                .unwrap_or(usize::MAX)
        };
        let mut out: Vec<ReqVerdict> = by
            .into_iter()
            .map(|(id, rs)| {
                let has = |s: Status| rs.iter().any(|r| r.status == s);
                let status = if has(Status::Fail) {
                    Status::Fail
                } else if has(Status::XFail) {
                    Status::XFail
                } else if has(Status::Pass) || has(Status::XPass) {
                    Status::Pass
                } else {
                    Status::Skip
                };
                let level = crate::spec::level_of(&id).unwrap_or(Level::Must);
                ReqVerdict {
                    cases: rs.iter().map(|r| r.id.clone()).collect(),
                    id,
                    level,
                    status,
                }
            })
            .collect();
        out.sort_by_key(|v| order(&v.id));
        out
    }

    /// JSON Lines, one record per case.
    pub fn to_jsonl(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            s.push_str(&r.to_json());
            s.push('\n');
        }
        s
    }

    /// JUnit XML: one test suite per area (the case id before its first `.`), one test case per
    /// case, named with its requirement ids.
    pub fn to_junit(&self) -> String {
        let mut areas: BTreeMap<&str, Vec<&CaseResult>> = BTreeMap::new();
        for r in &self.results {
            areas
                .entry(r.id.split('.').next().unwrap_or(&r.id))
                .or_default()
                .push(r);
        }
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let fails = self.count(Status::Fail, None);
        let skips = self.count(Status::Skip, None) + self.count(Status::XFail, None);
        x.push_str(&format!("<testsuites name=\"formica-conformance\" tests=\"{}\" failures=\"{fails}\" skipped=\"{skips}\">\n", self.results.len()));
        for (area, rs) in areas {
            let f = rs
                .iter()
                .filter(|r| matches!(r.status, Status::Fail | Status::XPass))
                .count();
            let sk = rs
                .iter()
                .filter(|r| matches!(r.status, Status::Skip | Status::XFail))
                .count();
            x.push_str(&format!(
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{f}\" skipped=\"{sk}\">\n",
                esc(area),
                rs.len()
            ));
            for r in rs {
                x.push_str(&format!(
                    "    <testcase classname=\"conformance.{}\" name=\"{} [{}] {}\">",
                    esc(area),
                    esc(&r.id),
                    esc(&r.reqs.join(" ")),
                    r.level.as_str()
                ));
                match r.status {
                    Status::Pass => {}
                    Status::Fail | Status::XPass => {
                        x.push_str(&format!("<failure message=\"{}\"/>", esc(&r.reason)))
                    }
                    Status::Skip | Status::XFail => {
                        x.push_str(&format!("<skipped message=\"{}\"/>", esc(&r.reason)))
                    }
                }
                x.push_str("</testcase>\n");
            }
            x.push_str("  </testsuite>\n");
        }
        x.push_str("</testsuites>\n");
        x
    }

    /// The report for people: failures and skips with their reasons, the requirement table,
    /// the totals.
    pub fn human(&self) -> String {
        let mut s = String::new();
        for r in &self.results {
            let tag = match r.status {
                Status::Pass => "PASS ",
                Status::Fail => "FAIL ",
                Status::Skip => "SKIP ",
                Status::XFail => "XFAIL",
                Status::XPass => "XPASS",
            };
            s.push_str(&format!(
                "{tag} {:<6} {} [{}]\n",
                r.level.as_str(),
                r.id,
                r.reqs.join(" ")
            ));
            if r.status != Status::Pass {
                s.push_str(&format!("        {}\n", r.reason));
            }
        }
        s.push_str("\nRequirements:\n");
        for v in self.requirements() {
            s.push_str(&format!(
                "  {:<5} {:<6} {:<14} {}\n",
                v.status.as_str(),
                v.level.as_str(),
                v.id,
                v.cases.join(" ")
            ));
        }
        let reqs = self.requirements();
        let rc = |st: Status, l: Level| {
            reqs.iter()
                .filter(|v| v.status == st && v.level == l)
                .count()
        };
        s.push_str(&format!(
            "\ncases: {} run, {} pass, {} fail ({} MUST), {} skip, {} expected failures\n",
            self.results.len(),
            self.count(Status::Pass, None),
            self.count(Status::Fail, None),
            self.count(Status::Fail, Some(Level::Must)),
            self.count(Status::Skip, None),
            self.count(Status::XFail, None)
        ));
        s.push_str(&format!(
            "requirements: MUST {} pass / {} fail / {} skip; SHOULD {} pass / {} fail / {} skip\n",
            rc(Status::Pass, Level::Must),
            rc(Status::Fail, Level::Must),
            rc(Status::Skip, Level::Must),
            rc(Status::Pass, Level::Should),
            rc(Status::Fail, Level::Should),
            rc(Status::Skip, Level::Should)
        ));
        for id in &self.stale_expected {
            s.push_str(&format!("stale expected failure: {id}\n"));
        }
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn res(id: &str, level: Level, status: Status) -> CaseResult {
        CaseResult {
            id: id.into(),
            reqs: vec!["ENV-3".into()],
            level,
            status,
            reason: "why".into(),
            title: String::new(),
        }
    }

    #[test]
    fn exit_codes_follow_must_failures_and_stale_expectations() {
        let mut r = Report {
            results: vec![
                res("a.x", Level::Must, Status::Pass),
                res("a.y", Level::Should, Status::Fail),
            ],
            stale_expected: vec![],
        };
        assert_eq!(r.exit_code(), 0, "a SHOULD failure does not fail the run");
        r.results.push(res("a.z", Level::Must, Status::Fail));
        assert_eq!(r.exit_code(), 1);
        let expected = parse_expected("# known\na.z  relay bug\n").unwrap();
        r.apply_expected(&expected);
        assert_eq!(r.results[2].status, Status::XFail);
        assert_eq!(r.exit_code(), 0);
        let stale = parse_expected("a.x  fixed long ago\nnope.case  gone\n").unwrap();
        let mut r2 = Report {
            results: vec![res("a.x", Level::Must, Status::Pass)],
            stale_expected: vec![],
        };
        r2.apply_expected(&stale);
        assert_eq!(r2.results[0].status, Status::XPass);
        assert_eq!(r2.stale_expected.len(), 2);
        assert_eq!(r2.exit_code(), 3);
        assert!(parse_expected("a.x\n").is_err(), "an entry needs a reason");
    }

    #[test]
    fn json_lines_round_trip_and_requirement_verdicts() {
        let r = Report {
            results: vec![
                res("a.x", Level::Must, Status::Pass),
                res("a.y", Level::Must, Status::Skip),
            ],
            stale_expected: vec![],
        };
        for line in r.to_jsonl().lines() {
            let back = CaseResult::from_json(line).unwrap();
            assert!(r
                .results
                .iter()
                .any(|x| x.id == back.id && x.status == back.status && x.reqs == back.reqs));
        }
        let v = r.requirements();
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].status, Status::Pass, "a pass and a skip make a pass");
        let junit = r.to_junit();
        assert!(junit.contains("<skipped message=\"why\"/>") && junit.contains("tests=\"2\""));
    }
}
