//! Whole-listener tests against the real RabbitMQ at 127.0.0.1:5672 (or
//! `HOOKWARDEN_TEST_AMQP`), each with its own uniquely named exchanges and queues.
//! Prerequisite: RabbitMQ running (`.ci/run` starts it).

mod browser;
mod daemon;
mod harness;
mod pg;
mod sink;
mod worker_harness;

mod admin;
mod bench;
mod ci;
mod cli;
mod cli_worker;
mod config_files;
mod handoff;
mod hostile;
mod http_answers;
mod limits;
mod logs;
mod readme;
mod schemes;
mod spool;
mod state;
mod systemd;
mod traces;
mod worker;
mod worker_backtest;
mod worker_breaker;
mod worker_enrich;
mod worker_lists;
mod worker_pace;
mod worker_postgres;
mod worker_stats;
mod worker_ui;
mod worker_watch;
