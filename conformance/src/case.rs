//! A case: one black-box check of the relay under test, tagged with the SPEC.md requirement ids
//! it checks (its level is the strongest level among them) and with the error codes it
//! provokes (for the error-registry table of `conformance coverage`).

use crate::spec::{level_of, Level};
use crate::target::Target;
use crate::verdict::R;
use formica_protocol::ErrorCode;
use std::any::Any;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// What a case runs against.
#[derive(Debug)]
pub struct Env<'a> {
    pub t: &'a Target,
    /// The second relay of a federation run (`--peer`).
    pub peer: Option<&'a Target>,
    pub fixtures: &'a Fixtures,
}

type FixtureCell = Arc<OnceLock<Result<Arc<dyn Any + Send + Sync>, String>>>;

/// Agents and state registered once and shared by the cases of one group (to stay within
/// the relay's per-IP registration limit). Cases only read what a fixture set up, or add
/// state that no other case of the group looks at.
#[derive(Default)]
pub struct Fixtures {
    cells: Mutex<HashMap<&'static str, FixtureCell>>,
}

impl std::fmt::Debug for Fixtures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fixtures")
    }
}

impl Env<'_> {
    /// The fixture `name`, made by `init` on first use (once, even with parallel cases).
    pub fn fixture<T: Any + Send + Sync>(
        &self,
        name: &'static str,
        init: impl FnOnce(&Target) -> R<T>,
    ) -> R<Arc<T>> {
        let cell = {
            let mut m = self
                .fixtures
                .cells
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            m.entry(name).or_default().clone()
        };
        let got = cell.get_or_init(|| match init(self.t) {
            Ok(v) => Ok(Arc::new(v) as Arc<dyn Any + Send + Sync>),
            Err(crate::verdict::Stop::Fail(m)) | Err(crate::verdict::Stop::Skip(m)) => Err(m),
        });
        match got {
            Ok(a) => a
                .clone()
                .downcast::<T>()
                .map_err(|_| crate::verdict::failure(format!("fixture {name}: wrong type"))),
            Err(m) => Err(crate::verdict::failure(format!(
                "setting up the shared agents of fixture {name}: {m}"
            ))),
        }
    }
}

pub type CaseFn = Arc<dyn Fn(&Env<'_>) -> R + Send + Sync>;

/// When a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Normal,
    /// After every other case, alone: it exhausts a per-IP budget of the relay.
    Last,
    /// Only with `--peer` (federation).
    Peer,
}

#[derive(Clone)]
pub struct Case {
    pub id: String,
    pub reqs: Vec<&'static str>,
    pub title: String,
    pub codes: Vec<ErrorCode>,
    pub kind: Kind,
    pub run: CaseFn,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Case({} {:?})", self.id, self.reqs)
    }
}

/// Defines a case.
pub fn case(
    id: impl Into<String>,
    reqs: &[&'static str],
    title: impl Into<String>,
    f: impl Fn(&Env<'_>) -> R + Send + Sync + 'static,
) -> Case {
    Case {
        id: id.into(),
        reqs: reqs.to_vec(),
        title: title.into(),
        codes: Vec::new(),
        kind: Kind::Normal,
        run: Arc::new(f),
    }
}

impl Case {
    /// The error codes this case expects the relay to answer with.
    pub fn codes(mut self, codes: &[ErrorCode]) -> Case {
        self.codes = codes.to_vec();
        self
    }
    pub fn last(mut self) -> Case {
        self.kind = Kind::Last;
        self
    }
    pub fn peer(mut self) -> Case {
        self.kind = Kind::Peer;
        self
    }

    /// The strongest level among the case's requirements (MUST if any is MUST).
    pub fn level(&self) -> Level {
        self.all_reqs()
            .iter()
            .filter_map(|r| level_of(r))
            .min()
            .unwrap_or(Level::Must)
    }

    /// The area of the case: the part of its id before the first `.`.
    pub fn area(&self) -> &str {
        self.id.split('.').next().unwrap_or(&self.id)
    }

    /// Requirements this case checks, including the error-answer contract (ERR-1, ERR-2,
    /// HTTP-4, HTTP-5) that every expected rejection is held to.
    pub fn all_reqs(&self) -> Vec<&'static str> {
        let mut v = self.reqs.clone();
        if !self.codes.is_empty() {
            for r in ["ERR-1", "ERR-2", "HTTP-4", "HTTP-5"] {
                if !v.contains(&r) {
                    v.push(r);
                }
            }
        }
        v
    }
}
