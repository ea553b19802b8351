//! Conversations (draft SPEC section 19): the envelope rules of calls and actions, entry hash
//! links, and the fold of participant and conversation states.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use formica_protocol::conversation::*;
use formica_protocol::envelope::*;
use formica_protocol::{ErrorCode, Handle, SecretKey};

fn sk(n: u8) -> SecretKey {
    SecretKey::from_seed(&[n; 32])
}

fn h(name: &str) -> Handle {
    Handle::parse(&format!("@{name}@relay.example")).unwrap()
}

const LIMITS: ConvLimits = ConvLimits {
    participants_max: 4,
    turns_max: 3,
    ttl_max_ms: 3_600_000,
};

fn env(from: &str, n: u8, to: &[&str], payload: Payload, conv: Option<MessageId>) -> Envelope {
    let msg_type = match &payload {
        Payload::Call { .. } => MessageType::Call,
        Payload::ConvAction { .. } => MessageType::ConvAction,
        Payload::Ack { .. } => MessageType::Ack,
        _ => MessageType::Message,
    };
    Envelope {
        msg_type,
        type_version: 1,
        from: h(from),
        key: sk(n).public().key_id(),
        to: to.iter().map(|t| h(t)).collect(),
        ts: 1_000,
        corr: None,
        ack_by: None,
        conv,
        payload,
    }
}

fn call(to: &[&str], mode: ConvMode) -> SignedEnvelope {
    let participants = to
        .iter()
        .map(|t| Invitee {
            handle: h(t),
            role: ConvRole::Member,
        })
        .collect();
    env(
        "owner",
        1,
        to,
        Payload::Call {
            topic: "review PR 7".into(),
            mode,
            participants,
            turns: None,
            expires: None,
        },
        None,
    )
    .sign(&sk(1))
    .unwrap()
}

fn action(from: &str, n: u8, conv: MessageId, action: ConvActionKind) -> SignedEnvelope {
    env(
        from,
        n,
        &["owner"],
        Payload::ConvAction {
            action,
            reason: None,
            participants: None,
        },
        Some(conv),
    )
    .sign(&sk(n))
    .unwrap()
}

fn post(from: &str, n: u8, to: &[&str], conv: MessageId, text: &str) -> SignedEnvelope {
    env(
        from,
        n,
        to,
        Payload::Message {
            text: text.into(),
            data: None,
        },
        Some(conv),
    )
    .sign(&sk(n))
    .unwrap()
}

/// Judges `se` and, if accepted, appends it and what follows from it; returns the refusal.
fn step(c: &mut Conversation, se: &SignedEnvelope, at: i64) -> Result<(), ErrorCode> {
    c.judge(se.envelope(), at, &LIMITS).map_err(|e| e.code)?;
    let e = c.next_entry(EntryBody::Envelope(se.clone()), at);
    c.apply(&e);
    for ev in c.follow_ups(&LIMITS) {
        let e = c.next_entry(EntryBody::Event(ev), at);
        c.apply(&e);
    }
    Ok(())
}

fn parse(se: &SignedEnvelope) -> Result<SignedEnvelope, ErrorCode> {
    SignedEnvelope::parse(&se.wire_bytes(), &EnvelopeLimits::default()).map_err(|e| e.code())
}

#[test]
fn calls_and_actions_obey_their_envelope_rules() {
    let c = call(&["nova", "sage"], ConvMode::Live);
    assert!(parse(&c).is_ok());
    // A call is addressed to exactly its participants, in their order.
    let mut e = c.envelope().clone();
    e.to.reverse();
    assert_eq!(
        parse(&e.sign(&sk(1)).unwrap()),
        Err(ErrorCode::InvalidField)
    );
    // A call carries no conv and no ack_by.
    let mut e = c.envelope().clone();
    e.conv = Some(c.id());
    assert_eq!(
        parse(&e.sign(&sk(1)).unwrap()),
        Err(ErrorCode::InvalidField)
    );
    // An action needs conv.
    let mut a = action("nova", 2, c.id(), ConvActionKind::Accept)
        .envelope()
        .clone();
    a.conv = None;
    assert_eq!(
        parse(&a.sign(&sk(2)).unwrap()),
        Err(ErrorCode::MissingField)
    );
    // conv is refused on acks.
    let ack = env(
        "nova",
        2,
        &["owner"],
        Payload::Ack {
            msg: c.id(),
            status: AckStatus::Received,
            reason: None,
        },
        Some(c.id()),
    );
    assert_eq!(
        parse(&ack.sign(&sk(2)).unwrap()),
        Err(ErrorCode::InvalidField)
    );
    // A post with conv parses, and conv is signed (it changes the id).
    let p = post("nova", 2, &["owner"], c.id(), "hi");
    let mut q = p.envelope().clone();
    q.conv = None;
    assert_ne!(p.id(), q.sign(&sk(2)).unwrap().id());
    assert!(parse(&p).is_ok());
}

