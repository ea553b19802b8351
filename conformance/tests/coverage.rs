//! The Done condition, measurable without a relay: every MUST requirement of SPEC.md has a case
//! or a reason why no black-box case can check it; every id a case cites exists in the spec;
//! the not-applicable list and the cases do not overlap; case ids are unique.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use formica_conformance::coverage::{self, State};
use formica_conformance::{cases, spec, Level};
use std::collections::HashSet;

#[test]
fn no_must_requirement_is_missing() {
    let all = cases::all();
    let rows = coverage::table(&all);
    let missing: Vec<&str> = rows
        .iter()
        .filter(|r| r.level == Level::Must && r.state == State::Missing)
        .map(|r| r.id.as_str())
        .collect();
    assert!(
        missing.is_empty(),
        "MUST requirements without a case or an n/a reason: {missing:?}"
    );
}

#[test]
fn cases_cite_only_spec_ids_and_have_unique_ids() {
    let mut seen = HashSet::new();
    for c in cases::all() {
        assert!(seen.insert(c.id.clone()), "case id {} used twice", c.id);
        assert!(!c.reqs.is_empty(), "{} checks no requirement", c.id);
        for r in c.all_reqs() {
            assert!(
                spec::level_of(r).is_some(),
                "{} cites {r}, which SPEC.md does not define",
                c.id
            );
        }
    }
}

#[test]
fn not_applicable_list_does_not_overlap_the_cases() {
    let na =
        spec::parse_not_applicable(spec::NOT_APPLICABLE_TXT).expect("not_applicable.txt parses");
    let covered: HashSet<&str> = cases::all().iter().flat_map(|c| c.all_reqs()).collect();
    for id in na.keys() {
        assert!(
            spec::level_of(id).is_some(),
            "{id} in not_applicable.txt is not a SPEC.md id"
        );
        assert!(
            !covered.contains(id.as_str()),
            "{id} is listed as not applicable but a case checks it"
        );
    }
}

#[test]
fn every_vector_file_drives_cases() {
    let ids: Vec<String> = cases::all().into_iter().map(|c| c.id).collect();
    for prefix in [
        "vec.canon.",
        "vec.handles.",
        "vec.env-valid.",
        "vec.env-invalid.",
        "vec.keylogs.",
        "vec.auth.",
        "vec.pow.",
        "vec.ed25519.",
        "vec.profiles.",
        "vec.presence.",
        "vec.conversations.",
        "vec.sealed.",
    ] {
        assert!(
            ids.iter().any(|i| i.starts_with(prefix)),
            "no case from {prefix}*"
        );
    }
    // Every case of the two envelope files has its own case.
    let n_invalid = formica_conformance::vectors::list(
        formica_conformance::vectors::envelopes_invalid(),
        "cases",
    )
    .len();
    let n_valid = formica_conformance::vectors::list(
        formica_conformance::vectors::envelopes_valid(),
        "cases",
    )
    .len();
    assert_eq!(
        ids.iter()
            .filter(|i| i.starts_with("vec.env-invalid."))
            .count(),
        n_invalid
    );
    assert_eq!(
        ids.iter()
            .filter(|i| i.starts_with("vec.env-valid."))
            .count(),
        n_valid
    );
    let n_profiles = ["valid", "invalid"]
        .iter()
        .map(|k| {
            formica_conformance::vectors::list(formica_conformance::vectors::profiles(), k).len()
        })
        .sum::<usize>();
    assert!(n_profiles > 0, "profiles.json has no cases");
    assert_eq!(
        ids.iter()
            .filter(|i| i.starts_with("vec.profiles."))
            .count(),
        n_profiles
    );
    let n_presence = ["valid", "invalid"]
        .iter()
        .map(|k| {
            formica_conformance::vectors::list(formica_conformance::vectors::presence(), k).len()
        })
        .sum::<usize>();
    assert!(n_presence > 0, "presence.json has no cases");
    assert_eq!(
        ids.iter()
            .filter(|i| i.starts_with("vec.presence."))
            .count(),
        n_presence
    );
}
