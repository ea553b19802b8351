//! The actions of a conversation (CONVO-6) and the participant and conversation states they
//! lead to (CONVO-2): accept and decline, close by the owner, leave (with the `closed` event when
//! too few participants are left, CONVO-4), and invite.

use super::conv_kit::*;
use super::*;
use crate::case::{case, Env};

pub fn cases() -> Vec<Case> {
    use ErrorCode as E;
    vec![
        case("conv.answer", &["CONVO-2", "CONVO-6"], "accept and decline: addressed to the owner (invalid_field, to), by a ringing participant (accept makes it joined and the conversation active; a second answer is action_not_allowed), not by a non-participant or for an unknown conversation (not_participant); decline keeps its reason; without conv missing_field, an accept with a reason invalid_field", answer).codes(&[E::InvalidField, E::ActionNotAllowed, E::NotParticipant, E::MissingField]),
        case("conv.close", &["CONVO-2", "CONVO-4", "CONVO-6"], "only the owner, joined, closes (action_not_allowed for a member, invalid_field when not addressed to the owner); the close is the last entry (no event after it), the conversation is closed with reason closed_by_owner, later actions and posts are conversation_closed with that reason, and a ringing invitation stays ringing", close).codes(&[E::ActionNotAllowed, E::InvalidField, E::ConversationClosed]),
        case("conv.leave", &["CONVO-2", "CONVO-4", "CONVO-6"], "a joined member leaves (a ringing one may not: action_not_allowed) and can neither answer nor post again; when fewer than two participants are joined, ringing or missed, the relay appends `closed` with reason everyone_left right after; the owner's leave closes with reason closed_by_owner", leave).codes(&[E::ActionNotAllowed, E::NotParticipant, E::ConversationClosed]),
        case("conv.invite", &["CONVO-6", "CONVO-5", "CONVO-2", "CONVO-8"], "the joined owner invites: new participants ring and find the invite in their inbox; a current or declined participant is invalid_field, a new invitee without a message grant not_contact, to other than the new participants invalid_field (to), an invite by a member action_not_allowed; an invited observer that joined cannot post", invite_case).codes(&[E::InvalidField, E::NotContact, E::ActionNotAllowed, E::NotParticipant]),
    ]
}

fn answer(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cva")?;
    let s = t.register("cvas")?;
    let c = call(t, &x.a, &[&x.b.handle, &x.c.handle], "async");
    send_at(t, &c, &c.id, 1)?;
    let id = c.id.as_str();
    at_step(
        "an accept addressed to another participant",
        refuse_conv(
            t,
            &t.sign(
                &action_obj(t, &x.b, id, &[&x.c.handle], "accept", None, None),
                &x.b.key,
            ),
            ErrorCode::InvalidField,
            Some("to"),
        )
        .map(|_| ()),
    )?;
    at_step(
        "an accept with a reason",
        refuse_conv(
            t,
            &t.sign(
                &action_obj(t, &x.b, id, &[&x.a.handle], "accept", Some("glad to"), None),
                &x.b.key,
            ),
            ErrorCode::InvalidField,
            Some("payload.reason"),
        )
        .map(|_| ()),
    )?;
    let mut no_conv = action_obj(t, &x.b, id, &[&x.a.handle], "accept", None, None);
    no_conv.remove("conv");
    at_step(
        "a conv_action without conv",
        refuse_conv(
            t,
            &t.sign(&no_conv, &x.b.key),
            ErrorCode::MissingField,
            Some("conv"),
        )
        .map(|_| ()),
    )?;
    at_step(
        "an accept by a non-participant",
        refuse_conv(
            t,
            &act(t, &s, id, &x.a.handle, "accept"),
            ErrorCode::NotParticipant,
            None,
        )
        .map(|_| ()),
    )?;
    at_step(
        "an accept of an unknown conversation",
        refuse_conv(
            t,
            &act(t, &x.b, &unknown_conv(t), &x.a.handle, "accept"),
            ErrorCode::NotParticipant,
            None,
        )
        .map(|_| ()),
    )?;
    send_at(t, &act(t, &x.b, id, &x.a.handle, "accept"), id, 2)?;
    let sum = expect_part(t, &x.a, id, &x.b.handle, "joined", None)?;
    expect_state(&sum, "active", None)?;
    at_step(
        "a second accept",
        refuse_conv(
            t,
            &act(t, &x.b, id, &x.a.handle, "accept"),
            ErrorCode::ActionNotAllowed,
            None,
        )
        .map(|_| ()),
    )?;
    at_step(
        "a decline after the accept",
        refuse_conv(
            t,
            &act(t, &x.b, id, &x.a.handle, "decline"),
            ErrorCode::ActionNotAllowed,
            None,
        )
        .map(|_| ()),
    )?;
    let dec = t.sign(
        &action_obj(
            t,
            &x.c,
            id,
            &[&x.a.handle],
            "decline",
            Some("on another review"),
            None,
        ),
        &x.c.key,
    );
    send_at(t, &dec, id, 3)?;
    expect_part(
        t,
        &x.a,
        id,
        &x.c.handle,
        "declined",
        Some("on another review"),
    )?;
    at_step(
        "an accept after the decline",
        refuse_conv(
            t,
            &act(t, &x.c, id, &x.a.handle, "accept"),
            ErrorCode::ActionNotAllowed,
            None,
        )
        .map(|_| ()),
    )?;
    at_step(
        "a leave by a participant that declined",
        refuse_conv(
            t,
            &act(t, &x.c, id, &x.a.handle, "leave"),
            ErrorCode::ActionNotAllowed,
            None,
        )
        .map(|_| ()),
    )?;
    let es = entries(t, &x.a, id)?;
    ensure!(es.len() == 3, "{} entries after call, accept and decline, expected 3: refused actions are not entries (CONVO-4)", es.len());
    expect_env_at(&es, 3, &dec)
}

