//! `hookwarden-worker`: consumes events, keeps per-subject state, evaluates rules and runs
//! actions, exactly once in effect and in order per subject.
//!
//! Path of a delivery: [`crate::broker::consumer`] takes a batch and hands it to [`run`] →
//! [`batch`] reads, dedupes and groups it → [`subject`] reads who it is about → [`decide`]
//! evaluates [`condition`]s → [`act`] runs actions ([`http`], [`exec`], AMQP, log;
//! [`template`]s rendered) → [`state`] commits → the consumer acks.

pub mod act;
pub mod batch;
pub mod condition;
pub mod decide;
pub mod exec;
pub mod http;
pub mod marks;
pub mod run;
pub mod state;
pub mod subject;
pub mod template;

pub use run::{Running, start};
