//! Runs the cases against a relay: connects (descriptor, clock), runs the selected cases on a
//! few threads (each case bounded in time by its own waits and the client's timeouts), then
//! the cases that must run alone at the end, and collects one result per case in case order.

use crate::case::{Case, Env, Fixtures, Kind};
use crate::report::{CaseResult, Report, Status};
use crate::spec::Level;
use crate::target::Target;
use crate::verdict::Stop;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub relay: String,
    pub peer: Option<String>,
    /// `Must`: MUST cases only; `Should`: MUST and SHOULD cases.
    pub level: Level,
    /// Cases run at once.
    pub jobs: usize,
    /// Run only cases whose id starts with one of these, or that check one of these
    /// requirement ids. Empty: all.
    pub only: Vec<String>,
    /// Print each result to stderr as it arrives.
    pub progress: bool,
}

impl Options {
    pub fn new(relay: &str) -> Options {
        Options {
            relay: relay.to_owned(),
            peer: None,
            level: Level::Should,
            jobs: 4,
            only: Vec::new(),
            progress: false,
        }
    }
}

/// Whether `c` is selected by `only` and `level`.
pub fn selected(c: &Case, opts: &Options) -> bool {
    if c.level() > opts.level {
        return false;
    }
    opts.only.is_empty()
        || opts.only.iter().any(|p| {
            c.id == *p
                || c.id.starts_with(&format!("{p}."))
                || c.id.starts_with(p.as_str())
                || c.all_reqs().iter().any(|r| r == p)
        })
}

fn run_one(c: &Case, env: &Env<'_>) -> CaseResult {
    let outcome = if c.kind == Kind::Peer && env.peer.is_none() {
        Err(Stop::Skip("federation: needs --peer".into()))
    } else {
        let f = c.run.clone();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(env))) {
            Ok(r) => r,
            Err(p) => {
                let msg = p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                Err(Stop::Fail(format!(
                    "the case panicked (a bug in the suite): {msg}"
                )))
            }
        }
    };
    let (status, reason) = match outcome {
        Ok(()) => (Status::Pass, String::new()),
        Err(Stop::Fail(m)) => (Status::Fail, m),
        Err(Stop::Skip(m)) => (Status::Skip, m),
    };
    CaseResult {
        id: c.id.clone(),
        reqs: c.all_reqs().iter().map(|s| (*s).to_owned()).collect(),
        level: c.level(),
        status,
        reason,
        title: c.title.clone(),
    }
}

/// Runs `cases` (already filtered) against the relay of `opts`.
pub fn run_cases(cases: &[Case], opts: &Options) -> Result<Report, String> {
    let target = Target::connect(&opts.relay)?;
    let peer = match &opts.peer {
        Some(p) => Some(Target::connect(p)?),
        None => None,
    };
    if target.published.pow_difficulty > 16 {
        eprintln!(
            "conformance: the relay requires proof-of-work difficulty {}; every registration mines about 2^{} hashes. Run the relay under test with a low difficulty (for example --pow-difficulty 8).",
            target.published.pow_difficulty, target.published.pow_difficulty
        );
    }
    let fixtures = Fixtures::default();
    let env = Env {
        t: &target,
        peer: peer.as_ref(),
        fixtures: &fixtures,
    };
    let results: Mutex<Vec<Option<CaseResult>>> = Mutex::new(vec![None; cases.len()]);
    let normal: Vec<usize> = (0..cases.len())
        .filter(|i| cases[*i].kind != Kind::Last)
        .collect();
    let last: Vec<usize> = (0..cases.len())
        .filter(|i| cases[*i].kind == Kind::Last)
        .collect();
    let next = AtomicUsize::new(0);
    let record = |i: usize, r: CaseResult| {
        if opts.progress {
            eprintln!("{:<5} {}", r.status.as_str(), r.id);
        }
        results.lock().unwrap_or_else(|p| p.into_inner())[i] = Some(r);
    };
    std::thread::scope(|sc| {
        for _ in 0..opts.jobs.max(1) {
            sc.spawn(|| loop {
                let k = next.fetch_add(1, Ordering::SeqCst);
                let Some(&i) = normal.get(k) else { break };
                record(i, run_one(&cases[i], &env));
            });
        }
    });
    for i in last {
        record(i, run_one(&cases[i], &env));
    }
    let results = results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect();
    Ok(Report {
        results,
        stale_expected: Vec::new(),
    })
}

/// Runs every selected case of the suite.
pub fn run(opts: &Options) -> Result<Report, String> {
    let cases: Vec<Case> = crate::cases::all()
        .into_iter()
        .filter(|c| selected(c, opts))
        .collect();
    if cases.is_empty() {
        return Err("no case matches the selection".into());
    }
    run_cases(&cases, opts)
}