fn close(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvx")?;
    let (id, _) = started(t, &x, "async")?;
    at_step(
        "a close by a member",
        refuse_conv(
            t,
            &act(t, &x.b, &id, &x.a.handle, "close"),
            ErrorCode::ActionNotAllowed,
            None,
        )
        .map(|_| ()),
    )?;
    at_step(
        "a close addressed to a member",
        refuse_conv(
            t,
            &act(t, &x.a, &id, &x.b.handle, "close"),
            ErrorCode::InvalidField,
            Some("to"),
        )
        .map(|_| ()),
    )?;
    let cl = act(t, &x.a, &id, &x.a.handle, "close");
    send_at(t, &cl, &id, 3)?;
    let es = entries(t, &x.a, &id)?;
    ensure!(es.len() == 3, "after the owner's close the conversation has {} entries, expected 3: the close is the last entry, no `closed` event follows it (CONVO-4)", es.len());
    expect_env_at(&es, 3, &cl)?;
    let sum = expect_part(t, &x.a, &id, &x.c.handle, "ringing", None)?;
    expect_state(&sum, "closed", Some("closed_by_owner"))?;
    refuse_closed(
        t,
        &post(t, &x.b, &id, &[&x.a.handle]),
        ErrorCode::ConversationClosed,
        "closed_by_owner",
    )?;
    refuse_closed(
        t,
        &act(t, &x.c, &id, &x.a.handle, "accept"),
        ErrorCode::ConversationClosed,
        "closed_by_owner",
    )?;
    refuse_closed(
        t,
        &act(t, &x.a, &id, &x.a.handle, "close"),
        ErrorCode::ConversationClosed,
        "closed_by_owner",
    )?;
    // A closed conversation changes no more.
    let after = entries(t, &x.a, &id)?;
    ensure!(
        after.len() == 3,
        "refused envelopes added entries to a closed conversation ({} entries)",
        after.len()
    );
    Ok(())
}

fn leave(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvl")?;
    let (id, _) = started(t, &x, "async")?;
    at_step(
        "a leave by a ringing participant",
        refuse_conv(
            t,
            &act(t, &x.c, &id, &x.a.handle, "leave"),
            ErrorCode::ActionNotAllowed,
            None,
        )
        .map(|_| ()),
    )?;
    send_at(t, &act(t, &x.b, &id, &x.a.handle, "leave"), &id, 3)?;
    let sum = expect_part(t, &x.a, &id, &x.b.handle, "left", None)?;
    expect_state(&sum, "active", None)?;
    at_step(
        "an accept by a participant that left",
        refuse_conv(
            t,
            &act(t, &x.b, &id, &x.a.handle, "accept"),
            ErrorCode::ActionNotAllowed,
            None,
        )
        .map(|_| ()),
    )?;
    at_step(
        "a post by a participant that left",
        refuse_conv(
            t,
            &post(t, &x.b, &id, &[&x.a.handle]),
            ErrorCode::NotParticipant,
            None,
        )
        .map(|_| ()),
    )?;
    // The owner and the ringing c count; c's decline leaves only the owner.
    let dec = act(t, &x.c, &id, &x.a.handle, "decline");
    send_at(t, &dec, &id, 4)?;
    let es = entries(t, &x.a, &id)?;
    ensure!(es.len() == 5, "after the last invitee declined: {} entries, expected 5 (the decline, then `closed` everyone_left, CONVO-2, CONVO-4)", es.len());
    expect_env_at(&es, 4, &dec)?;
    expect_event_at(&es, 5, "closed", None, Some("everyone_left"))?;
    expect_state(&summary(t, &x.a, &id)?, "closed", Some("everyone_left"))?;
    refuse_closed(
        t,
        &act(t, &x.a, &id, &x.a.handle, "close"),
        ErrorCode::ConversationClosed,
        "everyone_left",
    )?;
    // The owner's leave closes the conversation (closed_by_owner), with no event after it.
    let y = trio(t, "cvlo")?;
    let (id2, _) = started(t, &y, "async")?;
    let lv = act(t, &y.a, &id2, &y.a.handle, "leave");
    send_at(t, &lv, &id2, 3)?;
    let es = entries(t, &y.b, &id2)?;
    ensure!(es.len() == 3, "after the owner left: {} entries, expected 3 (CONVO-4: the owner's leave is the closing entry)", es.len());
    expect_env_at(&es, 3, &lv)?;
    expect_state(&summary(t, &y.b, &id2)?, "closed", Some("closed_by_owner"))?;
    refuse_closed(
        t,
        &post(t, &y.b, &id2, &[&y.a.handle]),
        ErrorCode::ConversationClosed,
        "closed_by_owner",
    )
}

