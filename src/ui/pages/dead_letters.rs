//! The dead-letter page: events whose decision is `dead_lettered` (not replayed since, or
//! replayed and failed again), newest first, each with why and the command that replays it.
//! The page only shows the command: replaying is the operator's act, never the page's.

use serde::Serialize;

use crate::ui::pages::{PAGE_ROWS, Row};
use crate::ui::query::Cursor;
use crate::worker::state::{Browse, Store, StoreError, now_ms};

/// One page of dead letters.
#[derive(Debug, Serialize)]
pub struct DeadLettersPage {
    /// Newest first.
    pub letters: Vec<Letter>,
    /// Where the next page starts.
    pub next: Option<String>,
}

/// One dead-lettered event.
#[derive(Debug, Serialize)]
pub struct Letter {
    /// Its decision.
    #[serde(flatten)]
    pub row: Row,
    /// Why, the rule and the action (from the record).
    pub reason: String,
    /// The rule whose action failed.
    pub rule: Option<String>,
    /// The action that failed.
    pub action: Option<String>,
    /// Since it was dead-lettered (`3h 12m`).
    pub age: String,
    /// The command that replays it from the dead-letter queue, quoted for a shell.
    pub replay: String,
}

/// Reads a page of dead letters from `before` on; `rules_file` is the worker's, for the
/// replay command.
///
/// # Errors
/// Store failure.
pub fn find(
    store: &dyn Store,
    before: Option<&Cursor>,
    rules_file: &str,
) -> Result<DeadLettersPage, StoreError> {
    let rows = store.browse(&Browse {
        dead_lettered: true,
        before: before.map(|c| (c.at_ms, c.event_key.clone())),
        limit: PAGE_ROWS,
        ..Browse::default()
    })?;
    let full = rows.len() == PAGE_ROWS;
    let now = now_ms();
    let letters: Vec<Letter> = rows
        .into_iter()
        .map(|record| {
            let row = Row::from_record(record);
            let why = row.dead_letter.clone().unwrap_or_else(|| {
                // Records made before the reason was recorded: the failed action says it.
                let failed = row.actions.iter().find(|a| a.outcome == "failed");
                crate::ui::pages::DeadLetterWhy {
                    reason: failed
                        .and_then(|a| a.error.clone())
                        .unwrap_or_else(|| "not recorded".to_owned()),
                    rule: failed.map(|a| a.rule.clone()),
                    action: failed.map(|a| a.action.clone()),
                }
            });
            let age_ms = u64::try_from(now.saturating_sub(row.at_ms)).unwrap_or(0);
            Letter {
                reason: why.reason,
                rule: why.rule,
                action: why.action,
                age: humantime::format_duration(std::time::Duration::from_secs(age_ms / 1000))
                    .to_string(),
                // `--id=…`: an id that starts with `-` must not read as an option.
                replay: format!(
                    "hookwarden dead-letters --rules {} replay --id={}",
                    shell_quoted(rules_file),
                    shell_quoted(&row.event_id)
                ),
                row,
            }
        })
        .collect();
    let next = full.then(|| letters.last()).flatten().map(|last| {
        let cursor = Cursor {
            at_ms: last.row.at_ms,
            event_key: last.row.event_key.clone(),
        };
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("before", &cursor.encode());
        format!("/ui/dead-letters?{}", query.finish())
    });
    Ok(DeadLettersPage { letters, next })
}

/// `text` as one word for a POSIX shell (or zsh): as it is when it holds only characters no
/// shell reads specially, else in single quotes (an event id is the provider's, and the
/// command is meant to be pasted). A leading `=` or `~` is quoted too (zsh and every shell
/// expand them at a word's start).
fn shell_quoted(text: &str) -> String {
    let plain = !text.is_empty()
        && !text.starts_with(['=', '~'])
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_id_is_one_shell_word_whatever_it_holds() {
        assert_eq!(shell_quoted("evt_01JD8Q6W"), "evt_01JD8Q6W");
        assert_eq!(shell_quoted("x; rm -rf /"), "'x; rm -rf /'");
        assert_eq!(shell_quoted("it's $(id)"), r"'it'\''s $(id)'");
        assert_eq!(shell_quoted(""), "''");
        assert_eq!(shell_quoted("=cmd"), "'=cmd'");
        assert_eq!(shell_quoted("-x"), "-x", "safe after --id=");
    }
}
