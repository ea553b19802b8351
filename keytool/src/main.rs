//! `keytool`: the agent's command line. This file is glue: argument parsing, output and exit
//! codes. Wire-format work is done by `formica-protocol`; key storage by `identity`; the relay's
//! HTTP API by `client`; the commands by `offline`, `online`, `watch` and `keyops`.

mod client;
mod enc;
mod enckeys;
mod identity;
mod keyops;
mod mcp;
mod mine;
mod offline;
mod online;
mod output;
mod watch;

use clap::{Args, Parser, Subcommand};
use formica_protocol::envelope::ReportReason;
use formica_protocol::{AckStatus, ContactLevel};
use output::{Fail, Out};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Formica agent tool: keys, registration, signed messages (sealed end to end by default),
/// inbox, acks, contacts, profiles, presence and conversations.
///
/// Exit codes: 0 ok (also `watch` ending at --count or --timeout); 1 unexpected failure;
/// 2 usage error; 3 input refused (bad JSON or schema, policy refusals such as not_contact,
/// with the protocol's error code); 4 signature or authentication failure (also a relay
/// document, key log, profile, presence status or conversation entry that does not verify);
/// 5 rate limited or proof-of-work refused; 6 network error (relay unreachable, with the URL);
/// 7 not found (also a profile, presence or conversation you may not see, not_participant);
/// 8 conflict (for example, handle taken, profile_outdated, status_outdated,
/// conversation_closed, turn_limit_reached, action_not_allowed, too_many_conversations);
/// 9 local key storage problem (missing identity, unsafe permissions).
///
/// With --json every failure, usage errors included, prints one line
/// {"ok":false,"exit":N,"error":{"code":...,"message":...,"hint":...}}: `code` is the
/// protocol's error code when the relay (or the protocol's own checks) gave one, else a
/// keytool code: keytool.usage, keytool.input, keytool.auth, keytool.limited,
/// keytool.network, keytool.not_found, keytool.conflict, keytool.key_file, keytool.failure.
///
/// This program is Formica's `keytool`, not the JDK's: if `keytool --version` does not say
/// "formica", put `~/.cargo/bin` (or the directory you installed it to) before the JDK in PATH,
/// or run it by full path.
#[derive(Debug, Parser)]
#[command(name = "keytool", version = concat!(env!("CARGO_PKG_VERSION"), " (formica)"))]
struct Cli {
    /// Directory that holds identities (key files). Default: $XDG_CONFIG_HOME/formica, else
    /// ~/.config/formica.
    #[arg(long, global = true, env = "FORMICA_HOME")]
    home: Option<PathBuf>,

    /// Print JSON Lines instead of readable text; failures print {"ok":false,"error":{...}}.
    #[arg(long, global = true)]
    json: bool,

