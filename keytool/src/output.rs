//! Output and exit codes: readable text by default, JSON Lines with `--json`, and one mapping
//! from failure kinds to the documented exit codes.

use formica_protocol::{canon, ErrorCode, Object, Value};
use std::io::Write;
use std::process::ExitCode;

/// The documented exit codes (see `keytool --help`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Failure = 1,
    Usage = 2,
    Input = 3,
    Auth = 4,
    Limited = 5,
    Network = 6,
    NotFound = 7,
    Conflict = 8,
    Storage = 9,
}

impl Exit {
    /// The keytool code of a failure that has no protocol error code (`--json`'s
    /// `error.code`): stable, documented in `keytool --help`.
    pub fn local_code(self) -> &'static str {
        match self {
            Exit::Failure => "keytool.failure",
            Exit::Usage => "keytool.usage",
            Exit::Input => "keytool.input",
            Exit::Auth => "keytool.auth",
            Exit::Limited => "keytool.limited",
            Exit::Network => "keytool.network",
            Exit::NotFound => "keytool.not_found",
            Exit::Conflict => "keytool.conflict",
            Exit::Storage => "keytool.key_file",
        }
    }

    /// The exit code for a protocol error code.
    pub fn for_code(code: ErrorCode) -> Exit {
        use ErrorCode::*;
        match code {
            BadSignature | Unauthorized | NonceReused | UnknownKey | KeyNotValid | Forbidden => {
                Exit::Auth
            }
            RateLimited | InboxFull | PowMissing | PowInsufficient | ChallengeExpired
            | ChallengeUnknown | ChallengeUsed => Exit::Limited,
            // A conversation one does not take part in is one the relay does not show
            // (CONVO-10's 404): not_participant is "not found" too.
            NotFound | UnknownRecipient | UnknownSender | NotParticipant => Exit::NotFound,
            HandleTaken | KeylogFork | KeylogClosed | AckSettled | ProfileOutdated
            | StatusOutdated | ConversationClosed | TurnLimitReached | ActionNotAllowed
            | TooManyConversations | ConversationFork => Exit::Conflict,
            PeerUnavailable | Unavailable | RequestTimeout => Exit::Network,
            _ => Exit::Input,
        }
    }
}

/// A failure to report: exit code, optional protocol error code, message and a hint.
#[derive(Debug)]
pub struct Fail {
    pub exit: Exit,
    pub code: Option<ErrorCode>,
    pub message: String,
    pub hint: Option<String>,
    /// Seconds the relay asked us to wait (`retry_after_s`), for callers that retry.
    pub retry_after_s: Option<u64>,
    /// More members of the JSON `error` object (for example the id of a message that was
    /// accepted at home and refused further on).
    pub details: Vec<(&'static str, Value)>,
}

impl Fail {
    pub fn new(exit: Exit, message: impl Into<String>) -> Fail {
        Fail {
            exit,
            code: None,
            message: message.into(),
            hint: None,
            retry_after_s: None,
            details: Vec::new(),
        }
    }
    /// A failure carrying a protocol error code.
    pub fn code(code: ErrorCode, message: impl Into<String>) -> Fail {
        Fail {
            exit: Exit::for_code(code),
            code: Some(code),
            message: message.into(),
            hint: None,
            retry_after_s: None,
            details: Vec::new(),
        }
    }
    pub fn hint(mut self, hint: impl Into<String>) -> Fail {
        self.hint = Some(hint.into());
        self
    }
    pub fn detail(mut self, key: &'static str, v: Value) -> Fail {
        self.details.push((key, v));
        self
    }

    /// The failure as `--json` prints it: `{"ok":false,"exit":N,"error":{"code",...}}`, with
    /// the protocol's code, or keytool's own where there is none.
    pub fn to_value(&self) -> Value {
        let mut err = Object::new();
        match self.code {
            Some(c) => err.insert("code", c.as_str().into()),
            None => err.insert("code", self.exit.local_code().into()),
        };
        err.insert("message", self.message.clone().into());
        if let Some(h) = &self.hint {
            err.insert("hint", h.clone().into());
        }
        for (k, v) in &self.details {
            err.insert(*k, v.clone());
        }
        let mut o = Object::new();
        o.insert("ok", Value::Bool(false));
        o.insert("exit", Value::Int(self.exit as i64));
        o.insert("error", Value::Object(err));
        Value::Object(o)
    }
}

/// Where results go.
#[derive(Debug)]
pub struct Out {
    pub json: bool,
    /// When set (the MCP server), results are kept here instead of printed.
    capture: Option<std::cell::RefCell<Vec<Value>>>,
}

impl Out {
    pub fn new(json: bool) -> Out {
        Out {
            json,
            capture: None,
        }
    }

