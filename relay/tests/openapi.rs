//! Keeps `relay/openapi.json` (served at `GET /v1/openapi.json`) in step with the code: it must
//! be strict JSON, an OpenAPI 3.1 document, document exactly the routes of `http::router`, list
//! exactly the error codes of `ErrorCode`, and have no dangling `$ref`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use formica_protocol::json::{self, JsonLimits};
use formica_protocol::{ErrorCode, Object, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

const HTTP_METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn manifest_file(rel: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn document() -> Value {
    let text = manifest_file("openapi.json");
    json::parse(
        text.as_bytes(),
        JsonLimits {
            bytes_max: 4 << 20,
            depth_max: 64,
        },
    )
    .unwrap_or_else(|e| panic!("openapi.json is not strict JSON: {e}"))
}

fn member<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    let mut cur = v;
    for (i, k) in path.iter().enumerate() {
        cur = cur
            .as_object()
            .and_then(|o| o.get(k))
            .unwrap_or_else(|| panic!("openapi.json has no /{}", path[..=i].join("/")));
    }
    cur
}

fn object<'a>(v: &'a Value, what: &str) -> &'a Object {
    v.as_object()
        .unwrap_or_else(|| panic!("{what} is not an object"))
}

/// The `(METHOD, path)` pairs routed in `http/mod.rs`, read from its source text: every
/// `.route("PATH", get(..).post(..) ...)` call, with the method routers it chains.
fn routes_in_source(src: &str) -> BTreeSet<(String, String)> {
    // Whole-line comments cannot add routes.
    let src: String = src
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n");
    for other in [".route_service(", ".nest(", ".nest_service(", ".merge("] {
        assert!(
            !src.contains(other),
            "http/mod.rs uses {other}; teach tests/openapi.rs to read it"
        );
    }
    let b = src.as_bytes();
    let mut out = BTreeSet::new();
    let mut from = 0;
    while let Some(at) = src[from..].find(".route(") {
        let start = from + at + ".route(".len();
        let rest = src[start..].trim_start();
        let rest_at = src.len() - rest.len();
        assert!(
            rest.starts_with('"'),
            "a .route( call whose path is not a string literal near byte {start}"
        );
        let path_end = rest_at + 1 + rest[1..].find('"').expect("unterminated path literal");
        let path = src[rest_at + 1..path_end].to_owned();
        // The arguments after the path, up to the `)` that closes `.route(`.
        let mut depth = 1usize;
        let mut i = path_end + 1;
        let mut in_str = false;
        while depth > 0 {
            assert!(i < b.len(), "unbalanced .route( call for {path}");
            match (in_str, b[i]) {
                (true, b'\\') => i += 1,
                (true, b'"') => in_str = false,
                (false, b'"') => in_str = true,
                (false, b'(') => depth += 1,
                (false, b')') => depth -= 1,
                _ => {}
            }
            i += 1;
        }
        let args = &src[path_end + 1..i - 1];
        let mut methods = 0;
        for m in HTTP_METHODS.iter().chain(&["any", "on", "connect"]) {
            let pat = format!("{m}(");
            let ab = args.as_bytes();
            let mut j = 0;
            while let Some(k) = args[j..].find(&pat) {
                let pos = j + k;
                let ident_before =
                    pos > 0 && (ab[pos - 1].is_ascii_alphanumeric() || ab[pos - 1] == b'_');
                if !ident_before {
                    assert!(
                        HTTP_METHODS.contains(m),
                        "route {path} uses `{m}(`; document its methods explicitly"
                    );
                    assert!(
                        out.insert((m.to_uppercase(), path.clone())),
                        "{} {path} routed twice",
                        m.to_uppercase()
                    );
                    methods += 1;
                }
                j = pos + pat.len();
            }
        }
        assert!(methods > 0, "found no method router for {path} in: {args}");
        from = i;
    }
    out
}

fn routes_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in object(member(doc, &["paths"]), "paths").iter() {
        for (k, _) in object(item, path).iter() {
            if HTTP_METHODS.contains(&k) {
                out.insert((k.to_uppercase(), path.to_owned()));
            }
        }
    }
    out
}

#[test]
fn openapi_is_strict_json_and_version_3_1() {
    let doc = document();
    let v = member(&doc, &["openapi"])
        .as_str()
        .expect("`openapi` is a string");
    assert!(v.starts_with("3.1"), "openapi is {v:?}, expected 3.1.x");
}

#[test]
fn served_document_is_the_file() {
    assert_eq!(formica_relay::OPENAPI_JSON, manifest_file("openapi.json"));
}

