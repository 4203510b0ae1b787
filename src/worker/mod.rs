//! `hookwarden-worker`: consumes events, keeps per-subject state, evaluates rules and runs
//! actions, exactly once in effect and in order per subject.
//!
//! Path of a delivery: [`consumer`] takes a batch → [`batch`] reads, dedupes and groups it →
//! [`subject`] reads who it is about → [`decide`] evaluates [`condition`]s → [`act`] runs
//! actions ([`http`], [`exec`], AMQP, log; [`template`]s rendered) → [`state`] commits →
//! the consumer acks.

pub mod action;
pub mod batch;
pub mod condition;
pub mod config;
pub mod consumer;
pub mod decide;
pub mod exec;
pub mod facts;
pub mod http;
pub mod marks;
pub mod rules;
pub mod state;
pub mod subject;
pub mod template;

pub use consumer::{Running, start};