    /// An `Out` that keeps the JSON results for [`take`](Self::take) and prints nothing.
    pub fn capturing() -> Out {
        Out {
            json: true,
            capture: Some(std::cell::RefCell::new(Vec::new())),
        }
    }

    /// The results kept by a [`capturing`](Self::capturing) `Out`.
    pub fn take(&self) -> Vec<Value> {
        self.capture
            .as_ref()
            .map(|c| std::mem::take(&mut *c.borrow_mut()))
            .unwrap_or_default()
    }

    /// Prints a result: `text` for people, `value` as one JSON line with `--json`.
    pub fn emit(&self, text: &str, value: Value) {
        if let Some(c) = &self.capture {
            c.borrow_mut().push(value);
            return;
        }
        let mut stdout = std::io::stdout().lock();
        let _ = if self.json {
            let mut line = canon::canonicalize(&value);
            line.push(b'\n');
            stdout.write_all(&line)
        } else {
            writeln!(stdout, "{text}")
        };
    }

    pub fn fail(&self, f: Fail) -> ExitCode {
        if self.json {
            let mut line = canon::canonicalize(&f.to_value());
            line.push(b'\n');
            let _ = std::io::stdout().write_all(&line);
        } else {
            match f.code {
                Some(c) => eprintln!("keytool: error [{c}]: {}", f.message),
                None => eprintln!("keytool: error: {}", f.message),
            }
            if let Some(h) = &f.hint {
                eprintln!("  hint: {h}");
            }
        }
        ExitCode::from(f.exit as u8)
    }
}

/// A command line clap refused (or `--help`/`--version`). Under `--json` (anywhere before a
/// `--`) a refusal is one JSON failure line like every other failure, with code
/// `keytool.usage`; help and version print as usual.
pub fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    let json = std::env::args_os()
        .skip(1)
        .take_while(|a| a != "--")
        .any(|a| a == "--json");
    if !json || matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        e.exit();
    }
    let text = e.render().to_string();
    // The first paragraph is the error (with the arguments it names on the following lines).
    let message = text
        .trim_start()
        .split("\n\n")
        .next()
        .unwrap_or("invalid command line")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_owned();
    let hint = text
        .lines()
        .filter(|l| l.trim_start().starts_with("Usage:") || l.contains("tip:"))
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("; ");
    let mut f = Fail::new(Exit::Usage, message);
    if !hint.is_empty() {
        f = f.hint(format!("{hint}; keytool --help lists the commands"));
    }
    Out::new(true).fail(f)
}

/// A timestamp in milliseconds since the Unix epoch as `YYYY-MM-DD HH:MM:SS.mmmZ` (UTC), for
/// people; JSON output keeps the integer.
pub fn fmt_ms(ms: i64) -> String {
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

#[cfg(test)]
mod tests {
    use super::{fmt_ms, ErrorCode, Exit};

    #[test]
    fn an_outdated_profile_is_a_conflict_and_a_hidden_one_not_found() {
        assert_eq!(Exit::for_code(ErrorCode::ProfileOutdated), Exit::Conflict);
        assert_eq!(Exit::for_code(ErrorCode::StatusOutdated), Exit::Conflict);
        assert_eq!(Exit::for_code(ErrorCode::NotFound), Exit::NotFound);
    }

    #[test]
    fn conversation_refusals_are_conflicts_and_strangers_not_found() {
        for c in [
            ErrorCode::ConversationClosed,
            ErrorCode::TurnLimitReached,
            ErrorCode::ActionNotAllowed,
            ErrorCode::TooManyConversations,
        ] {
            assert_eq!(Exit::for_code(c), Exit::Conflict, "{c}");
        }
        assert_eq!(Exit::for_code(ErrorCode::NotParticipant), Exit::NotFound);
    }

    #[test]
    fn formats_utc_times() {
        assert_eq!(fmt_ms(0), "1970-01-01 00:00:00.000Z");
        assert_eq!(fmt_ms(951_782_400_123), "2000-02-29 00:00:00.123Z");
        assert_eq!(fmt_ms(1_700_000_000_000), "2023-11-14 22:13:20.000Z");
    }
}
