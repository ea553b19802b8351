//! Item 11 (only when named, `--only conv`): conversation fan-out (SPEC.md section 19). Six
//! agents talk in one conversation at a fixed total rate (200 posts/s by default), round-robin,
//! each posting through its own relay; every participant holds the conversation's entry stream
//! (`GET /v1/conversations/{id}/stream`) on its own relay, and the bench stamps, for each post
//! and each of the five other participants, the moment the entry carrying the post's envelope
//! id is read from that participant's stream. One process, one clock.
//!
//! With two relays (`--conv-relays 2`, the default) relays A and B are peered over plain HTTP on
//! loopback; the caller and two others are homed on A (the conversation's home relay), three
//! on B. A post of an agent of B goes to B, which forwards it to A; A appends it and replicates
//! the entry back to B. With one relay all six are on A.
//!
//! A relay takes at most `conversations.posts_per_min` posts per minute in one conversation,
//! and a configuration may raise that to [`POSTS_PER_MIN_MAX`] (600) only. At 200 posts/s one
//! conversation therefore takes 3 s of posts at most; the run is cut into segments of
//! `per_conversation` posts (500 by default, leaving room for the check posts), each in a
//! conversation of its own among the same six agents, all called, accepted and streamed before
//! the timed phase, used one after the other: at every moment of the run one six-party
//! conversation gets the whole rate.

use crate::agents::{now_ms, Agent};
use crate::http::{self, Conn};
use crate::relay_proc::{Launcher, RelayProc};
use crate::report::{percentile, J};
use crate::sys::CpuMeter;
use anyhow::{bail, Context, Result};
use formica_protocol::envelope::{ConvActionKind, ConvMode, ConvRole, Invitee};
use formica_protocol::{
    Envelope, Handle, JsonLimits, MessageId, MessageType, Payload, SignedEnvelope, Value,
};
use formica_relay::engine::conversations::POSTS_PER_MIN_MAX;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Participants of each conversation, the caller (agent 0, on relay A) included.
pub const PARTIES: usize = 6;
/// Keep-alive connections each sender posts on (a post goes out at its scheduled moment even
/// if the answer to the sender's previous post is late: open loop).
const CONNS_PER_SENDER: usize = 4;
/// `conversations.turns_max` of the item's relays (the configuration's maximum) and the turn
/// limit of every call.
const TURNS_MAX: i64 = 100_000;
/// `conversations.open_max` of the item's relays: each agent takes part in every segment.
const OPEN_MAX: usize = 1000;
/// How long the set-up waits for a replica, the roster, or the check posts' entries.
const SETUP_WAIT: Duration = Duration::from_secs(30);
/// How long the timed phase waits for the last entries after the last answer.
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct ConvPlan {
    /// 1 (every participant on A) or 2 (three on A, three on B).
    pub relays: usize,
    pub rate_per_s: f64,
    pub seconds: f64,
    /// Timed posts per conversation (at most [`POSTS_PER_MIN_MAX`] minus the check posts).
    pub per_conversation: usize,
    pub text_bytes: usize,
}

/// The item's relay configuration: the benchmark's ([`crate::relay_proc::config_text`]), its
/// tier also allowed to send `call` and `conv_action`, and conversation limits raised so that
/// the run is not refused: the turn limit and `posts_per_min` at the configuration's maxima,
/// `open_max` above the number of segments.
pub fn config_text() -> Result<String> {
    let base = crate::relay_proc::config_text();
    let from = "may_send = [\"message\", ";
    if !base.contains(from) {
        bail!("the bench tier's may_send line changed; conv.rs adds call and conv_action to it");
    }
    let s = base.replacen(
        from,
        "may_send = [\"message\", \"call\", \"conv_action\", ",
        1,
    );
    Ok(format!(
        "{s}[conversations]\nturns_max = {TURNS_MAX}\nposts_per_min = {POSTS_PER_MIN_MAX}\nopen_max = {OPEN_MAX}\n"
    ))
}

/// The relay (0 = A, 1 = B) that homes participant `i`.
fn relay_of(i: usize, relays: usize) -> usize {
    if relays >= 2 && i >= PARTIES / 2 {
        1
    } else {
        0
    }
}

