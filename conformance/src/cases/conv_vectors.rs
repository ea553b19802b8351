//! Cases driven by `conversations.json` (`vec.conversations.*`, VEC-2): each envelope of
//! `invalid` is sent as is and must be refused at the schema step of the ingest order (ENV-16,
//! INGEST-1 step 4), before the relay looks at the sender, which is not one of its agents, with
//! the vector's code and `field`. The valid envelopes, the entries and the state are the
//! relay-independent part of the file; the `conv.*` cases make the same kinds of envelopes and
//! check the entries a relay serves against CONVO-4 as the file describes.

use super::*;
use crate::case::case;
use crate::vectors as V;

pub fn cases() -> Vec<Case> {
    V::list(V::conversations(), "invalid")
        .iter()
        .enumerate()
        .map(|(i, c)| invalid(i, c))
        .collect()
}

/// The requirements a refused conversation envelope checks, from the member it names.
fn reqs(field: Option<&str>, code: ErrorCode) -> &'static [&'static str] {
    match (field, code) {
        (_, ErrorCode::UnsupportedTypeVersion) => &["ENV-3", "TYPE-3", "TYPE-15", "VEC-2"],
        (Some("ack_by"), _) => &["ENV-7", "ENV-16", "VEC-2"],
        (Some("conv"), _) => &["ENV-16", "CONVO-6", "CONVO-8", "VEC-2"],
        (Some(f), _) if f.starts_with("payload.participants") || f == "to" => {
            &["ENV-16", "CONVO-5", "CONVO-6", "VEC-2"]
        }
        _ => &["ENV-16", "CONVO-5", "CONVO-6", "TYPE-13", "VEC-2"],
    }
}

fn invalid(i: usize, c: &Value) -> Case {
    let cm = V::field(c, "comment").unwrap_or("").to_owned();
    let input = V::field(c, "input").unwrap_or("").to_owned();
    let code = V::field(c, "error")
        .and_then(ErrorCode::from_wire)
        .unwrap_or(ErrorCode::Internal);
    let field = V::field(c, "field").map(str::to_owned);
    case(
        format!("vec.conversations.invalid.{i}"),
        reqs(field.as_deref(), code),
        format!(
            "conversations.json invalid: {cm}: refused with {}",
            code.as_str()
        ),
        move |e| {
            let t = e.t;
            match &field {
                Some(f) => refuse_field(t, input.as_bytes(), code, f)?,
                None => refuse(t, input.as_bytes(), code)?,
            };
            Ok(())
        },
    )
    .codes(&[code])
}
