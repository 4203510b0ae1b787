//! `[ui]` of the rules file: whether the worker serves its web view under `/ui/` on the admin
//! address, and the token that guards it when it is exposed beyond the host.

use serde::Deserialize;

use crate::config::Document;
use crate::config::secret::{self, Secret};

/// `[ui]`, its token resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiConfig {
    /// Whether `/ui/` is served.
    pub enabled: bool,
    /// When set, every page and JSON answer needs it: as `Authorization: Bearer …`, or the
    /// session cookie the login form sets.
    pub token: Option<Secret>,
}

impl Default for UiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            token: None,
        }
    }
}

/// `[ui]` as written: the token as a secret reference (`env:NAME`, `file:PATH`, or itself).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUi {
    #[serde(default = "enabled")]
    enabled: bool,
    token: Option<String>,
}

fn enabled() -> bool {
    true
}

/// Shortest token taken: the login form is a guessing oracle, so a token must not be one a
/// guess finds.
const MIN_TOKEN_CHARS: usize = 16;

impl UiConfig {
    /// Reads `[ui]` of `doc`, reporting its problems there; `None` after a problem.
    pub(crate) fn parse(doc: &mut Document<'_>) -> Option<Self> {
        let raw: RawUi = doc.section("ui")?;
        let token = match raw.token {
            None => None,
            Some(reference) => match secret::resolve(&reference, doc.env()) {
                Ok(token) if token.expose().chars().count() < MIN_TOKEN_CHARS => {
                    doc.problem(
                        "ui.token",
                        format!("is shorter than {MIN_TOKEN_CHARS} characters"),
                    );
                    return None;
                }
                Ok(token) if token.expose().chars().any(char::is_whitespace) => {
                    doc.problem("ui.token", "contains whitespace".to_owned());
                    return None;
                }
                Ok(token) => Some(token),
                Err(reason) => {
                    doc.problem("ui.token", reason);
                    return None;
                }
            },
        };
        Some(Self {
            enabled: raw.enabled,
            token,
        })
    }

    /// One line for `--check`.
    pub fn describe(&self) -> &'static str {
        match (self.enabled, &self.token) {
            (false, _) => "web view off",
            (true, None) => "web view on /ui/",
            (true, Some(_)) => "web view on /ui/ (token required)",
        }
    }
}
