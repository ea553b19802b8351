//! The directory (PROF-9, PROF-8): search by capability, by text (lower-cased, through names,
//! descriptions, capability ids and tags), by tier; pages in handle order that never repeat a
//! handle and end with `next` null; unlisted profiles never appear; invalid parameters and
//! cursors are refused; searches are rate limited per agent at the tier's `searches_per_min`.

use super::profile_kit::{check_entry, dir, profile, publish_obj, word, Prof};
use super::*;
use crate::case::{case, Env};
use std::sync::Arc;

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("dir.capability", &["PROF-9", "PROF-8"], "a capability search finds exactly the listed profiles with that capability id, in handle order, each with its tier; an unlisted one (even one the searcher may read) never appears", by_capability),
        case("dir.text", &["PROF-9"], "a text search matches, lower-cased, the name, the description, a capability id or a tag, with + and %20 as spaces", by_text),
        case("dir.min-tier", &["PROF-9"], "min_tier keeps the profiles whose agent is at that tier or above; a level the relay does not publish is invalid_field", min_tier).codes(&[E::InvalidField]),
        case("dir.paging", &["PROF-9"], "limit=1 pages through three matches, one per page, without repeats, and the last page's next is null; the whole directory pages in ascending handle order without repeats", paging),
        case("dir.params", &["PROF-9", "HTTP-8"], "an invalid capability, text, min_tier, status or limit is invalid_field with the parameter's name; a cursor the relay did not issue is invalid_cursor", params)
            .codes(&[E::InvalidField, E::InvalidCursor]),
        case("dir.status", &["PROF-9", "PRES-1"], "status keeps the listed profiles whose agent's presence is that word: an agent kept connected by a heartbeat is available, the others offline", by_status),
        case("dir.rate", &["PROF-9", "TRUST-8"], "an agent's searches beyond its tier's searches_per_min are rate_limited with retry_after_s", rate).codes(&[E::RateLimited]),
    ]
}

/// Three listed agents and one unlisted one, all with capability `cap`; names, a tag and a
/// description carry words of this run for the text searches. Each case searches as an agent
/// of its own (searches are rate limited per agent).
#[derive(Debug)]
struct Fix {
    cap: String,
    run: String,
    /// In the order they were made: agent 1 has a tag, agent 2 a description.
    listed: Vec<(Agent, Prof)>,
    unlisted: Agent,
}

impl Fix {
    /// `idx` in ascending order of the agents' handles (bytes), the directory's order.
    fn sorted(&self, idx: &[usize]) -> Vec<usize> {
        let mut v = idx.to_vec();
        v.sort_by(|x, y| {
            let h = |i: &usize| self.listed[*i].0.handle.as_str().as_bytes().to_vec();
            h(x).cmp(&h(y))
        });
        v
    }
}

fn fix(e: &Env<'_>) -> R<Arc<Fix>> {
    e.fixture("directory", |t| {
        let cap = word(t, "dircap");
        let run = t.run_id.clone();
        let mut listed = Vec::new();
        for i in 0..3 {
            let a = t.register("dirl")?;
            let mut o = with(profile(t, &a, 1), "listed", Value::Bool(true));
            o.insert("name", s(&format!("Conformance \u{c4}rdvark {run} {i}")));
            let mut c = vec![("id", s(&cap))];
            if i == 1 {
                c.push(("tags", Value::Array(vec![s(&format!("tag-{run}-x"))])));
            }
            if i == 2 {
                o.insert("description", s(&format!("Finds Quokka-{run} trails.")));
            }
            o.insert(
                "capabilities",
                Value::Array(vec![
                    obj(c),
                    obj(vec![("id", s(&format!("only-{run}-{i}")))]),
                ]),
            );
            let p = publish_obj(t, &a, &o)?;
            listed.push((a, p));
        }
        let unlisted = t.register("diru")?;
        let mut o = profile(t, &unlisted, 1);
        o.insert("name", s(&format!("Conformance \u{c4}rdvark {run} hidden")));
        o.insert(
            "capabilities",
            Value::Array(vec![obj(vec![("id", s(&cap))])]),
        );
        publish_obj(t, &unlisted, &o)?;
        Ok(Fix {
            cap,
            run,
            listed,
            unlisted,
        })
    })
}