#[test]
fn a_conversation_runs_from_call_to_turn_limit_with_linked_entries() {
    let c0 = call(&["nova", "sage"], ConvMode::Live);
    let mut c = Conversation::start(&c0, 10, &LIMITS).unwrap();
    let id = c.id;
    assert_eq!((c.seq, c.state), (1, ConvState::Ringing));
    assert_eq!(c.turn_limit(&LIMITS), 3);
    // Nova may not post before it accepts.
    let early = post("nova", 2, &["owner"], id, "early");
    assert_eq!(step(&mut c, &early, 11), Err(ErrorCode::NotParticipant));
    step(&mut c, &action("nova", 2, id, ConvActionKind::Accept), 12).unwrap();
    assert_eq!(c.state, ConvState::Active);
    // Accepting twice is not allowed; a stranger is not a participant.
    assert_eq!(
        step(&mut c, &action("nova", 2, id, ConvActionKind::Accept), 13),
        Err(ErrorCode::ActionNotAllowed)
    );
    assert_eq!(
        step(
            &mut c,
            &action("mallory", 9, id, ConvActionKind::Accept),
            13
        ),
        Err(ErrorCode::NotParticipant)
    );
    // Sage is still ringing: posts may not be addressed to it.
    assert_eq!(
        step(&mut c, &post("owner", 1, &["sage"], id, "x"), 14),
        Err(ErrorCode::NotParticipant)
    );
    step(&mut c, &post("owner", 1, &["nova"], id, "one"), 15).unwrap();
    step(&mut c, &post("nova", 2, &["owner"], id, "two"), 16).unwrap();
    step(&mut c, &post("owner", 1, &["nova"], id, "three"), 17).unwrap();
    // The third post reached the turn limit: closed right after it.
    assert_eq!(c.state, ConvState::Closed(CloseReason::TurnLimit));
    assert_eq!((c.posts, c.seq), (3, 6));
    assert_eq!(
        step(&mut c, &post("nova", 2, &["owner"], id, "four"), 18),
        Err(ErrorCode::TurnLimitReached)
    );
    assert_eq!(
        step(&mut c, &action("sage", 3, id, ConvActionKind::Accept), 18),
        Err(ErrorCode::ConversationClosed)
    );
}

#[test]
fn entries_link_and_parse_back() {
    let c0 = call(&["nova"], ConvMode::Async);
    let mut c = Conversation::start(&c0, 10, &LIMITS).unwrap();
    let id = c.id;
    let first = Entry {
        conv: c.id,
        seq: 1,
        at: 10,
        prev: FIRST_PREV,
        body: EntryBody::Envelope(c0.clone()),
    };
    assert_eq!(first.hash(), c.head);
    let acc = action("nova", 2, id, ConvActionKind::Accept);
    let e2 = c.next_entry(EntryBody::Envelope(acc), 11);
    assert_eq!(e2.prev, first.hash());
    c.apply(&e2);
    let ev = c.next_entry(
        EntryBody::Event(ConvEvent::Closed {
            reason: CloseReason::Expired,
        }),
        12,
    );
    for e in [&first, &e2, &ev] {
        let v = formica_protocol::json::parse_default(&e.wire()).unwrap();
        let back = Entry::from_value(&v, &EnvelopeLimits::default()).unwrap();
        assert_eq!(&back, e);
    }
    // A changed byte breaks the hash.
    let mut v = formica_protocol::json::parse_default(&ev.wire()).unwrap();
    if let formica_protocol::Value::Object(o) = &mut v {
        o.insert("at", formica_protocol::Value::Int(13));
    }
    let err = Entry::from_value(&v, &EnvelopeLimits::default()).unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidField);
}

