//! The requirement coverage table of `conformance coverage`: every id of SPEC.md with its
//! level and whether at least one case checks it ("covered"), whether it is on the committed
//! list of requirements no black-box HTTP case can check ("n/a", with the reason), or neither
//! ("missing"). A second table does the same for the codes of the error registry.

use crate::case::Case;
use crate::spec::{self, Level};
use formica_protocol::ErrorCode;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Covered(Vec<String>),
    NotApplicable(String),
    Missing,
}

#[derive(Debug, Clone)]
pub struct Row {
    pub id: String,
    pub level: Level,
    pub section: String,
    pub state: State,
}

/// One row per requirement of the embedded spec, in document order.
pub fn table(cases: &[Case]) -> Vec<Row> {
    let na = spec::not_applicable();
    let mut by: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for c in cases {
        for r in c.all_reqs() {
            by.entry(r).or_default().push(c.id.clone());
        }
    }
    spec::requirements()
        .iter()
        .map(|r| {
            let state = match (by.get(r.id.as_str()), na.get(&r.id)) {
                (Some(cs), _) => State::Covered(cs.clone()),
                (None, Some(why)) => State::NotApplicable(why.clone()),
                (None, None) => State::Missing,
            };
            Row {
                id: r.id.clone(),
                level: r.level,
                section: r.section.clone(),
                state,
            }
        })
        .collect()
}

/// Totals per level: (covered, not applicable, missing).
pub fn totals(rows: &[Row], level: Level) -> (usize, usize, usize) {
    let of = |f: fn(&State) -> bool| {
        rows.iter()
            .filter(|r| r.level == level && f(&r.state))
            .count()
    };
    (
        of(|s| matches!(s, State::Covered(_))),
        of(|s| matches!(s, State::NotApplicable(_))),
        of(|s| matches!(s, State::Missing)),
    )
}

/// Error codes that no black-box case against one relay can provoke, and why.
pub fn codes_not_provokable() -> &'static [(ErrorCode, &'static str)] {
    use ErrorCode as E;
    &[
        (
            E::VouchLimit,
            "needs an agent at a tier allowed to vouch (reached only by age and acked traffic)",
        ),
        (
            E::OriginMismatch,
            "federation: needs the suite to be a peer relay",
        ),
        (
            E::StorageFull,
            "not observable over HTTP: needs a full disk",
        ),
        (
            E::Unavailable,
            "not observable over HTTP: needs the relay starting or shutting down",
        ),
        (
            E::Internal,
            "not observable over HTTP: an unexpected server fault",
        ),
    ]
}

/// Which cases provoke each code of the registry.
pub fn code_table(cases: &[Case]) -> Vec<(ErrorCode, Vec<String>)> {
    ErrorCode::ALL
        .iter()
        .map(|c| {
            (
                *c,
                cases
                    .iter()
                    .filter(|k| k.codes.contains(c))
                    .map(|k| k.id.clone())
                    .collect(),
            )
        })
        .collect()
}

/// The table as text.
pub fn render(cases: &[Case]) -> String {
    let rows = table(cases);
    let mut s = String::from(
        "Requirement coverage (SPEC.md ids; covered = at least one case checks it)\n\n",
    );
    for r in &rows {
        let state = match &r.state {
            State::Covered(cs) => {
                let shown: Vec<&str> = cs.iter().take(4).map(String::as_str).collect();
                let more = if cs.len() > 4 {
                    format!(" (+{} more)", cs.len() - 4)
                } else {
                    String::new()
                };
                format!("covered  {}{more}", shown.join(" "))
            }
            State::NotApplicable(why) => format!("n/a      {why}"),
            State::Missing => "MISSING".into(),
        };
        s.push_str(&format!("{:<14} {:<6} {state}\n", r.id, r.level.as_str()));
    }
    s.push_str("\nError codes (section 14) provoked by cases:\n\n");
    let np = codes_not_provokable();
    for (code, cs) in code_table(cases) {
        let state = if !cs.is_empty() {
            let shown: Vec<&str> = cs.iter().take(3).map(String::as_str).collect();
            let more = if cs.len() > 3 {
                format!(" (+{} more)", cs.len() - 3)
            } else {
                String::new()
            };
            format!("covered  {}{more}", shown.join(" "))
        } else if let Some((_, why)) = np.iter().find(|(c, _)| *c == code) {
            format!("n/a      {why}")
        } else {
            "MISSING".into()
        };
        s.push_str(&format!(
            "{:<27} {} {state}\n",
            code.as_str(),
            code.http_status()
        ));
    }
    s.push('\n');
    for l in [Level::Must, Level::Should, Level::May] {
        let (c, n, m) = totals(&rows, l);
        s.push_str(&format!(
            "{:<6}: {c} covered, {n} not applicable, {m} missing\n",
            l.as_str()
        ));
    }
    s.push_str(&format!("cases: {}\n", cases.len()));
    s
}