/// `GET /v1/directory?{query}` as `a`, waiting out `rate_limited` answers as a client must
/// (the searches of one case can exceed a tier's burst; `dir.rate` checks the limit itself).
fn search(t: &Target, a: &Agent, query: &str) -> R<Resp> {
    let path = format!("/v1/directory?{query}");
    let start = std::time::Instant::now();
    loop {
        let r = t.authed(a, "GET", &path, b"")?;
        if r.status != 429 || r.code() != Some("rate_limited") || start.elapsed().as_secs() > 120 {
            return Ok(r);
        }
        let wait = r
            .error_member("retry_after_s")
            .and_then(Value::as_i64)
            .unwrap_or(1)
            .clamp(1, 65);
        std::thread::sleep(std::time::Duration::from_secs(wait as u64));
    }
}

/// Percent-encodes a query value (RFC 3986 unreserved characters and `@:` stay as they are).
pub fn q(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'@' | b':' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// One page: the results and `next`.
fn page(t: &Target, a: &Agent, query: &str) -> R<(Resp, Vec<Value>, Option<String>)> {
    let r = search(t, a, query)?;
    r.expect_json(200)?;
    let results = r
        .member("results")?
        .as_array()
        .ok_or_else(|| Stop::Fail(format!("{}: `results` is not an array (PROF-9)", r.what)))?
        .to_vec();
    let next = match r.member("next")? {
        Value::Null => None,
        Value::String(c) => Some(c.clone()),
        other => fail!(
            "{}: `next` is {}, not a string or null (PROF-9)",
            r.what,
            other.kind()
        ),
    };
    Ok((r, results, next))
}

/// The handle of a result.
fn handle_of(v: &Value) -> String {
    at(v, &["profile", "handle"])
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// Fails unless the search `query` answers exactly `want` (of the fixture's listed agents), in
/// order, in one page with `next` null.
fn expect_results(t: &Target, v: &Agent, f: &Fix, query: &str, want: &[usize]) -> R {
    let want = f.sorted(want);
    let (r, results, next) = page(t, v, query)?;
    let got: Vec<String> = results.iter().map(handle_of).collect();
    let expected: Vec<String> = want
        .iter()
        .map(|i| f.listed[*i].0.handle.as_str().to_owned())
        .collect();
    ensure!(
        got == expected,
        "{}: results {got:?}, expected {expected:?} (PROF-9)",
        r.what
    );
    for (res, i) in results.iter().zip(&want) {
        check_entry(t, &r.what, res, &f.listed[*i].1)?;
    }
    ensure!(
        next.is_none(),
        "{}: `next` is {next:?} although no match follows the last result (PROF-9)",
        r.what
    );
    Ok(())
}

fn by_capability(e: &Env<'_>) -> R {
    let f = fix(e)?;
    let t = e.t;
    let v = t.register("dirv")?;
    // The searcher may read the unlisted profile; the directory still never lists it (PROF-8).
    t.grant(&f.unlisted, &v.handle, "read")?;
    let r = super::profile_kit::get_profile(t, Some(&v), f.unlisted.handle.as_str())?;
    ensure!(
        r.status == 200,
        "{}: the searcher was granted read but is answered {} (PROF-7)",
        r.what,
        r.brief()
    );
    expect_results(t, &v, &f, &format!("capability={}", q(&f.cap)), &[0, 1, 2])?;
    // Each listed agent's own capability finds it alone.
    for i in 0..f.listed.len() {
        let only = format!("only-{}-{i}", f.run);
        super::profile_kit::at_step(
            &format!("capability {only}"),
            expect_results(t, &v, &f, &format!("capability={}", q(&only)), &[i]),
        )?;
    }
    Ok(())
}

fn by_text(e: &Env<'_>) -> R {
    let f = fix(e)?;
    let t = e.t;
    let v = t.register("dirv")?;
    let run = &f.run;
    let cases: [(String, &[usize]); 6] = [
        (
            format!("text={}", q(&format!("\u{e4}rdvark {run}"))).replace("%20", "+"),
            &[0, 1, 2],
        ),
        (
            format!("text={}", q(&format!("\u{c4}RDVARK {run}"))),
            &[0, 1, 2],
        ),
        (format!("text={}", q(&format!("rdvark {run} 1"))), &[1]),
        (format!("text={}", q(&format!("TAG-{run}-X"))), &[1]),
        (format!("text={}", q(&format!("quokka-{run}"))), &[2]),
        (format!("text={}", q(&format!("Only-{run}-0"))), &[0]),
    ];
    for (query, want) in cases {
        super::profile_kit::at_step(&query, expect_results(t, &v, &f, &query, want))?;
    }
    // Filters combine.
    expect_results(
        t,
        &v,
        &f,
        &format!(
            "capability={}&text={}",
            q(&f.cap),
            q(&format!("quokka-{run}"))
        ),
        &[2],
    )?;
    expect_results(
        t,
        &v,
        &f,
        &format!(
            "capability=only-{run}-0&text={}",
            q(&format!("quokka-{run}"))
        ),
        &[],
    )?;
    Ok(())
}

fn min_tier(e: &Env<'_>) -> R {
    let f = fix(e)?;
    let t = e.t;
    let v = t.register("dirv")?;
    let levels = dir(t).tiers;
    let (r, results, _) = page(t, &v, &format!("capability={}", q(&f.cap)))?;
    let tier_of = |h: &str| {
        results
            .iter()
            .find(|x| handle_of(x) == h)
            .and_then(|x| at(x, &["tier"]))
            .and_then(Value::as_i64)
    };
    let tiers: Vec<i64> = f
        .listed
        .iter()
        .filter_map(|(a, _)| tier_of(a.handle.as_str()))
        .collect();
    ensure!(
        tiers.len() == 3,
        "{}: {} of the 3 listed agents found with a tier: {}",
        r.what,
        tiers.len(),
        r.brief()
    );
    let low = tiers.iter().copied().min().unwrap_or(0);
    expect_results(
        t,
        &v,
        &f,
        &format!("capability={}&min_tier={low}", q(&f.cap)),
        &[0, 1, 2],
    )?;
    let above: Vec<usize> = (0..3).filter(|i| tiers[*i] > low).collect();
    if low + 1 < levels {
        expect_results(
            t,
            &v,
            &f,
            &format!("capability={}&min_tier={}", q(&f.cap), low + 1),
            &above,
        )?;
    }
    for bad in [levels.to_string(), "-1".into(), "x".into(), "01".into()] {
        let r = search(t, &v, &format!("capability={}&min_tier={bad}", q(&f.cap)))?;
        super::profile_kit::at_step(
            &format!("min_tier={bad}"),
            r.expect_error_field(ErrorCode::InvalidField, "min_tier")
                .map(|_| ()),
        )?;
    }
    Ok(())
}

fn paging(e: &Env<'_>) -> R {
    let f = fix(e)?;
    let t = e.t;
    let v = t.register("dirv")?;
    let order = f.sorted(&[0, 1, 2]);
    let base = format!("capability={}&limit=1", q(&f.cap));
    let mut query = base.clone();
    for (n, i) in order.iter().enumerate() {
        let (r, results, next) = page(t, &v, &query)?;
        ensure!(
            results.len() == 1,
            "{}: page {} has {} results with limit=1 (PROF-9)",
            r.what,
            n + 1,
            results.len()
        );
        let (a, p) = &f.listed[*i];
        ensure!(
            handle_of(&results[0]) == a.handle.as_str(),
            "{}: page {} holds {}, expected {} (ascending handle order, no repeats, PROF-9)",
            r.what,
            n + 1,
            handle_of(&results[0]),
            a.handle
        );
        check_entry(t, &r.what, &results[0], p)?;
        match (n, next) {
            (2, None) => {}
            (2, Some(c)) => fail!(
                "{}: the last match's page has next {c:?}, not null (PROF-9)",
                r.what
            ),
            (_, None) => fail!(
                "{}: page {} has next null although matches follow (PROF-9)",
                r.what,
                n + 1
            ),
            (_, Some(c)) => query = format!("{base}&cursor={}", q(&c)),
        }
    }
    // The whole directory, a page at a time: ascending, no handle twice.
    let limit = dir(t).page_max.clamp(1, 50);
    let mut all: Vec<String> = Vec::new();
    let mut query = format!("limit={limit}");
    for _ in 0..2000 {
        let (r, results, next) = page(t, &v, &query)?;
        ensure!(
            results.len() as i64 <= limit,
            "{}: {} results with limit={limit} (PROF-9)",
            r.what,
            results.len()
        );
        for x in &results {
            let h = handle_of(x);
            if let Some(last) = all.last() {
                ensure!(last.as_bytes() < h.as_bytes(), "{}: {h} follows {last}: not in ascending order of the handles' bytes, or a handle repeated (PROF-9)", r.what);
            }
            all.push(h);
        }
        match next {
            None => break,
            Some(c) => query = format!("limit={limit}&cursor={}", q(&c)),
        }
    }
    for (a, _) in &f.listed {
        ensure!(
            all.iter().any(|h| h == a.handle.as_str()),
            "paging through the whole directory never reached the listed {} (PROF-9)",
            a.handle
        );
    }
    ensure!(
        !all.iter().any(|h| h == f.unlisted.handle.as_str()),
        "the whole directory lists the unlisted {} (PROF-8)",
        f.unlisted.handle
    );
    Ok(())
}

fn params(e: &Env<'_>) -> R {
    let t = e.t;
    let v = t.register("dirv")?;
    let page_max = dir(t).page_max;
    let bad: Vec<(String, &str)> = vec![
        ("capability=Upper".into(), "capability"),
        ("capability=-lead".into(), "capability"),
        (format!("capability={}", "w".repeat(65)), "capability"),
        ("text=".into(), "text"),
        (format!("text={}", "t".repeat(65)), "text"),
        ("text=%FF".into(), "text"),
        ("limit=0".into(), "limit"),
        (format!("limit={}", page_max + 1), "limit"),
        ("limit=01".into(), "limit"),
        ("limit=x".into(), "limit"),
        ("limit=-1".into(), "limit"),
        ("status=online".into(), "status"),
        ("status=Available".into(), "status"),
    ];
    for (query, field) in bad {
        let r = search(t, &v, &query)?;
        super::profile_kit::at_step(
            &query,
            r.expect_error_field(ErrorCode::InvalidField, field)
                .map(|_| ()),
        )?;
    }
    for cursor in ["%21%21bogus", "zz"] {
        let r = search(t, &v, &format!("cursor={cursor}"))?;
        super::profile_kit::at_step(
            &format!("cursor={cursor}"),
            r.expect_error(ErrorCode::InvalidCursor).map(|_| ()),
        )?;
    }
    // 64 characters of text are accepted, and so is limit=page_max.
    page(t, &v, &format!("text={}", q(&"\u{e9}".repeat(64))))?;
    page(t, &v, &format!("limit={page_max}"))?;
    for s in ["available", "busy", "away", "offline"] {
        page(t, &v, &format!("status={s}"))?;
    }
    Ok(())
}

fn by_status(e: &Env<'_>) -> R {
    let f = fix(e)?;
    let t = e.t;
    let v = t.register("dirv")?;
    let a = &f.listed[0].0;
    let r = t.authed(a, "POST", "/v1/presence/heartbeat", b"")?;
    r.expect_json(200)?;
    let cap = q(&f.cap);
    expect_results(
        t,
        &v,
        &f,
        &format!("capability={cap}&status=available"),
        &[0],
    )?;
    expect_results(
        t,
        &v,
        &f,
        &format!("capability={cap}&status=offline"),
        &[1, 2],
    )?;
    expect_results(t, &v, &f, &format!("capability={cap}&status=busy"), &[])
}

fn rate(e: &Env<'_>) -> R {
    let t = e.t;
    let per_min = dir(t).searches_per_min;
    if per_min > 120 {
        skip!("tier 0 searches_per_min {per_min}: the case searches at most 121 times");
    }
    let a = t.register("dirrate")?;
    for n in 0..=per_min {
        let r = t.authed(&a, "GET", "/v1/directory?limit=1", b"")?;
        if r.status == 200 {
            continue;
        }
        super::profile_kit::at_step(
            &format!("search {} of a burst", n + 1),
            r.expect_error(ErrorCode::RateLimited).map(|_| ()),
        )?;
        let wait = r
            .error_member("retry_after_s")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        ensure!(
            (1..=60).contains(&wait),
            "retry_after_s {wait} is not a wait of 1..60 s for a per-minute limit (PROF-9)"
        );
        return Ok(());
    }
    fail!("{} searches by one agent in a burst were all answered; tier 0 publishes searches_per_min {per_min} (PROF-9)", per_min + 1)
}