#[test]
fn route_extraction_reads_chained_methods() {
    let src = r#"
        Router::new()
            .route("/a/{x}", get(a).post(b))
            .route(
                "/b",
                axum::routing::put(c).delete(crate::m::budget),
            )
            // .route("/commented", get(z))
            .route("/c", post(|| async { ")" }))
    "#;
    let got = routes_in_source(src);
    let want: BTreeSet<(String, String)> = [
        ("GET", "/a/{x}"),
        ("POST", "/a/{x}"),
        ("PUT", "/b"),
        ("DELETE", "/b"),
        ("POST", "/c"),
    ]
    .iter()
    .map(|(m, p)| (m.to_string(), p.to_string()))
    .collect();
    assert_eq!(got, want);
}

#[test]
fn every_route_is_documented_and_nothing_else() {
    let in_code = routes_in_source(&manifest_file("src/http/mod.rs"));
    assert!(
        in_code.len() >= 20,
        "suspiciously few routes found in http/mod.rs: {in_code:?}"
    );
    let in_doc = routes_in_document(&document());
    let undocumented: Vec<_> = in_code.difference(&in_doc).collect();
    let invented: Vec<_> = in_doc.difference(&in_code).collect();
    assert!(
        undocumented.is_empty() && invented.is_empty(),
        "openapi.json and http/mod.rs disagree.\n routed but not documented: {undocumented:?}\n documented but not routed: {invented:?}"
    );
}

#[test]
fn error_codes_match_the_registry() {
    let doc = document();
    let schema = member(&doc, &["components", "schemas", "ErrorCode"]);
    let listed: Vec<&str> = member(schema, &["enum"])
        .as_array()
        .expect("ErrorCode.enum is an array")
        .iter()
        .map(|v| v.as_str().expect("ErrorCode.enum holds strings"))
        .collect();
    let documented: BTreeSet<&str> = listed.iter().copied().collect();
    assert_eq!(
        documented.len(),
        listed.len(),
        "ErrorCode.enum lists a code twice"
    );
    let registry: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        documented, registry,
        "ErrorCode.enum differs from formica_protocol::ErrorCode::ALL"
    );

    let statuses: BTreeMap<&str, i64> = object(member(schema, &["x-http-status"]), "x-http-status")
        .iter()
        .map(|(k, v)| (k, v.as_i64().expect("statuses are integers")))
        .collect();
    let want: BTreeMap<&str, i64> = ErrorCode::ALL
        .iter()
        .map(|c| (c.as_str(), i64::from(c.http_status())))
        .collect();
    assert_eq!(
        statuses, want,
        "ErrorCode.x-http-status differs from ErrorCode::http_status"
    );
}

#[test]
fn auth_scheme_is_the_authorization_header() {
    let doc = document();
    let s = member(&doc, &["components", "securitySchemes", "FormicaAuth"]);
    assert_eq!(member(s, &["type"]).as_str(), Some("apiKey"));
    assert_eq!(member(s, &["in"]).as_str(), Some("header"));
    assert_eq!(member(s, &["name"]).as_str(), Some("Authorization"));
    // Every operation's security names that scheme, except relay requests (only under
    // /v1/federation/) and relay administration (only under /admin/).
    for (path, item) in object(member(&doc, &["paths"]), "paths").iter() {
        for (m, op) in object(item, path).iter() {
            if let Some(sec) = op.as_object().and_then(|o| o.get("security")) {
                for req in sec.as_array().expect("security is an array") {
                    for (name, _) in object(req, "security requirement").iter() {
                        let allowed = match name {
                            "FormicaAuth" => !path.starts_with("/admin/"),
                            "FormicaRelayAuth" => path.starts_with("/v1/federation/"),
                            "AdminToken" => path.starts_with("/admin/"),
                            _ => false,
                        };
                        assert!(allowed, "{m} {path} names security scheme {name}");
                    }
                }
            }
        }
    }
}

fn collect_refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter() {
                if k == "$ref" {
                    out.push(x.as_str().expect("$ref is a string"));
                } else {
                    collect_refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| collect_refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves() {
    let doc = document();
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(!refs.is_empty());
    for r in refs {
        let pointer = r
            .strip_prefix("#/")
            .unwrap_or_else(|| panic!("{r} is not a local reference"));
        let parts: Vec<&str> = pointer.split('/').collect();
        let mut cur = &doc;
        for p in &parts {
            cur = cur
                .as_object()
                .and_then(|o| o.get(p))
                .unwrap_or_else(|| panic!("$ref {r} does not resolve"));
        }
    }
}