    /// Relay base URL, e.g. http://127.0.0.1:7070 or https://relay-a.example. Default: the
    /// relay the identity registered on, else http://127.0.0.1:7070.
    #[arg(long, global = true, env = "FORMICA_RELAY")]
    relay: Option<String>,

    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Create a new Ed25519 key and store it as a named identity (file mode 0600 in a 0700
    /// directory). With FORMICA_PASSPHRASE set, key files are written encrypted (scrypt and
    /// ChaCha20-Poly1305) and can be read only with that passphrase set.
    Keygen {
        /// Identity name (a local file name, not the handle).
        #[arg(long, default_value = "default")]
        name: String,
        /// Also create a recovery key, kept in a separate file, to name at registration.
        #[arg(long)]
        recovery: bool,
        /// Replace an existing identity of that name.
        #[arg(long)]
        force: bool,
    },
    /// Show an identity: public key, key id, handle if registered.
    Whoami {
        #[arg(long, default_value = "default", env = "FORMICA_IDENTITY")]
        identity: String,
    },
    /// Print the exact signing input of a JSON document: domain tag, NUL, then the RFC 8785
    /// form without `id` and `sig`.
    Canon {
        /// File to read; `-` or nothing for standard input.
        file: Option<PathBuf>,
        /// Domain: envelope, receipt, keylog, descriptor, or auto (envelope or receipt by the
        /// `type` member, keylog if there is an `op` member).
        #[arg(long, default_value = "auto")]
        domain: String,
        /// Print the plain RFC 8785 form of the whole document (no tag, nothing removed).
        #[arg(long, conflicts_with = "domain")]
        jcs: bool,
        /// With --jcs: read one document per line and print one canonical form per line, or
        /// `!code` for a document the strict profile refuses.
        #[arg(long, requires = "jcs")]
        lines: bool,
        /// Print hex instead of raw bytes (the default when standard output is a terminal).
        #[arg(long)]
        hex: bool,
    },
    /// Print the id of an envelope (BLAKE3 of its signing input).
    Id { file: Option<PathBuf> },
    /// Sign an envelope: reads it without `sig` (and without `id`), sets `key` to the
    /// identity's key id, and prints the signed envelope.
    Sign {
        file: Option<PathBuf>,
        #[arg(long, default_value = "default", env = "FORMICA_IDENTITY")]
        identity: String,
        /// Set `ts` to the current time before signing.
        #[arg(long)]
        now: bool,
    },
    /// Verify an envelope's signature with a public key (hex) or an identity's key.
    Verify {
        file: Option<PathBuf>,
        /// Public key, 64 lower-case hex characters.
        #[arg(long, conflicts_with = "identity")]
        key: Option<String>,
        #[arg(long, env = "FORMICA_IDENTITY")]
        identity: Option<String>,
    },
    /// Register a handle: `@name` becomes `@name@<relay host>`. Creates the identity if it does
    /// not exist yet, mines the relay's proof-of-work on all cores, and stores the handle and
    /// relay URL in the identity file.
    Register {
        /// The handle, `@name` (or `@name@host`, where host must be the relay's).
        handle: String,
        #[command(flatten)]
        id: IdentityArg,
        /// Name a recovery key in the register entry (created, and kept in
        /// `<identity>.recovery.json`, if the identity has none).
        #[arg(long)]
        recovery: bool,
        /// Do not publish an encryption key after registering (then messages to you are sent
        /// unsealed until `keytool enc-key rotate`).
        #[arg(long)]
        no_enc: bool,
    },
    /// Look a handle up: fetch its key log, verify it from the first entry and print the
    /// current key and encryption key (never trusting the relay's summary).
    Resolve {
        /// `@name` (on your relay) or `@name@host`.
        handle: String,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Send a signed envelope: `keytool send @nova "hello" [@more ...]`. A message,
    /// task_request, task_result or x- type is sealed (end-to-end encrypted: relays carry it but
    /// cannot read it) when every recipient's key log has a current encryption key, else sent
    /// unsealed, and the output says so (`sealed`, `unsealed_reason`, `no_enc_key`).
    Send {
        /// First recipient, `@name` (on your relay) or `@name@host`.
        to: String,
        /// The message text, then more recipients. With --payload: only more recipients.
        rest: Vec<String>,
        /// Message type (message, task_request, task_result, x-...). Types other than
        /// `message` need --payload.
        #[arg(long = "type", value_name = "TYPE")]
        msg_type: Option<String>,
        /// Read the payload as JSON from FILE (`-` for standard input).
        #[arg(long, value_name = "FILE|-")]
        payload: Option<PathBuf>,
        /// Ask the recipients to ack within this time (500ms, 30s, 5m, 1h, 2d; at most 7d).
        #[arg(long, value_name = "DURATION", value_parser = online::parse_duration)]
        ack_deadline: Option<Duration>,
        /// Correlation id (1-128 printable ASCII characters, no spaces).
        #[arg(long, value_name = "ID")]
        corr: Option<String>,
        /// For recipients on other relays: wait at most this long for their relay's answer,
        /// and fail with its error code if it refused the message (500ms, 5s, 1m; at most 1m).
        #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = send_wait)]
        wait: Duration,
        /// Do not wait for other relays' answer (same as --wait 0ms).
        #[arg(long, conflicts_with = "wait")]
        no_wait: bool,
        /// A task_request answering (--corr) a request you received may not ask for a later
        /// ack deadline than that request's (ACK-5): send shortens it to that one and says
        /// so; with --no-shorten it fails with deadline_after_parent instead.
        #[arg(long)]
        no_shorten: bool,
        /// Do not seal the payload, even when every recipient publishes an encryption key:
        /// relays (and anyone who reads their disks) can read it.
        #[arg(long)]
        plain: bool,
        /// Fail (exit 3) instead of sending unsealed when a recipient publishes no
        /// encryption key (or the type cannot be sealed).
        #[arg(long, conflicts_with = "plain")]
        sealed: bool,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Read one page of the inbox. With --json: one line {"cursor","envelope"} per item. A
    /// sealed item is opened with your keys: it also has "sealed":true and "payload" (the
    /// opened payload), or "open_error" {"reason","message"} when it cannot be opened
    /// (bad_sender, not_a_recipient, unknown_key_id, key_expired, key_not_valid, bad_tag,
    /// bad_padding, bad_plaintext, malformed); readable lines say [sealed] or
    /// [sealed: cannot open: REASON].
    Inbox {
        /// Start after this cursor (as printed by inbox or watch); default: the oldest item.
        #[arg(long)]
        after: Option<String>,
        /// Items per page (1 to the relay's inbox_page_max; default: the relay's maximum).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Serve this identity's messaging to an MCP client over stdin/stdout (tools: send, inbox,
    /// wait_for_messages, ack, status, resolve, contacts, contact requests, profile_set,
    /// profile_show, find, presence_set, presence_show, who, call, calls, accept, decline,
    /// conversation_send, conversation_history, conversation_leave, conversation_close,
    /// conversation_list; the resource formica://inbox,
    /// subscribable). `send` and `conversation_send` seal as `send` does (`plain` opts out);
    /// the reads open sealed items. Standard output carries only MCP messages.
    Mcp {
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Follow the inbox live (Server-Sent Events), printing one JSON line {"cursor","envelope"}
    /// per item, with or without --json (and with --presence, {"presence"} lines); sealed items
    /// are opened as `inbox` opens them ("sealed", "payload" or "open_error"). Reconnects
    /// with backoff and resumes after the last printed cursor. An open stream shows you as
    /// connected to your contacts (presence).
    Watch(watch::WatchArgs),
    /// Acknowledge a message you received: sends an `ack` envelope to its sender.
    Ack {
        /// The message id (64 hex, as shown by inbox or watch).
        msg: String,
        #[arg(long, default_value = "received", value_parser = ack_status)]
        status: AckStatus,
        /// Why (at most 280 characters), e.g. for `rejected`.
        #[arg(long)]
        reason: Option<String>,
        /// The message's sender. Without it the inbox is read from the start to find the
        /// message (reading marks the items read as delivered, as any inbox read does).
        #[arg(long, value_name = "HANDLE")]
        from: Option<String>,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Show the delivery status of a message you sent, per recipient.
    Status {
        /// The message id printed by send.
        msg: String,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Manage who may send to you, and at which level.
    #[command(subcommand)]
    Contacts(ContactsCmd),
    /// Answer contact requests from agents who are not your contacts yet.
    #[command(subcommand)]
    Requests(RequestsCmd),
    /// Publish your signed profile, or show an agent's profile verified against its key log.
    #[command(subcommand)]
    Profile(online::ProfileCmd),
    /// Search your relay's directory of listed profiles; every result is verified against its
    /// agent's key log. With --json: one line per result, then {"ok","count","next"}.
    Find(online::FindArgs),
    /// Set your presence status (available, busy, away), show an agent's presence, or send a
    /// heartbeat when you keep no inbox stream open.
    #[command(subcommand)]
    Presence(online::PresenceCmd),
    /// Your contacts' presence, one line each (signed statuses verified). With --json: one line
    /// per contact, then {"ok","count"}.
    Who(online::WhoArgs),
    #[command(flatten)]
    Conversations(online::ConvTop),
    /// Ask an agent to add you as a contact (the only envelope a stranger may send).
    ContactRequest {
        handle: String,
        /// The level you ask for: read, message or task.
        #[arg(long, value_parser = contact_level)]
        level: ContactLevel,
        /// A short note for them (at most 280 characters).
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Vouch for an agent (raises its trust tier), or take a vouch back with --revoke.
    Vouch {
        handle: String,
        #[arg(long)]
        revoke: bool,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Report an agent to its relay.
    Report {
        handle: String,
        /// spam, abuse, impersonation, malware or other.
        #[arg(long, value_parser = report_reason)]
        reason: ReportReason,
        /// Id of the offending message.
        #[arg(long, value_name = "ID")]
        msg: Option<String>,
        /// A short note (at most 280 characters).
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Replace the signing key: the new key is signed in by the current one. The old key file
    /// is kept as `<identity>.json.old-<key id>`.
    Rotate {
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Revoke the current key: the handle can send nothing until `recover`.
    Revoke {
        /// Sign with the recovery key (when the signing key is lost or stolen).
        #[arg(long)]
        with_recovery: bool,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Publish (`rotate`) or list your encryption keys, to which others seal messages for you.
    #[command(subcommand)]
    EncKey(enc::EncKeyCmd),
    /// Install a new signing key, signed by the recovery key (`<identity>.recovery.json`).
    Recover {
        /// Also replace the recovery key (the old file is kept as `.old-<key id>`).
        #[arg(long)]
        new_recovery: bool,
        #[command(flatten)]
        id: IdentityArg,
    },
}

/// The identity a command acts as (also in the `online` and `watch` argument structs).
#[derive(Debug, Args)]
struct IdentityArg {
    /// Identity name (a local key file), not the handle.
    #[arg(long, default_value = "default", env = "FORMICA_IDENTITY")]
    identity: String,
}

#[derive(Debug, Subcommand)]
enum ContactsCmd {
    /// Allow an agent to send to you at a level (read, message or task).
    Add {
        handle: String,
        #[arg(long, value_parser = contact_level)]
        level: ContactLevel,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Withdraw an agent's grant.
    Remove {
        handle: String,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// List your grants. With --json: one line per contact.
    List {
        #[command(flatten)]
        id: IdentityArg,
    },
}

#[derive(Debug, Subcommand)]
enum RequestsCmd {
    /// List pending contact requests. With --json: one line per request.
    List {
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Accept a request: the requester becomes a contact.
    Accept {
        /// The request id (from requests list).
        request: String,
        /// Grant less than was asked for (default: the requested level).
        #[arg(long, value_parser = contact_level)]
        level: Option<ContactLevel>,
        #[command(flatten)]
        id: IdentityArg,
    },
    /// Reject a request (the requester is not told).
    Reject {
        request: String,
        #[command(flatten)]
        id: IdentityArg,
    },
}

fn words<T: Copy>(s: &str, words: &[(&str, T)]) -> Result<T, String> {
    words
        .iter()
        .find(|(w, _)| *w == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let all: Vec<&str> = words.iter().map(|(w, _)| *w).collect();
            format!("expected one of {}", all.join(", "))
        })
}
/// Longest `send --wait`: a remote relay that has not answered in a minute is retried with
/// backoff, so waiting longer only blocks the caller; `keytool status` shows the outcome later.
const SEND_WAIT_MAX: Duration = Duration::from_secs(60);

fn send_wait(s: &str) -> Result<Duration, String> {
    let d = online::parse_duration(s)?;
    if d > SEND_WAIT_MAX {
        return Err(format!(
            "{s:?}: at most 1m (keytool status shows the outcome later)"
        ));
    }
    Ok(d)
}

fn contact_level(s: &str) -> Result<ContactLevel, String> {
    words(s, ContactLevel::WORDS)
}
fn ack_status(s: &str) -> Result<AckStatus, String> {
    words(s, AckStatus::WORDS)
}
fn report_reason(s: &str) -> Result<ReportReason, String> {
    words(s, ReportReason::WORDS)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return output::usage_error(e),
    };
    // `keytool mcp` speaks MCP on standard output: its own failures (a key that does not load)
    // go to standard error even with --json.
    let out = Out::new(cli.json && !matches!(cli.cmd, Cmd::Mcp { .. }));
    let home = match cli
        .home
        .clone()
        .map(Ok)
        .unwrap_or_else(identity::default_home)
    {
        Ok(h) => h,
        Err(f) => return out.fail(f),
    };
    let res: Result<(), Fail> = match cli.cmd {
        Cmd::Keygen {
            name,
            recovery,
            force,
        } => offline::keygen(&out, &home, &name, recovery, force),
        Cmd::Whoami { identity } => offline::whoami(&out, &home, &identity),
        Cmd::Canon {
            file,
            domain,
            jcs,
            lines,
            hex,
        } => offline::canon(&out, file.as_deref(), &domain, jcs, lines, hex),
        Cmd::Id { file } => offline::id(&out, file.as_deref()),
        Cmd::Sign {
            file,
            identity,
            now,
        } => offline::sign(&out, &home, file.as_deref(), &identity, now),
        Cmd::Verify {
            file,
            key,
            identity,
        } => offline::verify(
            &out,
            &home,
            file.as_deref(),
            key.as_deref(),
            identity.as_deref(),
        ),
        online_cmd => {
            let ctx = online::Ctx {
                out: &out,
                home: &home,
                relay: cli.relay.as_deref(),
            };
            run_online(&ctx, online_cmd)
        }
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => out.fail(f),
    }
}

fn run_online(ctx: &online::Ctx<'_>, cmd: Cmd) -> Result<(), Fail> {
    match cmd {
        Cmd::Mcp { id } => mcp::serve(mcp::Config {
            home: ctx.home.to_owned(),
            relay: ctx.relay.map(str::to_owned),
            identity: id.identity,
        }),
        Cmd::Register {
            handle,
            id,
            recovery,
            no_enc,
        } => online::register(ctx, &handle, &id.identity, recovery, !no_enc),
        Cmd::Resolve { handle, id } => online::resolve(ctx, &handle, &id.identity),
        Cmd::Send {
            to,
            rest,
            msg_type,
            payload,
            ack_deadline,
            corr,
            wait,
            no_wait,
            no_shorten,
            plain,
            sealed,
            id,
        } => online::send(
            ctx,
            &id.identity,
            online::SendArgs {
                to,
                rest,
                msg_type,
                payload,
                ack_deadline,
                corr,
                no_shorten,
                plain,
                sealed,
                payload_doc: None,
                wait: if no_wait { Duration::ZERO } else { wait },
            },
        ),
        Cmd::Inbox { after, limit, id } => {
            online::inbox(ctx, &id.identity, after.as_deref(), limit).map(|_| ())
        }
        Cmd::Watch(w) => watch::watch(ctx, w),
        Cmd::Ack {
            msg,
            status,
            reason,
            from,
            id,
        } => online::ack(ctx, &id.identity, &msg, status, reason, from.as_deref()),
        Cmd::Status { msg, id } => online::status(ctx, &id.identity, &msg),
        Cmd::Contacts(ContactsCmd::Add { handle, level, id }) => {
            online::contacts_add(ctx, &id.identity, &handle, level)
        }
        Cmd::Contacts(ContactsCmd::Remove { handle, id }) => {
            online::contacts_remove(ctx, &id.identity, &handle)
        }
        Cmd::Contacts(ContactsCmd::List { id }) => online::contacts_list(ctx, &id.identity),
        Cmd::Requests(RequestsCmd::List { id }) => online::requests_list(ctx, &id.identity),
        Cmd::Requests(RequestsCmd::Accept { request, level, id }) => {
            online::requests_answer(ctx, &id.identity, &request, Some(level))
        }
        Cmd::Requests(RequestsCmd::Reject { request, id }) => {
            online::requests_answer(ctx, &id.identity, &request, None)
        }
        Cmd::Profile(cmd) => online::profile(ctx, cmd),
        Cmd::Find(f) => online::find(ctx, &f.id.identity, &f.query),
        Cmd::Presence(cmd) => online::presence(ctx, cmd),
        Cmd::Who(w) => online::who(ctx, &w.id.identity),
        Cmd::Conversations(c) => online::conversations(ctx, c),
        Cmd::ContactRequest {
            handle,
            level,
            note,
            id,
        } => online::contact_request(ctx, &id.identity, &handle, level, note),
        Cmd::Vouch { handle, revoke, id } => online::vouch(ctx, &id.identity, &handle, revoke),
        Cmd::Report {
            handle,
            reason,
            msg,
            note,
            id,
        } => online::report(ctx, &id.identity, &handle, reason, msg.as_deref(), note),
        Cmd::Rotate { id } => keyops::rotate(ctx, &id.identity),
        Cmd::EncKey(cmd) => enc::enc_key(ctx, cmd),
        Cmd::Revoke { with_recovery, id } => keyops::revoke(ctx, &id.identity, with_recovery),
        Cmd::Recover { new_recovery, id } => keyops::recover(ctx, &id.identity, new_recovery),
        Cmd::Keygen { .. }
        | Cmd::Whoami { .. }
        | Cmd::Canon { .. }
        | Cmd::Id { .. }
        | Cmd::Sign { .. }
        | Cmd::Verify { .. } => Err(Fail::new(
            output::Exit::Failure,
            "an offline command reached the online dispatcher",
        )),
    }
}
