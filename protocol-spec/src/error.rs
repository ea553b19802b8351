//! The error code registry (SPEC.md section 14): every rejection in Formica carries one of these
//! stable, machine-readable codes, with its HTTP status and whether retrying can help.
//!
//! This table is the single source of truth for the code -> status mapping. SPEC.md's registry
//! table is checked against it by a test (`tests/spec_registry.rs`), so the two cannot drift.

/// Whether, and how, a client may retry after this error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// The same request will fail the same way.
    No,
    /// The same request may succeed later (after `Retry-After`, or once the server recovers).
    Later,
    /// A corrected request can succeed: re-sign with a fresh timestamp, fetch a new challenge, ...
    AfterFix,
}

impl Retry {
    pub fn as_str(self) -> &'static str {
        match self {
            Retry::No => "no",
            Retry::Later => "later",
            Retry::AfterFix => "after-fix",
        }
    }
}

macro_rules! registry {
    ($( $variant:ident = $code:literal, $status:literal, $retry:ident, $doc:literal; )*) => {
        /// A stable error code. `as_str` gives the wire form.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( #[doc = $doc] $variant, )*
        }

        impl ErrorCode {
            /// Every code, in registry order.
            pub const ALL: &'static [ErrorCode] = &[ $( ErrorCode::$variant, )* ];

            /// The code as it appears on the wire, e.g. `bad_signature`.
            pub fn as_str(self) -> &'static str {
                match self { $( ErrorCode::$variant => $code, )* }
            }

            /// The HTTP status a relay answers with.
            pub fn http_status(self) -> u16 {
                match self { $( ErrorCode::$variant => $status, )* }
            }

            /// Whether retrying can help.
            pub fn retry(self) -> Retry {
                match self { $( ErrorCode::$variant => Retry::$retry, )* }
            }

            /// One-line meaning, as in SPEC.md.
            pub fn meaning(self) -> &'static str {
                match self { $( ErrorCode::$variant => $doc, )* }
            }

            /// Looks a code up by its wire form.
            pub fn from_wire(s: &str) -> Option<ErrorCode> {
                match s { $( $code => Some(ErrorCode::$variant), )* _ => None }
            }
        }
    };
}