fn invite_case(e: &Env<'_>) -> R {
    let t = e.t;
    lim(t)?;
    let x = trio(t, "cvi")?;
    let d = t.register("cvid")?;
    let stranger = t.register("cvie")?;
    t.grant(&d, &x.a.handle, "message")?;
    let (id, _) = started(t, &x, "async")?;
    at_step(
        "an invite by a member",
        refuse_conv(
            t,
            &invite(t, &x.b, &id, &[(&d.handle, "member")]),
            ErrorCode::ActionNotAllowed,
            None,
        )
        .map(|_| ()),
    )?;
    at_step(
        "an invite of a current participant",
        refuse_conv(
            t,
            &invite(t, &x.a, &id, &[(&x.b.handle, "member")]),
            ErrorCode::InvalidField,
            Some("payload.participants"),
        )
        .map(|_| ()),
    )?;
    at_step(
        "an invite of an agent that granted no level",
        refuse_conv(
            t,
            &invite(t, &x.a, &id, &[(&stranger.handle, "member")]),
            ErrorCode::NotContact,
            None,
        )
        .map(|_| ()),
    )?;
    let wrong_to = t.sign(
        &action_obj(
            t,
            &x.a,
            &id,
            &[&x.a.handle],
            "invite",
            None,
            Some(&[(&d.handle, "observer")]),
        ),
        &x.a.key,
    );
    at_step(
        "an invite addressed to the owner",
        refuse_conv(t, &wrong_to, ErrorCode::InvalidField, Some("to")).map(|_| ()),
    )?;
    let inv = invite(t, &x.a, &id, &[(&d.handle, "observer")]);
    send_at(t, &inv, &id, 3)?;
    expect_delivered_as_sent(&t.inbox(&d)?, &inv, &d.handle)?;
    let sum = expect_part(t, &x.a, &id, &d.handle, "ringing", None)?;
    let role = at(&sum, &["participants"])
        .and_then(Value::as_array)
        .and_then(|ps| {
            ps.iter()
                .find(|p| at(p, &["handle"]).and_then(Value::as_str) == Some(d.handle.as_str()))
        })
        .and_then(|p| at(p, &["role"]))
        .and_then(Value::as_str);
    ensure!(
        role == Some("observer"),
        "the invited observer has role {role:?} (CONVO-1)"
    );
    // The invitee reads the conversation it is asked to join (CONVO-10).
    let es = entries(t, &d, &id)?;
    expect_env_at(&es, 3, &inv)?;
    send_at(t, &act(t, &d, &id, &x.a.handle, "accept"), &id, 4)?;
    at_step(
        "a post by a joined observer",
        refuse_conv(
            t,
            &post(t, &d, &id, &[&x.a.handle]),
            ErrorCode::NotParticipant,
            None,
        )
        .map(|_| ()),
    )?;
    // Declined: it cannot be invited again (the roster only grows, CONVO-2).
    send_at(t, &act(t, &x.c, &id, &x.a.handle, "decline"), &id, 5)?;
    at_step(
        "an invite of a participant that declined",
        refuse_conv(
            t,
            &invite(t, &x.a, &id, &[(&x.c.handle, "member")]),
            ErrorCode::InvalidField,
            Some("payload.participants"),
        )
        .map(|_| ()),
    )?;
    Ok(())
}
