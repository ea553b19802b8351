//! Freshness of signed objects (SPEC.md section 10, TIME-1..4). Pure: the caller passes "now".

use crate::error::ErrorCode;

/// How far in the past a timestamp may be: 5 minutes. Long enough for a slow client and a
/// retried POST, short enough that the dedup and nonce sets that must cover it stay small.
pub const FRESHNESS_WINDOW_MS_DEFAULT: i64 = 5 * 60 * 1000;
/// How far in the future a timestamp may be: 30 seconds of clock skew.
pub const FUTURE_SKEW_MS_DEFAULT: i64 = 30 * 1000;

/// The window a relay enforces; published in its descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    pub window_ms: i64,
    pub skew_ms: i64,
}

impl Default for TimeWindow {
    fn default() -> Self {
        TimeWindow {
            window_ms: FRESHNESS_WINDOW_MS_DEFAULT,
            skew_ms: FUTURE_SKEW_MS_DEFAULT,
        }
    }
}

impl TimeWindow {
    /// TIME-3: how long ids and nonces must be remembered so that a replay is recognised for
    /// as long as its timestamp would pass the freshness check.
    pub fn retention_ms(&self) -> i64 {
        self.window_ms + self.skew_ms
    }

    /// TIME-1/TIME-2: `now - window_ms <= ts <= now + skew_ms`.
    pub fn check(&self, ts: i64, now: i64) -> Result<(), TimeError> {
        if ts < now - self.window_ms {
            Err(TimeError::Stale {
                ts,
                now,
                window_ms: self.window_ms,
            })
        } else if ts > now + self.skew_ms {
            Err(TimeError::Future {
                ts,
                now,
                skew_ms: self.skew_ms,
            })
        } else {
            Ok(())
        }
    }
}

/// A timestamp outside the window. The message states the relay's time, so a client with a
/// wrong clock can see by how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("timestamp {ts} is more than {window_ms} ms before the relay's time {now}")]
    Stale { ts: i64, now: i64, window_ms: i64 },
    #[error("timestamp {ts} is more than {skew_ms} ms after the relay's time {now}")]
    Future { ts: i64, now: i64, skew_ms: i64 },
}

impl TimeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            TimeError::Stale { .. } => ErrorCode::Stale,
            TimeError::Future { .. } => ErrorCode::Future,
        }
    }
    pub fn server_time(&self) -> i64 {
        match self {
            TimeError::Stale { now, .. } | TimeError::Future { now, .. } => *now,
        }
    }
}
