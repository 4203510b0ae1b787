//! RabbitMQ: the topology both daemons declare, and the confirmed publisher the listener
//! hands events to.

pub mod publisher;
pub mod topology;
