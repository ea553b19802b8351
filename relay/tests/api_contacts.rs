//! App-level tests without sockets (`Router::oneshot`): contacts, contact requests and the
//! contact levels envelopes need. Named after the behaviour they check.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use formica_protocol::canon;
use formica_protocol::envelope::*;

#[tokio::test]
async fn a_stranger_cannot_message_a_private_agent_but_can_ask_for_contact() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let b = r.agent("bob").await;
    let m = a.text(&r, &b.handle, "hi");
    a.send(&r, &m).await.expect(403, "not_contact");
    let req = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::ContactRequest {
                level: ContactLevel::Message,
                note: Some("hello".into()),
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &req).await.expect(201, "");
    // A second pending request to the same agent is refused.
    r.advance(1);
    let req2 = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::ContactRequest {
                level: ContactLevel::Task,
                note: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &req2).await.expect(429, "rate_limited");
    let list = b.authed(&r, "GET", "/v1/contact-requests", b"").await;
    let reqs = list.get("requests").as_array().unwrap();
    assert_eq!(reqs.len(), 1);
    let id = reqs[0]
        .as_object()
        .unwrap()
        .get("id")
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    // Accepting at a higher level than requested is refused; at the requested level it works.
    let body = canon::canonicalize(&obj(vec![("level", "task".into())]));
    b.authed(
        &r,
        "POST",
        &format!("/v1/contact-requests/{id}/accept"),
        &body,
    )
    .await
    .expect(400, "invalid_field");
    b.authed(
        &r,
        "POST",
        &format!("/v1/contact-requests/{id}/accept"),
        b"",
    )
    .await
    .expect(200, "");
    let m2 = a.text(&r, &b.handle, "hi again");
    a.send(&r, &m2).await.expect(201, "");
    // A message-level contact may not send a task_request.
    let t = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::TaskRequest {
                task: "summarize".into(),
                input: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &t).await.expect(403, "level_insufficient");
    let contacts = b.authed(&r, "GET", "/v1/contacts", b"").await;
    assert_eq!(contacts.get("contacts").as_array().unwrap().len(), 1);
    b.authed(&r, "DELETE", &format!("/v1/contacts/{}", a.handle), b"")
        .await
        .expect(200, "");
    b.authed(&r, "DELETE", &format!("/v1/contacts/{}", a.handle), b"")
        .await
        .expect(404, "not_found");
    let m3 = a.text(&r, &b.handle, "after removal");
    a.send(&r, &m3).await.expect(403, "not_contact");
}

#[tokio::test]
async fn rejecting_a_contact_request_removes_it_quietly() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let b = r.agent("bob").await;
    let req = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::ContactRequest {
                level: ContactLevel::Message,
                note: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &req).await.expect(201, "");
    b.authed(
        &r,
        "POST",
        &format!("/v1/contact-requests/{}/reject", req.id()),
        b"",
    )
    .await
    .expect(200, "");
    b.authed(
        &r,
        "POST",
        &format!("/v1/contact-requests/{}/reject", req.id()),
        b"",
    )
    .await
    .expect(404, "not_found");
    assert!(b
        .authed(&r, "GET", "/v1/contact-requests", b"")
        .await
        .get("requests")
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn a_task_result_answering_a_task_needs_no_contact_grant() {
    let r = TestRelay::new();
    let (a, b) = r.pair().await; // bob accepts tasks from alice; alice granted bob nothing
    let t = a
        .envelope(
            &r,
            &[&b.handle],
            Payload::TaskRequest {
                task: "add".into(),
                input: None,
            },
        )
        .sign(&a.key)
        .unwrap();
    a.send(&r, &t).await.expect(201, "");
    let mut res = b.envelope(
        &r,
        &[&a.handle],
        Payload::TaskResult {
            status: TaskStatus::Ok,
            output: None,
            error: None,
        },
    );
    res.corr = Some(t.id().to_hex());
    b.send(&r, &res.sign(&b.key).unwrap()).await.expect(201, "");
    // Without the reference it is an unsolicited message.
    let mut res2 = b.envelope(
        &r,
        &[&a.handle],
        Payload::TaskResult {
            status: TaskStatus::Ok,
            output: None,
            error: None,
        },
    );
    res2.corr = Some("unrelated".into());
    b.send(&r, &res2.sign(&b.key).unwrap())
        .await
        .expect(403, "not_contact");
}

/// Lets `owner` receive task requests from `who`.
async fn grant_task(r: &TestRelay, owner: &Agent, who: &Agent) {
    let body = canon::canonicalize(&obj(vec![("level", "task".into())]));
    owner
        .authed(r, "PUT", &format!("/v1/contacts/{}", who.handle), &body)
        .await
        .expect(200, "");
}

#[tokio::test]
async fn a_request_answering_a_request_may_not_ask_for_more_time_than_its_parent() {
    let r = TestRelay::new();
    let a = r.agent("alice").await;
    let b = r.agent("bob").await;
    let c = r.agent("carol").await;
    grant_task(&r, &b, &a).await;
    grant_task(&r, &c, &b).await;
    grant_task(&r, &c, &a).await;
    let request =
        |from: &Agent, to: &formica_protocol::Handle, corr: Option<String>, ack_by: Option<i64>| {
            let mut e = from.envelope(
                &r,
                &[to],
                Payload::TaskRequest {
                    task: "review".into(),
                    input: None,
                },
            );
            e.corr = corr;
            e.ack_by = ack_by;
            e.sign(&from.key).unwrap()
        };
    let limit = r.now() + 60_000;
    let parent = request(&a, &b.handle, None, Some(limit));
    a.send(&r, &parent).await.expect(201, "");
    let pid = Some(parent.id().to_hex());
    let late = request(&b, &c.handle, pid.clone(), Some(limit + 1));
    let resp = b.send(&r, &late).await;
    resp.expect(400, "deadline_after_parent");
    assert_eq!(resp.field_of_error(), "ack_by");
    assert_eq!(
        field(&resp.body, &["error", "ack_by_max"]).as_i64(),
        Some(limit)
    );
    // Nothing was stored: c's inbox is empty.
    let page = c.authed(&r, "GET", "/v1/inbox", b"").await;
    assert_eq!(page.get("items").as_array().unwrap().len(), 0);
    b.send(&r, &request(&b, &c.handle, pid.clone(), Some(limit)))
        .await
        .expect(201, "");
    b.send(&r, &request(&b, &c.handle, pid.clone(), None))
        .await
        .expect(201, "");
    // a sent the parent, it did not receive it: its own corr limits nothing.
    a.send(
        &r,
        &request(&a, &c.handle, pid.clone(), Some(limit + 5_000)),
    )
    .await
    .expect(201, "");
    // A message is not a request: no limit either.
    let mut m = b.envelope(
        &r,
        &[&a.handle],
        Payload::Message {
            text: "later".into(),
            data: None,
        },
    );
    m.corr = pid;
    m.ack_by = Some(limit + 5_000);
    let body = canon::canonicalize(&obj(vec![("level", "message".into())]));
    a.authed(&r, "PUT", &format!("/v1/contacts/{}", b.handle), &body)
        .await
        .expect(200, "");
    b.send(&r, &m.sign(&b.key).unwrap()).await.expect(201, "");
}
