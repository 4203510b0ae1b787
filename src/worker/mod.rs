//! `hookwarden-worker`: consumes events, keeps per-subject state, evaluates rules and runs
//! actions, exactly once in effect and in order per subject.
//!
//! Path of a delivery: [`crate::broker::consumer`] takes a batch and hands it to [`run`]
//! ([`gate`] keeps batches in hand that share a subject in order) → [`batch`] reads, dedupes and groups it ([`subject`] reads who each event is about) and
//! runs the [`enrich`] lookups the event's rules read →
//! [`decide`], pure, evaluates the [`rules`]' [`condition`]s over the event's [`facts`] and
//! renders the firing rules' actions ([`template`]s) into a `Decision` → the batch carries it
//! out: [`action`] runs each planned action (a file per kind: http over [`http`], exec over
//! [`exec`], amqp, log) → [`state`] commits → the consumer acks. [`config`] is the rules file
//! as the daemon reads it.

pub mod action;
pub mod backtest;
pub mod batch;
pub mod condition;
pub mod config;
pub mod decide;
pub mod enrich;
pub mod exec;
pub mod facts;
pub mod gate;
pub mod http;
pub mod lists;
pub mod marks;
pub mod rules;
pub mod run;
pub mod state;
pub mod stats;
pub mod subject;
pub mod template;
pub mod watch;

pub use run::{Running, start};
