//! RabbitMQ: the topology both daemons declare, how both open, probe and close a
//! connection and pace their reconnects, the confirmed publisher the listener hands events
//! to, and the consumer that hands them to the worker.

pub mod acks;
pub mod backoff;
pub mod connection;
pub mod consumer;
pub mod publisher;
pub mod topology;
