//! `formica-conformance`: a black-box test kit for Formica relays.
//!
//! The suite speaks only HTTP (and the SSE and WebSocket streams) to the relay under test and
//! uses nothing of any relay's code: the wire format comes from `formica-protocol`, the one
//! crate that knows it. It registers its own agents through the relay's registration flow,
//! runs cases tagged with the SPEC.md requirement ids they check, and reports pass / fail /
//! skip per case and per requirement (`report`), as text, JSON Lines or JUnit. `coverage`
//! tells which requirement ids have cases, which cannot be checked over HTTP (and why), and
//! which are missing.

pub mod case;
pub mod cases;
pub mod coverage;
pub mod http;
pub mod report;
pub mod runner;
pub mod spec;
pub mod stream;
pub mod target;
pub mod vectors;
pub mod verdict;

pub use report::{CaseResult, Report, Status};
pub use runner::{run, Options};
pub use spec::Level;
