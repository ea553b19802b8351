//! The offline tools: key generation and inspection, canonical bytes, ids, signing and
//! verification of envelopes. They need no relay, which makes them the implementer's check on
//! another implementation's bytes.

use crate::identity;
use crate::output::{Exit, Fail, Out};
use formica_protocol::canon;
use formica_protocol::envelope::{EnvelopeLimits, SignedEnvelope};
use formica_protocol::json::{self, JsonLimits, Value};
use formica_protocol::{hex, Domain, ErrorCode, Object, PublicKey, SecretKey};
use rand::RngCore;
use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::Path;

/// Largest input document the offline tools read (1 MiB); envelopes are far smaller.
const INPUT_BYTES_MAX: usize = 1 << 20;

pub(crate) fn read_input(file: Option<&Path>) -> Result<Vec<u8>, Fail> {
    let mut buf = Vec::new();
    let res = match file {
        None => std::io::stdin()
            .lock()
            .take(INPUT_BYTES_MAX as u64 + 1)
            .read_to_end(&mut buf),
        Some(p) if p.as_os_str() == "-" => std::io::stdin()
            .lock()
            .take(INPUT_BYTES_MAX as u64 + 1)
            .read_to_end(&mut buf),
        Some(p) => std::fs::File::open(p)
            .and_then(|f| f.take(INPUT_BYTES_MAX as u64 + 1).read_to_end(&mut buf)),
    };
    res.map_err(|e| Fail::new(Exit::Input, format!("reading input: {e}")))?;
    if buf.len() > INPUT_BYTES_MAX {
        return Err(Fail::code(
            ErrorCode::TooLarge,
            format!("input is larger than {INPUT_BYTES_MAX} bytes"),
        ));
    }
    Ok(buf)
}

fn limits() -> JsonLimits {
    JsonLimits {
        bytes_max: INPUT_BYTES_MAX,
        ..JsonLimits::default()
    }
}

fn envelope_limits() -> EnvelopeLimits {
    EnvelopeLimits {
        json: limits(),
        ..EnvelopeLimits::default()
    }
}

pub(crate) fn parse_doc(bytes: &[u8]) -> Result<Value, Fail> {
    json::parse(bytes, limits()).map_err(|e| Fail::code(e.code(), e.to_string()))
}

pub fn keygen(out: &Out, home: &Path, name: &str, recovery: bool, force: bool) -> Result<(), Fail> {
    let mut rng = rand::rngs::OsRng;
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    let key = SecretKey::from_seed(&seed);
    let rec = recovery.then(|| {
        let mut s = [0u8; 32];
        rng.fill_bytes(&mut s);
        SecretKey::from_seed(&s)
    });
    identity::create(home, name, &key, rec.as_ref(), force)?;
    let mut o = Object::new();
    o.insert("ok", Value::Bool(true));
    o.insert("name", name.into());
    o.insert("public_key", key.public().to_hex().into());
    o.insert("key_id", key.public().key_id().to_hex().into());
    o.insert(
        "file",
        identity::key_path(home, name).display().to_string().into(),
    );
    if let Some(r) = &rec {
        o.insert("recovery_public_key", r.public().to_hex().into());
        o.insert(
            "recovery_file",
            identity::recovery_path(home, name)
                .display()
                .to_string()
                .into(),
        );
    }
    let mut text = format!(
        "created identity {name}\n  public key {}\n  key id     {}\n  file       {}",
        key.public().to_hex(),
        key.public().key_id(),
        identity::key_path(home, name).display()
    );
    if let Some(r) = &rec {
        text.push_str(&format!(
            "\n  recovery   {} (in {}; move it somewhere safe and offline)",
            r.public().to_hex(),
            identity::recovery_path(home, name).display()
        ));
    }
    out.emit(&text, Value::Object(o));
    Ok(())
}

pub fn whoami(out: &Out, home: &Path, name: &str) -> Result<(), Fail> {
    let id = identity::load(home, name)?;
    let mut o = Object::new();
    o.insert("ok", Value::Bool(true));
    o.insert("name", id.name.clone().into());
    o.insert("public_key", id.key.public().to_hex().into());
    o.insert("key_id", id.key.public().key_id().to_hex().into());
    o.insert(
        "handle",
        id.handle.clone().map(Value::from).unwrap_or(Value::Null),
    );
    o.insert(
        "relay",
        id.relay.clone().map(Value::from).unwrap_or(Value::Null),
    );
    let text = format!(
        "identity {}\n  handle     {}\n  relay      {}\n  public key {}\n  key id     {}",
        id.name,
        id.handle.as_deref().unwrap_or("(not registered)"),
        id.relay.as_deref().unwrap_or("-"),
        id.key.public().to_hex(),
        id.key.public().key_id()
    );
    out.emit(&text, Value::Object(o));
    Ok(())
}

fn pick_domain(name: &str, v: &Value) -> Result<Domain, Fail> {
    let o = v.as_object();
    let domain = match name {
        "envelope" => Domain::Envelope,
        "receipt" => Domain::Receipt,
        "keylog" => Domain::KeyLog,
        "descriptor" => Domain::Descriptor,
        "auto" => match o {
            Some(o) if o.get("op").is_some() => Domain::KeyLog,
            Some(o) if o.get("type").and_then(Value::as_str) == Some("receipt") => Domain::Receipt,
            Some(o) if o.get("payload").is_some() => Domain::Envelope,
            _ => {
                return Err(Fail::new(Exit::Input, "cannot tell what this document is")
                    .hint("pass --domain envelope|receipt|keylog|descriptor, or --jcs"))
            }
        },
        other => return Err(Fail::new(Exit::Input, format!("unknown domain {other:?}"))),
    };
    Ok(domain)
}

