//! Fuzz target for the relay's HTTP body handling: arbitrary bytes are posted to every endpoint
//! that reads a body (envelope, batch, registration, key log entry, challenge) on an in-process
//! relay over an in-memory store, through the same router that serves real requests. Besides
//! "never panics", every answer must be a 2xx or a JSON error body whose code is in the registry
//! and whose status is the registry's status for it.
#![no_main]

use axum::body::Body;
use axum::http::Request;
use formica_protocol::json::{self, JsonLimits};
use formica_protocol::{ErrorCode, SecretKey, Value};
use formica_relay::config::{Overrides, RelayConfig};
use formica_relay::store::{MemStore, Store};
use formica_relay::Relay;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tower::ServiceExt;

struct Fixture {
    rt: tokio::runtime::Runtime,
    router: axum::Router,
    _relay: Relay,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let cfg = RelayConfig::load(
            None,
            Overrides { public_host: Some("relay-a.example".into()), pow_difficulty: Some(1), ..Default::default() },
        )
        .expect("config");
        let host = formica_protocol::RelayHost::parse("relay-a.example").expect("host");
        let relay = rt.block_on(async {
            Relay::with_store(
                &cfg,
                &host,
                Arc::new(MemStore::default()) as Arc<dyn Store>,
                SecretKey::from_seed(&[9; 32]),
                formica_relay::writer::system_clock(),
            )
            .expect("relay")
        });
        let router = formica_relay::api::router(relay.app.clone());
        Fixture { rt, router, _relay: relay }
    })
}

const PATHS: [&str; 5] = [
    "/v1/envelopes",
    "/v1/envelopes/batch",
    "/v1/register",
    "/v1/keys/@alice",
    "/v1/challenges",
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let path = PATHS[usize::from(selector) % PATHS.len()];
    let f = fixture();
    let (status, bytes) = f.rt.block_on(async {
        let req = Request::builder().method("POST").uri(path).body(Body::from(body.to_vec())).expect("request");
        let resp = f.router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status().as_u16();
        let bytes = axum::body::to_bytes(resp.into_body(), 16 << 20).await.expect("body");
        (status, bytes)
    });
    if (200..300).contains(&status) {
        return;
    }
    let v = json::parse(&bytes, JsonLimits { bytes_max: 16 << 20, depth_max: 64 }).expect("an error answer is strict JSON");
    let code = v
        .as_object()
        .and_then(|o| o.get("error"))
        .and_then(Value::as_object)
        .and_then(|e| e.get("code"))
        .and_then(Value::as_str)
        .and_then(ErrorCode::from_wire)
        .expect("an error answer carries a registered code");
    assert_eq!(code.http_status(), status, "status of {code} on {path}");
});