/// Posts per conversation the relay's `posts_per_min` leaves for timed posts (each
/// conversation also takes one check post per participant).
pub fn per_conversation_max() -> usize {
    POSTS_PER_MIN_MAX - PARTIES
}

fn sign(
    a: &Agent,
    msg_type: MessageType,
    to: Vec<Handle>,
    conv: Option<MessageId>,
    payload: Payload,
) -> Result<SignedEnvelope> {
    Envelope {
        msg_type,
        type_version: 1,
        from: a.handle.clone(),
        key: a.key.public().key_id(),
        to,
        ts: now_ms(),
        corr: None,
        ack_by: None,
        conv,
        payload,
    }
    .sign(&a.key)
    .map_err(|e| anyhow::anyhow!("signing: {e}"))
}

fn text(tag: &str, len: usize) -> String {
    let mut t = tag.to_owned();
    while t.len() < len {
        t.push_str(" lorem ipsum dolor sit amet");
    }
    t.truncate(len.max(tag.len()));
    t
}

fn post_request(addr: &str, wire: &[u8]) -> Vec<u8> {
    http::request(
        "POST",
        "/v1/envelopes",
        addr,
        &[("content-type", "application/json")],
        wire,
    )
}

/// Posts one envelope and wants `201 accepted`.
async fn post(conn: &mut Conn, addr: &str, what: &str, s: &SignedEnvelope) -> Result<()> {
    let r = conn.send(&post_request(addr, &s.wire_bytes())).await?;
    let t = r.text();
    if r.status != 201 || !t.contains("\"result\":\"accepted\"") {
        bail!("{what}: {} {t}", r.status);
    }
    Ok(())
}

/// `GET path` signed by `a`.
async fn get(conn: &mut Conn, addr: &str, a: &Agent, path: &str) -> Result<http::Response> {
    let auth = a.auth("GET", path, b"");
    conn.send(&http::request(
        "GET",
        path,
        addr,
        &[("authorization", &auth)],
        b"",
    ))
    .await
}

