//! How a case ends: it passes (returns `Ok`), fails with a reason that names the request, the
//! answer and what was expected, or is skipped with a reason (a precondition the relay under
//! test does not meet, such as a published limit too large to reach in a bounded run).

/// Why a case stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    Fail(String),
    Skip(String),
}

pub type R<T = ()> = Result<T, Stop>;

/// Fails the case unless `$cond` holds.
#[macro_export]
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)*) => {
        if !$cond {
            return Err($crate::verdict::Stop::Fail(format!($($fmt)*)));
        }
    };
}

/// Fails the case.
#[macro_export]
macro_rules! fail {
    ($($fmt:tt)*) => {
        return Err($crate::verdict::Stop::Fail(format!($($fmt)*)))
    };
}

/// Skips the case with a reason.
#[macro_export]
macro_rules! skip {
    ($($fmt:tt)*) => {
        return Err($crate::verdict::Stop::Skip(format!($($fmt)*)))
    };
}

/// A failure reason from anything printable.
pub fn failure(msg: impl Into<String>) -> Stop {
    Stop::Fail(msg.into())
}
