//! RabbitMQ: the topology both daemons declare, how both open, probe and close a
//! connection, and the confirmed publisher the listener hands events to.

pub mod backoff;
pub mod connection;
pub mod publisher;
pub mod topology;
