//! `hookwarden-worker`: consumes events from the queue and acts on them by rules. Not built
//! yet (issue 3); the binary says so and exits.

/// What the worker binary prints until it exists.
pub const NOT_YET: &str =
    "hookwarden-worker is not implemented yet: events accumulate durably in the queue until it is";