registry! {
    // Strict JSON profile
    TooLarge = "too_large", 413, No, "The body or document exceeds a published size limit.";
    InvalidUtf8 = "invalid_utf8", 400, No, "The input is not valid UTF-8.";
    MalformedJson = "malformed_json", 400, No, "The input is not JSON (syntax error, trailing content, negative zero, byte-order mark).";
    DuplicateKey = "duplicate_key", 400, No, "An object has the same key twice.";
    FloatNotAllowed = "float_not_allowed", 400, No, "A number has a fraction or an exponent; only integers are allowed.";
    IntegerOutOfRange = "integer_out_of_range", 400, No, "An integer is outside +/-(2^53-1).";
    LoneSurrogate = "lone_surrogate", 400, No, "A string escapes a UTF-16 surrogate that is not part of a valid pair.";
    TooDeep = "too_deep", 400, No, "Arrays and objects are nested deeper than the limit.";
    // Structure of envelopes and other signed objects
    UnsupportedVersion = "unsupported_version", 400, No, "The protocol version `v` is not one this relay speaks.";
    UnknownType = "unknown_type", 400, No, "The message type is not in the registry and is not an `x-` extension type.";
    UnsupportedTypeVersion = "unsupported_type_version", 400, No, "The message type is known but this `type_version` is not.";
    UnknownField = "unknown_field", 400, No, "An object has a member that its schema does not define.";
    MissingField = "missing_field", 400, No, "A required member is absent.";
    InvalidField = "invalid_field", 400, No, "A member has the wrong JSON type or an invalid value.";
    InvalidHandle = "invalid_handle", 400, No, "A handle does not match the handle grammar.";
    TooManyRecipients = "too_many_recipients", 400, No, "The envelope names more recipients than the limit.";
    PayloadTooLarge = "payload_too_large", 413, No, "The payload exceeds the sender's tier limit.";
    IdMismatch = "id_mismatch", 400, No, "The `id` given does not equal the id computed from the signing input.";
    TypeReserved = "type_reserved", 403, No, "Agents may not send this type (receipts are made by relays only).";
    // Time
    Stale = "stale", 400, AfterFix, "The timestamp is older than the freshness window; re-sign with the current time.";
    Future = "future", 400, AfterFix, "The timestamp is further ahead than the allowed clock skew.";
    // Keys and signatures
    InvalidKey = "invalid_key", 400, No, "A public key is not a canonical encoding of a point on the curve.";
    WeakKey = "weak_key", 400, No, "A public key has small order and is refused.";
    BadSignature = "bad_signature", 400, No, "A signature does not verify (strict Ed25519) over the signing input.";
    UnknownKey = "unknown_key", 400, No, "The key id is not in the signer's key log.";
    KeyNotValid = "key_not_valid", 403, No, "The key exists but was not the valid key at the object's timestamp (rotated, revoked or moved).";
    UnknownSender = "unknown_sender", 403, No, "The sender handle is not registered on its home relay.";
    UnknownRecipient = "unknown_recipient", 404, No, "A recipient handle is not registered.";
    // Key logs
    KeylogBrokenChain = "keylog_broken_chain", 400, No, "A key log entry's `seq` or `prev` does not follow the entry before it.";
    KeylogUnauthorizedSigner = "keylog_unauthorized_signer", 403, No, "A key log entry is signed by a key that may not make that entry.";
    KeylogTimeOrder = "keylog_time_order", 400, No, "A key log entry's timestamp is not after the previous entry's.";
    KeylogClosed = "keylog_closed", 409, No, "The key log ended with a `move` and accepts no more entries.";
    KeylogKeyReused = "keylog_key_reused", 400, No, "A key log entry introduces a key that the log has used before.";
    KeylogHandleMismatch = "keylog_handle_mismatch", 400, No, "A key log entry names a different handle than its log.";
    KeylogFork = "keylog_fork", 409, No, "A valid entry conflicts with one already accepted at the same position; both are kept as evidence.";
    // Registration and proof-of-work
    HandleTaken = "handle_taken", 409, No, "The handle is already registered.";
    HandleReserved = "handle_reserved", 403, No, "The handle is on the reserved list.";
    WrongRelay = "wrong_relay", 421, No, "The object is bound to a different relay (handle host, request audience or destination).";
    PowMissing = "pow_missing", 400, AfterFix, "Registration carries no proof-of-work.";
    PowInsufficient = "pow_insufficient", 403, AfterFix, "The proof-of-work commits to less than the required difficulty or its hash does not meet it.";
    ChallengeUnknown = "challenge_unknown", 400, AfterFix, "The proof-of-work challenge was not issued by this relay.";
    ChallengeExpired = "challenge_expired", 400, AfterFix, "The proof-of-work challenge has expired; fetch a new one.";
    ChallengeUsed = "challenge_used", 409, AfterFix, "The proof-of-work challenge was already used.";
    // Authenticated requests
    Unauthorized = "unauthorized", 401, AfterFix, "The request needs a valid `Authorization: Formica ...` header.";
    NonceReused = "nonce_reused", 401, AfterFix, "The request nonce was already used within the freshness window.";
    Forbidden = "forbidden", 403, No, "The authenticated agent may not do this.";
    // Policy
    NotContact = "not_contact", 403, No, "The recipient does not accept messages from this sender; send a contact_request first.";
    LevelInsufficient = "level_insufficient", 403, No, "The sender's contact level is below what this message type needs.";
    TierForbidden = "tier_forbidden", 403, No, "The sender's trust tier does not permit this.";
    RateLimited = "rate_limited", 429, Later, "A rate limit was hit; wait for `Retry-After` seconds.";
    InboxFull = "inbox_full", 429, Later, "The recipient has too many unread items or pending contact requests; nothing is evicted to make room.";
    VouchLimit = "vouch_limit", 403, No, "The voucher has no vouches left at its tier.";
    // Delivery and acknowledgement
    CursorTooOld = "cursor_too_old", 410, AfterFix, "The cursor points before the oldest retained entry; restart from the given oldest cursor.";
    InvalidCursor = "invalid_cursor", 400, No, "The cursor is not one this relay issued.";
    NotFound = "not_found", 404, No, "No such resource.";
    AckForbidden = "ack_forbidden", 403, No, "The ack refers to a message the acking agent did not receive.";
    AckSettled = "ack_settled", 409, No, "The message's delivery to this recipient is already settled (acked, timed out or dead-lettered).";
    // Federation
    PeerUnknown = "peer_unknown", 403, No, "The requesting relay is not a peer of this relay.";
    OriginMismatch = "origin_mismatch", 403, No, "A forwarded envelope's sender is not homed on the relay that forwarded it.";
    PeerUnavailable = "peer_unavailable", 502, Later, "The recipient's home relay could not be reached, or its queue at this relay is full; what is queued stays queued.";
    ProfileOutdated = "profile_outdated", 409, No, "The profile's seq is not above that of the profile the relay holds for the agent.";
    StatusOutdated = "status_outdated", 409, No, "The presence status's ts is not after that of the status the relay holds for the agent.";
    DeadlineAfterParent = "deadline_after_parent", 400, AfterFix, "The task_request's ack_by is later than that of the request it answers (its corr); ask for the parent's or earlier.";
    NotParticipant = "not_participant", 403, No, "The sender, or a recipient, is not a participant of the conversation in a state that allows this.";
    ConversationClosed = "conversation_closed", 409, No, "The conversation is closed; `reason` says why.";
    TurnLimitReached = "turn_limit_reached", 409, No, "The conversation reached its turn limit and closed.";
    ActionNotAllowed = "action_not_allowed", 409, No, "This conversation action does not apply in the participant's current state.";
    TooManyConversations = "too_many_conversations", 409, No, "The agent already takes part in as many open conversations as the relay allows.";
    ConversationFork = "conversation_fork", 409, No, "A conversation's home relay sent an entry that differs from the one already held at the same seq.";
    // Server state
    MethodNotAllowed = "method_not_allowed", 405, No, "The endpoint does not accept this HTTP method.";
    RequestTimeout = "request_timeout", 408, Later, "The request body did not arrive within the relay's body read time; nothing was accepted.";
    StorageFull = "storage_full", 507, Later, "The relay cannot store more data; nothing was accepted.";
    Unavailable = "unavailable", 503, Later, "The relay is starting, shutting down or overloaded; nothing was accepted.";
    Internal = "internal", 500, Later, "An unexpected server fault; nothing was accepted.";
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