/// The states of the participants in a conversation's summary, by handle.
fn roster(summary: &Value) -> Vec<(String, String)> {
    summary
        .as_object()
        .and_then(|o| o.get("participants"))
        .and_then(Value::as_array)
        .map(|ps| {
            ps.iter()
                .filter_map(|p| {
                    let o = p.as_object()?;
                    Some((
                        o.get("handle")?.as_str()?.to_owned(),
                        o.get("state")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// One post: who sends it, in which segment, its envelope.
struct Post {
    sender: usize,
    wire: Vec<u8>,
}

/// What the stream readers record.
#[derive(Default)]
struct Seen {
    /// Envelope id (hex) -> post index.
    ids: HashMap<String, usize>,
    /// Per post, per participant: when its stream delivered the post's entry.
    arrived: Vec<[Option<Instant>; PARTIES]>,
    /// Per post: the entry's `at` (home relay's clock, ms).
    at_ms: Vec<Option<i64>>,
    /// Entries whose seq did not follow the stream's previous one.
    seq_gaps: usize,
    /// Streams that ended or sent an error event.
    stream_errors: Vec<String>,
}

/// Reads one participant's stream of one conversation until it is aborted.
async fn read_stream(mut sse: http::SseStream, who: usize, seen: Rc<RefCell<Seen>>) {
    let limits = JsonLimits {
        bytes_max: 1 << 20,
        depth_max: 64,
    };
    let mut last_seq: i64 = 0;
    loop {
        let ev = match sse.next_event().await {
            Ok(ev) => ev,
            Err(e) => {
                seen.borrow_mut()
                    .stream_errors
                    .push(format!("participant {who}: {e:#}"));
                return;
            }
        };
        let now = Instant::now();
        if ev.event != "entry" {
            seen.borrow_mut()
                .stream_errors
                .push(format!("participant {who}: event {} {}", ev.event, ev.data));
            continue;
        }
        let Ok(v) = formica_protocol::json::parse(ev.data.as_bytes(), limits) else {
            seen.borrow_mut()
                .stream_errors
                .push(format!("participant {who}: entry is not JSON"));
            continue;
        };
        let Some(o) = v.as_object() else { continue };
        let seq = o.get("seq").and_then(Value::as_i64).unwrap_or(-1);
        let at = o.get("at").and_then(Value::as_i64);
        let id = o
            .get("envelope")
            .and_then(Value::as_object)
            .and_then(|e| e.get("id"))
            .and_then(Value::as_str);
        let mut s = seen.borrow_mut();
        if seq != last_seq + 1 {
            s.seq_gaps += 1;
        }
        last_seq = seq;
        if let Some(k) = id.and_then(|id| s.ids.get(id).copied()) {
            s.arrived[k][who].get_or_insert(now);
            if s.at_ms[k].is_none() {
                s.at_ms[k] = at;
            }
        }
    }
}

/// `some ... total=` of `/proc/pressure/io`: microseconds in which some task waited for I/O.
fn io_pressure_us() -> Option<u64> {
    let t = std::fs::read_to_string("/proc/pressure/io").ok()?;
    t.lines()
        .find(|l| l.starts_with("some"))?
        .split_whitespace()
        .find_map(|w| w.strip_prefix("total="))?
        .parse()
        .ok()
}

/// Sorted milliseconds -> the JSON summary.
fn summary(sorted: &[f64]) -> J {
    let f = |x: f64| if x.is_nan() { J::Null } else { J::from(x) };
    J::obj()
        .with("count", sorted.len())
        .with("p50_ms", f(percentile(sorted, 50.0)))
        .with("p90_ms", f(percentile(sorted, 90.0)))
        .with("p99_ms", f(percentile(sorted, 99.0)))
        .with("p999_ms", f(percentile(sorted, 99.9)))
        .with("max_ms", f(sorted.last().copied().unwrap_or(f64::NAN)))
}

/// The whole item: `rounds` rounds, each on fresh relays; the round with the median p99 (of
/// post to event, over every pair) counts, and every round is in the JSON. Then, as a
/// diagnostic, one round on relays with relaxed fsync (no fsync at all): what the relays'
/// processing costs without the disk.
pub fn run(launcher: &Launcher, plan: &ConvPlan, rounds: usize) -> Result<J> {
    let mut all = Vec::new();
    for round in 1..=rounds.max(1) {
        let j = run_round(launcher, plan, &format!("conv-{round}"), false)?;
        let g = |p: &[&str]| j.get(p).unwrap_or(f64::NAN);
        eprintln!(
            "[formica-bench] conv: round {round}/{rounds}: post->event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; missing {}, refused {}; other tasks on the relay core {:.2}, on the loadgen core {:.2}, steal {:.2}; others' disk writes {:.0} MB/s, I/O stall {:.2}",
            g(&["post_to_event", "p50_ms"]),
            g(&["post_to_event", "p99_ms"]),
            g(&["post_to_event", "max_ms"]),
            g(&["events_missing"]),
            g(&["posts_refused"]),
            g(&["interference", "other_tasks_on_relay_cores"]),
            g(&["interference", "other_tasks_on_loadgen_cores"]),
            g(&["interference", "steal_on_relay_cores"]),
            g(&["interference", "others_disk_write_mb_per_s"]),
            g(&["interference", "io_pressure_some_share"]),
        );
        all.push(j);
    }
    let p99 = |j: &J| j.get(&["post_to_event", "p99_ms"]).unwrap_or(f64::INFINITY);
    let mut order: Vec<usize> = (0..all.len()).collect();
    order.sort_by(|&a, &b| p99(&all[a]).total_cmp(&p99(&all[b])));
    let counted = order[order.len() / 2];
    let each: Vec<J> = all
        .iter()
        .enumerate()
        .map(|(i, j)| {
            let g = |p: &[&str]| j.get(p).map(J::from).unwrap_or(J::Null);
            J::obj()
                .with("round", i + 1)
                .with("p50_ms", g(&["post_to_event", "p50_ms"]))
                .with("p99_ms", g(&["post_to_event", "p99_ms"]))
                .with("max_ms", g(&["post_to_event", "max_ms"]))
                .with("events_missing", g(&["events_missing"]))
                .with("posts_refused", g(&["posts_refused"]))
                .with(
                    "other_tasks_on_relay_cores",
                    g(&["interference", "other_tasks_on_relay_cores"]),
                )
                .with(
                    "other_tasks_on_loadgen_cores",
                    g(&["interference", "other_tasks_on_loadgen_cores"]),
                )
                .with(
                    "steal_on_relay_cores",
                    g(&["interference", "steal_on_relay_cores"]),
                )
                .with(
                    "others_disk_write_mb_per_s",
                    g(&["interference", "others_disk_write_mb_per_s"]),
                )
                .with(
                    "io_pressure_some_share",
                    g(&["interference", "io_pressure_some_share"]),
                )
                .with(
                    "send_lag_p99_ms",
                    g(&["send_lag_behind_schedule", "p99_ms"]),
                )
        })
        .collect();
    let mut out = all.swap_remove(counted);
    out.set(
        "figures",
        format!(
            "round {} of {}: the round with the median p99 post->event",
            counted + 1,
            order.len()
        ),
    );
    out.set("rounds", J::Arr(each));
    out.set("other_rounds", J::Arr(all));
    let x = run_round(launcher, plan, "conv-relaxed", true)?;
    let g = |p: &[&str]| x.get(p).unwrap_or(f64::NAN);
    eprintln!(
        "[formica-bench] conv: relaxed fsync (diagnostic): post->event p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; missing {}",
        g(&["post_to_event", "p50_ms"]),
        g(&["post_to_event", "p99_ms"]),
        g(&["post_to_event", "max_ms"]),
        g(&["events_missing"]),
    );
    out.set("relaxed_fsync_diagnostic", x);
    Ok(out)
}

/// One round: fresh relays (`<name>-a`, `<name>-b`), set-up, check posts, timed posts.
fn run_round(launcher: &Launcher, plan: &ConvPlan, name: &str, relaxed: bool) -> Result<J> {
    if !(1..=2).contains(&plan.relays) {
        bail!("--conv-relays is 1 or 2");
    }
    if plan.per_conversation == 0 || plan.per_conversation > per_conversation_max() {
        bail!(
            "posts per conversation must be in 1..={} (the relay's posts_per_min maximum, {POSTS_PER_MIN_MAX}, less one check post per participant)",
            per_conversation_max()
        );
    }
    let cfg = config_text()?;
    let mut relays: Vec<RelayProc> = Vec::new();
    let mut hosts = Vec::new();
    for side in ["a", "b"].iter().take(plan.relays) {
        let (r, h) = launcher.start_federated_with(&format!("{name}-{side}"), &cfg, relaxed)?;
        relays.push(r);
        hosts.push(h);
    }
    if plan.relays == 2 {
        launcher.peer(&relays[0], &hosts[1])?;
    }
    let agents: Arc<Vec<Agent>> = Arc::new(
        (0..PARTIES)
            .map(|i| Agent::new(i, &hosts[relay_of(i, plan.relays)]))
            .collect::<Result<_>>()?,
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    let out = local.block_on(&rt, measure(&relays, agents, plan));
    let mut logs = J::obj();
    for (r, name) in relays.iter_mut().zip(["a", "b"]) {
        let _ = r.stop();
        let l = crate::disk::RelayLog::read(r);
        logs.set(
            name,
            J::obj().with("warnings_and_errors", l.problems_total).with(
                "first_warnings_and_errors",
                J::Arr(l.problems.iter().map(|s| J::from(s.as_str())).collect()),
            ),
        );
    }
    Ok(out?
        .with(
            "fsync",
            if relaxed {
                "relaxed (diagnostic: no fsync)"
            } else {
                "durable"
            },
        )
        .with("relay_log", logs)
        .with("relay_config_before_federation_section", cfg))
}

async fn measure(relays: &[RelayProc], agents: Arc<Vec<Agent>>, plan: &ConvPlan) -> Result<J> {
    let nr = plan.relays;
    let addr = |i: usize| relays[relay_of(i, nr)].addr.clone();
    let on = |r: usize| -> Vec<usize> { (0..PARTIES).filter(|&i| relay_of(i, nr) == r).collect() };
    // 1. Registrations on each agent's own relay; each invitee grants the caller `message`
    // there (CONVO-5).
    for (r, relay) in relays.iter().enumerate() {
        let mine = on(r);
        let range = mine[0]..mine[mine.len() - 1] + 1;
        crate::agents::register_all(&relay.addr, agents.clone(), range).await?;
        let pairs = mine.iter().filter(|&&i| i != 0).map(|&i| (i, 0)).collect();
        crate::agents::allow_all_level(&relay.addr, agents.clone(), pairs, "message").await?;
    }
    let total = (plan.rate_per_s * plan.seconds).round().max(1.0) as usize;
    let n_conv = total.div_ceil(plan.per_conversation);
    let owner = &agents[0];
    let invitees: Vec<Invitee> = agents[1..]
        .iter()
        .map(|a| Invitee {
            handle: a.handle.clone(),
            role: ConvRole::Member,
        })
        .collect();
    let mut conns: Vec<Conn> = Vec::new();
    for r in relays {
        conns.push(Conn::connect(&r.addr).await?);
    }
    // 2. The calls, the answers (each through the invitee's own relay, once its relay holds
    // the conversation), and a roster in which all six are joined, on every relay.
    let mut convs: Vec<MessageId> = Vec::with_capacity(n_conv);
    for c in 0..n_conv {
        let call = sign(
            owner,
            MessageType::Call,
            invitees.iter().map(|p| p.handle.clone()).collect(),
            None,
            Payload::Call {
                topic: format!("bench fan-out, segment {c}"),
                mode: ConvMode::Live,
                participants: invitees.clone(),
                turns: Some(TURNS_MAX),
                expires: None,
            },
        )?;
        if let Err(e) = post(&mut conns[0], &relays[0].addr, "the call", &call).await {
            if nr == 2 && format!("{e:#}").contains("unknown_recipient") {
                return Err(e.context(
                    "relay A refused a call naming agents of relay B: this relay does not carry conversations across relays yet (measure with --conv-relays 1)",
                ));
            }
            return Err(e);
        }
        convs.push(call.id());
    }
    for &id in &convs {
        let path = format!("/v1/conversations/{}", id.to_hex());
        for i in 1..PARTIES {
            let r = relay_of(i, nr);
            let deadline = Instant::now() + SETUP_WAIT;
            loop {
                let resp = get(&mut conns[r], &addr(i), &agents[i], &path).await?;
                if resp.status == 200 {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "participant {i} does not see conversation {id} on its relay after {SETUP_WAIT:?}: {} {}",
                        resp.status,
                        resp.text()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let accept = sign(
                &agents[i],
                MessageType::ConvAction,
                vec![owner.handle.clone()],
                Some(id),
                Payload::ConvAction {
                    action: ConvActionKind::Accept,
                    reason: None,
                    participants: None,
                },
            )?;
            post(
                &mut conns[r],
                &addr(i),
                &format!("participant {i} accepting"),
                &accept,
            )
            .await?;
        }
    }
    for &id in &convs {
        let path = format!("/v1/conversations/{}", id.to_hex());
        for i in 0..PARTIES {
            let r = relay_of(i, nr);
            let deadline = Instant::now() + SETUP_WAIT;
            loop {
                let resp = get(&mut conns[r], &addr(i), &agents[i], &path).await?;
                let ro = if resp.status == 200 {
                    roster(&resp.json()?)
                } else {
                    Vec::new()
                };
                if ro.len() == PARTIES && ro.iter().all(|(_, s)| s == "joined") {
                    break;
                }
                if Instant::now() > deadline {
                    bail!(
                        "conversation {id} as participant {i} sees it on its relay after {SETUP_WAIT:?}: {ro:?} ({} {})",
                        resp.status,
                        resp.text()
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    // 3. Every post signed now (the relays' freshness window is an hour): first one check post
    // per participant and conversation, then the timed posts; post k goes to segment
    // k / per_conversation, from participant k mod 6, to the five others.
    let others = |s: usize| -> Vec<Handle> {
        (0..PARTIES)
            .filter(|&j| j != s)
            .map(|j| agents[j].handle.clone())
            .collect()
    };
    let n_check = n_conv * PARTIES;
    let seen: Rc<RefCell<Seen>> = Rc::default();
    let mut posts: Vec<Post> = Vec::with_capacity(n_check + total);
    for k in 0..n_check + total {
        let (sender, conv, tag) = if k < n_check {
            (k % PARTIES, convs[k / PARTIES], format!("check {k}"))
        } else {
            let t = k - n_check;
            (
                t % PARTIES,
                convs[t / plan.per_conversation],
                format!("post {t:08}"),
            )
        };
        let s = sign(
            &agents[sender],
            MessageType::Message,
            others(sender),
            Some(conv),
            Payload::Message {
                text: text(&tag, plan.text_bytes),
                data: None,
            },
        )?;
        seen.borrow_mut().ids.insert(s.id().to_hex(), k);
        posts.push(Post {
            sender,
            wire: s.wire_bytes(),
        });
    }
    {
        let mut s = seen.borrow_mut();
        s.arrived = vec![[None; PARTIES]; posts.len()];
        s.at_ms = vec![None; posts.len()];
    }
    // 4. Every participant opens each conversation's stream on its own relay.
    let mut readers = Vec::new();
    for &id in &convs {
        let path = format!("/v1/conversations/{}/stream", id.to_hex());
        for i in 0..PARTIES {
            let a = addr(i);
            let auth = agents[i].auth("GET", &path, b"");
            let req = http::request(
                "GET",
                &path,
                &a,
                &[("authorization", &auth), ("accept", "text/event-stream")],
                b"",
            );
            let sse = match Conn::connect(&a).await?.open_stream(&req).await? {
                Ok(s) => s,
                Err(resp) => bail!(
                    "stream of conversation {id} for participant {i}: {} {}",
                    resp.status,
                    resp.text()
                ),
            };
            readers.push(tokio::task::spawn_local(read_stream(sse, i, seen.clone())));
        }
    }
    let missing = |range: std::ops::Range<usize>, ok: &dyn Fn(usize) -> bool| -> usize {
        let s = seen.borrow();
        range
            .filter(|&k| ok(k))
            .map(|k| {
                (0..PARTIES)
                    .filter(|&j| j != posts[k].sender && s.arrived[k][j].is_none())
                    .count()
            })
            .sum()
    };
    // 5. The check posts, one at a time; every stream must show each before the timed phase.
    for (k, p) in posts.iter().enumerate().take(n_check) {
        let r = relay_of(p.sender, nr);
        let resp = conns[r]
            .send(&post_request(&relays[r].addr, &p.wire))
            .await?;
        if resp.status != 201 {
            bail!("check post {k}: {} {}", resp.status, resp.text());
        }
    }
    let deadline = Instant::now() + SETUP_WAIT;
    loop {
        let m = missing(0..n_check, &|_| true);
        if m == 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{m} of {} check entries did not reach their streams within {SETUP_WAIT:?}; stream errors: {:?}",
                n_check * (PARTIES - 1),
                seen.borrow().stream_errors
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // 6. The timed phase: post k at t0 + k / rate, on connection (k / 6) mod 4 of its sender.
    type Sent = Vec<Option<(Instant, Instant, f64)>>;
    let sent: Rc<RefCell<Sent>> = Rc::new(RefCell::new(vec![None; total]));
    let acked: Rc<RefCell<Vec<Option<Instant>>>> = Rc::new(RefCell::new(vec![None; total]));
    let refused: Rc<RefCell<Vec<String>>> = Rc::default();
    let reqs: Rc<Vec<Vec<u8>>> = Rc::new(
        posts[n_check..]
            .iter()
            .map(|p| post_request(&addr(p.sender), &p.wire))
            .collect(),
    );
    let io0 = io_pressure_us();
    let meters: Vec<CpuMeter> = relays
        .iter()
        .map(|r| CpuMeter::start(r.pid, &r.cpus))
        .collect();
    let send_t0 = Instant::now();
    let period = Duration::from_secs_f64(1.0 / plan.rate_per_s);
    let mut senders = Vec::new();
    let mut send_conns = Vec::new();
    for s in 0..PARTIES {
        for c in 0..CONNS_PER_SENDER {
            send_conns.push((s, c, Conn::connect(&addr(s)).await?));
        }
    }
    let t0 = tokio::time::Instant::now() + Duration::from_millis(100);
    for (s, c, mut conn) in send_conns {
        let (reqs, sent, acked, refused) =
            (reqs.clone(), sent.clone(), acked.clone(), refused.clone());
        senders.push(tokio::task::spawn_local(async move {
            let mut k = s + PARTIES * c;
            while k < reqs.len() {
                let due = t0 + period * k as u32;
                tokio::time::sleep_until(due).await;
                let at = Instant::now();
                let wall = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs_f64() * 1e3)
                    .unwrap_or(0.0);
                sent.borrow_mut()[k] = Some((due.into_std(), at, wall));
                let r = conn.send(&reqs[k]).await?;
                if r.status == 201 {
                    acked.borrow_mut()[k] = Some(Instant::now());
                } else {
                    refused
                        .borrow_mut()
                        .push(format!("post {k}: {} {}", r.status, r.text()));
                }
                k += PARTIES * CONNS_PER_SENDER;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in senders {
        t.await.context("sender task")??;
    }
    let send_end = Instant::now();
    // 7. The last entries (at most DRAIN_WAIT after the last answer).
    let accepted = |t: usize| acked.borrow()[t].is_some();
    let deadline = Instant::now() + DRAIN_WAIT;
    loop {
        let m = missing(n_check..n_check + total, &|k| accepted(k - n_check));
        if m == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = send_end.elapsed();
    let cpu: Vec<_> = meters.iter().map(CpuMeter::stop).collect();
    let io_stalled = match (io0, io_pressure_us()) {
        (Some(a), Some(b)) => {
            J::from(b.saturating_sub(a) as f64 / 1e6 / send_t0.elapsed().as_secs_f64().max(1e-9))
        }
        _ => J::Null,
    };
    for r in &readers {
        r.abort();
    }
    // 8. Figures.
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let s = seen.borrow();
    let sent = sent.borrow();
    let acked = acked.borrow();
    let (mut all, mut same, mut cross) = (Vec::new(), Vec::new(), Vec::new());
    let mut by_path: [[Vec<f64>; 2]; 2] = Default::default();
    let (mut ack, mut lag, mut to_append) = (Vec::new(), Vec::new(), Vec::new());
    let (mut expected, mut missing_pairs) = (0usize, 0usize);
    let mut posts_accepted = 0usize;
    for t in 0..total {
        let k = n_check + t;
        let Some((due, at, wall)) = sent[t] else {
            continue;
        };
        lag.push(ms(at.saturating_duration_since(due)));
        let Some(a) = acked[t] else { continue };
        posts_accepted += 1;
        ack.push(ms(a.saturating_duration_since(at)));
        if let Some(x) = s.at_ms[k] {
            to_append.push(x as f64 - wall);
        }
        let from = relay_of(posts[k].sender, nr);
        for j in (0..PARTIES).filter(|&j| j != posts[k].sender) {
            expected += 1;
            let Some(r) = s.arrived[k][j] else {
                missing_pairs += 1;
                continue;
            };
            let d = ms(r.saturating_duration_since(at));
            let to = relay_of(j, nr);
            all.push(d);
            if from == to {
                same.push(d);
            } else {
                cross.push(d);
            }
            by_path[from][to].push(d);
        }
    }
    for v in [
        &mut all,
        &mut same,
        &mut cross,
        &mut ack,
        &mut lag,
        &mut to_append,
    ] {
        v.sort_by(f64::total_cmp);
    }
    let mut paths = J::obj();
    for (f, fname) in ["a", "b"].iter().enumerate().take(nr) {
        for (t, tname) in ["a", "b"].iter().enumerate().take(nr) {
            let v = &mut by_path[f][t];
            v.sort_by(f64::total_cmp);
            paths.set(&format!("from_{fname}_to_{tname}"), summary(v));
        }
    }
    let refused = refused.borrow();
    let mut cpu_j = J::obj();
    for (c, name) in cpu.iter().zip(["a", "b"]) {
        cpu_j.set(name, c.to_json());
    }
    // What else ran where the relays and the load generator run: both relays share the relay
    // cores, so each one's "other tasks" include the other relay.
    let ours: f64 = cpu.iter().map(|c| c.relay_cores_busy).sum();
    let ours_disk: f64 = cpu.iter().map(|c| c.relay_write_bytes_per_s).sum();
    let interference = J::obj()
        .with(
            "other_tasks_on_relay_cores",
            (cpu[0].others_on_relay_cores + cpu[0].relay_cores_busy - ours).max(0.0),
        )
        .with(
            "other_tasks_on_loadgen_cores",
            cpu[0].others_on_loadgen_cores,
        )
        .with("steal_on_relay_cores", cpu[0].steal_on_relay_cores)
        .with("relays_busy_cores", ours)
        .with(
            "others_disk_write_mb_per_s",
            ((cpu[0].disk_write_bytes_per_s - ours_disk) / 1e6).max(0.0),
        )
        .with("relays_disk_write_mb_per_s", ours_disk / 1e6)
        .with("io_pressure_some_share", io_stalled);
    let per_relay: Vec<J> = (0..nr).map(|r| J::from(on(r).len())).collect();
    Ok(J::obj()
        .with("relays", nr)
        .with("parties", PARTIES)
        .with("participants_per_relay", J::Arr(per_relay))
        .with("home_relay", "a (the caller, participant 0, is homed there)")
        .with("mode", "live")
        .with("offered_per_s", plan.rate_per_s)
        .with("seconds", plan.seconds)
        .with("posts", total)
        .with("posts_accepted", posts_accepted)
        .with("posts_refused", refused.len())
        .with(
            "first_refusals",
            J::Arr(refused.iter().take(5).map(|x| J::from(x.as_str())).collect()),
        )
        .with("conversations", n_conv)
        .with("posts_per_conversation", plan.per_conversation)
        .with(
            "segments",
            format!(
                "posts_per_min is capped at {POSTS_PER_MIN_MAX} per conversation; each conversation takes {} consecutive posts (after {PARTIES} untimed check posts), so one conversation at a time gets the whole rate",
                plan.per_conversation
            ),
        )
        .with("check_posts_untimed", n_check)
        .with("sender_connections", PARTIES * CONNS_PER_SENDER)
        .with("stream", "SSE GET /v1/conversations/{id}/stream on the reader's own relay")
        .with("text_bytes", plan.text_bytes)
        .with("events_expected", expected)
        .with("events_received", all.len())
        .with("events_missing", missing_pairs)
        .with("drain_wait_s", drain.as_secs_f64())
        .with("stream_seq_gaps", s.seq_gaps)
        .with(
            "stream_errors",
            J::Arr(
                s.stream_errors
                    .iter()
                    .take(10)
                    .map(|x| J::from(x.as_str()))
                    .collect(),
            ),
        )
        .with("post_to_event", summary(&all))
        .with("post_to_event_same_relay", summary(&same))
        .with("post_to_event_cross_relay", summary(&cross))
        .with("post_to_event_by_relays", paths)
        .with("post_to_201", summary(&ack))
        .with(
            "post_to_home_append_ms_resolution",
            summary(&to_append).with(
                "what",
                "the entry's `at` (home relay's clock, whole ms) minus the send moment (this process's wall clock); same machine, same clock",
            ),
        )
        .with("send_lag_behind_schedule", summary(&lag))
        .with("cpu", cpu_j)
        .with("interference", interference))
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_parses() {
        let dir =
            std::env::temp_dir().join(format!("formica-bench-conv-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_default();
        let p = dir.join("c.toml");
        let text = super::config_text().unwrap_or_default();
        std::fs::write(&p, &text).unwrap_or_default();
        let c = formica_relay::config::RelayConfig::load(Some(&p), Default::default());
        let _ = std::fs::remove_dir_all(&dir);
        assert!(c.is_ok(), "{c:?}");
        assert!(text.contains("\"call\", \"conv_action\""));
    }

    #[test]
    fn who_is_where() {
        let on_b: Vec<usize> = (0..super::PARTIES)
            .filter(|&i| super::relay_of(i, 2) == 1)
            .collect();
        assert_eq!(on_b, vec![3, 4, 5]);
        assert!((0..super::PARTIES).all(|i| super::relay_of(i, 1) == 0));
    }
}
