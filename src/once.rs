//! Values a node sets once while it starts (listener handles, the media plane, the CDR
//! tap, the recording directory). Setting one twice is a bug in the start order: it is
//! reported, never silently ignored.

use std::sync::OnceLock;

/// A value that was already set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} was set twice")]
pub struct SetTwice(pub &'static str);

/// Sets `cell` to `value`, or says that `what` was already set.
pub fn set<T>(cell: &OnceLock<T>, value: T, what: &'static str) -> Result<(), SetTwice> {
    cell.set(value).map_err(|_| SetTwice(what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_set_is_an_error_and_keeps_the_first_value() {
        let cell = OnceLock::new();
        assert_eq!(set(&cell, 1, "the answer"), Ok(()));
        assert_eq!(set(&cell, 2, "the answer"), Err(SetTwice("the answer")));
        assert_eq!(cell.get(), Some(&1));
        assert_eq!(
            SetTwice("the media plane").to_string(),
            "the media plane was set twice"
        );
    }
}
