//! The `[log]` section both daemons read: how much to log and in which format.

use serde::Deserialize;

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `hookwarden=debug,info`; `RUST_LOG` wins.
    #[serde(default = "default_level")]
    pub level: String,
    /// `auto` (JSON when stdout is not a terminal), `json` or `text`.
    #[serde(default = "default_format")]
    pub format: String,
}

fn default_level() -> String {
    "info".to_owned()
}
fn default_format() -> String {
    "auto".to_owned()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_level(),
            format: default_format(),
        }
    }
}