pub fn canon(
    out: &Out,
    file: Option<&Path>,
    domain: &str,
    jcs: bool,
    lines: bool,
    hex_out: bool,
) -> Result<(), Fail> {
    let mut stdout = std::io::stdout().lock();
    let io = |e: std::io::Error| Fail::new(Exit::Failure, format!("writing output: {e}"));
    if lines {
        let reader: Box<dyn BufRead> = match file {
            Some(p) if p.as_os_str() != "-" => Box::new(std::io::BufReader::new(
                std::fs::File::open(p)
                    .map_err(|e| Fail::new(Exit::Input, format!("{}: {e}", p.display())))?,
            )),
            _ => Box::new(std::io::stdin().lock()),
        };
        for line in reader.split(b'\n') {
            let line = line.map_err(|e| Fail::new(Exit::Input, format!("reading input: {e}")))?;
            match json::parse(&line, limits()) {
                Ok(v) => stdout.write_all(&canon::canonicalize(&v)).map_err(io)?,
                Err(e) => write!(stdout, "!{}", e.code()).map_err(io)?,
            }
            stdout.write_all(b"\n").map_err(io)?;
        }
        return Ok(());
    }
    let v = parse_doc(&read_input(file)?)?;
    let bytes = if jcs {
        canon::canonicalize(&v)
    } else {
        let d = pick_domain(domain, &v)?;
        let Value::Object(o) = &v else {
            return Err(Fail::new(Exit::Input, "a signed document is a JSON object"));
        };
        let mut input = d.tag().to_vec();
        canon::write_object(o, Some(&["id", "sig"]), &mut input);
        input
    };
    if out.json {
        let mut o = Object::new();
        o.insert("ok", Value::Bool(true));
        o.insert("hex", hex::encode(&bytes).into());
        out.emit("", Value::Object(o));
    } else if hex_out || std::io::stdout().is_terminal() {
        writeln!(stdout, "{}", hex::encode(&bytes)).map_err(io)?;
    } else {
        stdout.write_all(&bytes).map_err(io)?;
    }
    Ok(())
}

pub fn id(out: &Out, file: Option<&Path>) -> Result<(), Fail> {
    let se = SignedEnvelope::parse(&read_input(file)?, &envelope_limits())
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    let mut o = Object::new();
    o.insert("ok", Value::Bool(true));
    o.insert("id", se.id().to_hex().into());
    out.emit(&se.id().to_hex(), Value::Object(o));
    Ok(())
}

pub fn sign(
    out: &Out,
    home: &Path,
    file: Option<&Path>,
    identity_name: &str,
    now: bool,
) -> Result<(), Fail> {
    let id = identity::load(home, identity_name)?;
    let mut v = parse_doc(&read_input(file)?)?;
    let Value::Object(o) = &mut v else {
        return Err(Fail::code(
            ErrorCode::InvalidField,
            "an envelope is a JSON object",
        ));
    };
    o.remove("id");
    o.remove("sig");
    o.insert("key", id.key.public().key_id().to_hex().into());
    if now {
        o.insert("ts", Value::Int(now_ms()));
    }
    let mut input = Domain::Envelope.tag().to_vec();
    canon::write_object(o, None, &mut input);
    let sig = id.key.sign_input(&input);
    o.insert("sig", sig.to_hex().into());
    // Parse the result as a relay would, so that an invalid envelope is reported here.
    let se = SignedEnvelope::from_value(v, &envelope_limits())
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    let se = se
        .verify(&id.key.public())
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    let wire = String::from_utf8_lossy(&se.wire_bytes()).into_owned();
    if out.json {
        let mut o = Object::new();
        o.insert("ok", Value::Bool(true));
        o.insert("id", se.id().to_hex().into());
        o.insert("envelope", se.signed().value().clone());
        out.emit("", Value::Object(o));
    } else {
        out.emit(&wire, Value::Null);
    }
    Ok(())
}

pub fn verify(
    out: &Out,
    home: &Path,
    file: Option<&Path>,
    key: Option<&str>,
    identity_name: Option<&str>,
) -> Result<(), Fail> {
    let pk = match (key, identity_name) {
        (Some(k), _) => {
            PublicKey::parse_hex(k).map_err(|e| Fail::code(e.code(), format!("--key: {e}")))?
        }
        (None, Some(n)) => identity::load(home, n)?.key.public(),
        (None, None) => {
            return Err(
                Fail::new(Exit::Input, "no key given").hint("pass --key HEX or --identity NAME")
            )
        }
    };
    let se = SignedEnvelope::parse(&read_input(file)?, &envelope_limits())
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    let id = se.id();
    se.verify(&pk)
        .map_err(|e| Fail::code(e.code(), e.to_string()))?;
    let mut o = Object::new();
    o.insert("ok", Value::Bool(true));
    o.insert("id", id.to_hex().into());
    out.emit(&format!("signature ok, id {id}"), Value::Object(o));
    Ok(())
}

/// The current time in milliseconds since the Unix epoch (0 if the clock is before 1970).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