#[test]
fn declines_and_leaves_close_a_conversation_nobody_is_left_in() {
    let c0 = call(&["nova", "sage"], ConvMode::Live);
    let mut c = Conversation::start(&c0, 10, &LIMITS).unwrap();
    let id = c.id;
    // Sage rings out; it may still accept while the conversation is open.
    let missed = c.due_events(10 + 60_001, 60_000, &LIMITS);
    assert_eq!(missed.len(), 2);
    for ev in missed {
        let e = c.next_entry(EntryBody::Event(ev), 60_011);
        c.apply(&e);
        assert!(c.follow_ups(&LIMITS).is_empty());
    }
    assert_eq!(c.participant(&h("sage")).unwrap().state, PartState::Missed);
    step(
        &mut c,
        &action("sage", 3, id, ConvActionKind::Accept),
        60_012,
    )
    .unwrap();
    step(
        &mut c,
        &action("nova", 2, id, ConvActionKind::Decline),
        60_013,
    )
    .unwrap();
    assert_eq!(c.readable_upto(&h("nova")), Some(c.seq));
    step(
        &mut c,
        &action("sage", 3, id, ConvActionKind::Leave),
        60_014,
    )
    .unwrap();
    // Only the owner is left: closed, everyone_left.
    assert_eq!(c.state, ConvState::Closed(CloseReason::EveryoneLeft));
    assert!(c.readable_upto(&h("nova")).unwrap() < c.seq);
    // Async invitations never ring out.
    let a = Conversation::start(&call(&["nova"], ConvMode::Async), 0, &LIMITS).unwrap();
    assert!(a.rung_out(i64::MAX / 2, 1).is_empty());
}

#[test]
fn only_the_owner_invites_and_closes_within_the_participant_maximum() {
    let c0 = call(&["nova"], ConvMode::Live);
    let mut c = Conversation::start(&c0, 10, &LIMITS).unwrap();
    let id = c.id;
    step(&mut c, &action("nova", 2, id, ConvActionKind::Accept), 11).unwrap();
    let invite = |from: &str, n: u8, names: &[&str]| {
        env(
            from,
            n,
            names,
            Payload::ConvAction {
                action: ConvActionKind::Invite,
                reason: None,
                participants: Some(
                    names
                        .iter()
                        .map(|t| Invitee {
                            handle: h(t),
                            role: ConvRole::Observer,
                        })
                        .collect(),
                ),
            },
            Some(id),
        )
        .sign(&sk(n))
        .unwrap()
    };
    assert_eq!(
        step(&mut c, &invite("nova", 2, &["sage"]), 12),
        Err(ErrorCode::ActionNotAllowed)
    );
    assert_eq!(
        step(&mut c, &invite("owner", 1, &["sage", "ash", "elm"]), 12),
        Err(ErrorCode::InvalidField)
    );
    step(&mut c, &invite("owner", 1, &["sage"]), 12).unwrap();
    assert_eq!(c.participant(&h("sage")).unwrap().state, PartState::Ringing);
    step(&mut c, &action("sage", 3, id, ConvActionKind::Accept), 13).unwrap();
    // An observer reads but does not post.
    assert_eq!(
        step(&mut c, &post("sage", 3, &["owner"], id, "hi"), 14),
        Err(ErrorCode::NotParticipant)
    );
    assert_eq!(
        step(&mut c, &action("nova", 2, id, ConvActionKind::Close), 15),
        Err(ErrorCode::ActionNotAllowed)
    );
    step(&mut c, &action("owner", 1, id, ConvActionKind::Close), 15).unwrap();
    assert_eq!(c.state, ConvState::Closed(CloseReason::ClosedByOwner));
}

#[test]
fn the_owner_leaving_closes_and_expiry_is_judged_before_the_event() {
    let c0 = call(&["nova", "sage"], ConvMode::Async);
    let mut c = Conversation::start(&c0, 10, &LIMITS).unwrap();
    let id = c.id;
    step(&mut c, &action("nova", 2, id, ConvActionKind::Accept), 11).unwrap();
    // Past the expiry (ttl_max_ms after creation), before the relay appended the event.
    let late = 10 + LIMITS.ttl_max_ms + 1;
    assert_eq!(
        step(&mut c, &post("nova", 2, &["owner"], id, "late"), late),
        Err(ErrorCode::ConversationClosed)
    );
    assert_eq!(c.due_events(late, 60_000, &LIMITS).len(), 1);
    step(&mut c, &action("owner", 1, id, ConvActionKind::Leave), 12).unwrap();
    assert_eq!(c.state, ConvState::Closed(CloseReason::ClosedByOwner));
}
