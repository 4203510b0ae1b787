//! hookwarden receives signed webhooks from reputation, fraud-scoring and reward providers,
//! hands them to RabbitMQ with publisher confirms, and (in the worker) acts on them by rules.
//!
//! # Layout
//! In the order an event travels:
//! - [`listener`]: the HTTP endpoint, configured by [`listener::config`] (`listener.toml`).
//!   [`listener::server`] accepts connections →
//!   [`listener::handler`] routes, checks the source ([`listener::client_ip`]), reads the
//!   body within limits ([`listener::body`]), verifies the signature ([`scheme`]), parses the
//!   body (duplicate keys refused) and reads id and type ([`listener::extract`]) →
//!   [`listener::dedupe`] coalesces and remembers ids →
//!   the handoff publishes. [`listener::error`] is the one error → HTTP status map.
//! - [`scheme`]: signature schemes (hmac-sha256, GitHub, Stripe, Standard Webhooks), verify
//!   and sign, over raw bytes, in constant time; each owns its defaults ([`scheme::SchemeKind`]).
//! - [`envelope`]: the message format between listener and worker.
//! - [`broker`]: [`broker::topology`] (declared identically by both daemons) →
//!   [`broker::publisher`] (the listener's confirmed publishing) | [`broker::consumer`] (the
//!   worker's batches, acks and dead-link watchdog). Both open, declare, probe and close
//!   through [`broker::connection`] and pace reconnects with [`broker::backoff`].
//! - [`worker`]: [`worker::run`] wires it and takes each batch (several in hand at once,
//!   [`worker::gate`] keeping those that share a subject in order) → [`worker::batch`] groups
//!   them by subject → [`worker::enrich`] runs the lookups the event's rules read →
//!   [`worker::decide`] (pure) turns an event, the subject's state, the lookups' answers and
//!   the [`worker::rules`] into a typed `Decision` → the batch carries it out:
//!   [`worker::action`] runs the planned actions (a file per kind; paced) → [`worker::state`]
//!   commits, done-marks written behind the actions by [`worker::marks`]. [`worker::config`]
//!   is the rules file; [`worker::facts`] the one list of names conditions and templates see.
//! - [`config`]: what every config file shares: TOML + `HOOKWARDEN__` overrides → typed
//!   sections, every problem named with file, line, key and reason; the `[amqp]`, `[log]`
//!   and `[telemetry]` sections, secrets, units. Each daemon owns its own sections. Imports
//!   no daemon.
//! - [`admin`]: health, readiness (with the reason when not ready) and metrics, for both daemons.
//! - [`ui`]: the worker's read-only web view under `/ui/` on its admin address: overview,
//!   decisions, a subject's scores over time, dead letters; HTML or JSON.
//! - [`telemetry`]: logs (the subscriber, its JSON line, the request span, `ErrorChain`), W3C
//!   trace context ([`telemetry::trace`]: listener request → message header → worker delivery,
//!   rule and action spans → the action's target) and its OTLP export, and each daemon's
//!   Prometheus metrics. [`signals`]: SIGTERM/SIGINT/SIGHUP.
//!   [`systemd`]: readiness, watchdog, socket activation.
//! - [`cli`]: the operator's `hookwarden` command. [`daemon`]: what both daemons' mains share.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]
#![deny(clippy::unwrap_used, clippy::disallowed_methods)]

pub mod admin;
pub mod broker;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod envelope;
pub mod listener;
pub mod scheme;
pub mod signals;
pub mod systemd;
pub mod telemetry;
pub mod ui;
pub mod worker;
