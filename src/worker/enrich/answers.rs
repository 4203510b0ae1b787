//! What an event's lookups came to, as a plain value: the answers rules read, why a lookup
//! gave none, and what the decision record says of them. [`crate::worker::decide`] takes it
//! as it takes the event, so a decision stays a function of its inputs.

use std::collections::BTreeMap;

use serde_json::Value;

use super::OnError;

/// Why a lookup gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The reason, one line.
    pub reason: String,
    /// What the failure does to the event.
    pub on_error: OnError,
}

/// The lookups of one event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answers {
    /// Each answer, by lookup name: `enrich.NAME`.
    pub values: BTreeMap<String, Value>,
    /// Whether an answer came from the cache, by lookup name.
    pub cached: BTreeMap<String, bool>,
    /// Each lookup that gave no answer, by name.
    pub failed: BTreeMap<String, Failure>,
}

impl Answers {
    /// The first lookup (by name) that failed with `on_error = "retry"`, and the reason the
    /// event is dead-lettered with.
    pub fn dead_letter(&self) -> Option<(&str, String)> {
        self.failed
            .iter()
            .find(|(_, f)| f.on_error == OnError::Retry)
            .map(|(name, f)| {
                (
                    name.as_str(),
                    format!("lookup {name:?} failed: {}", f.reason),
                )
            })
    }

    /// Why a rule that reads the lookups `names` cannot be evaluated: the first of them that
    /// failed, or was not run at all (a backtest, or `rules test` without its answer).
    pub fn missing(&self, names: &[String]) -> Option<String> {
        names.iter().find_map(|name| {
            if self.values.contains_key(name) {
                return None;
            }
            Some(match self.failed.get(name) {
                Some(failure) => format!("lookup {name:?} failed: {}", failure.reason),
                None => format!("lookup {name:?} was not run"),
            })
        })
    }

    /// Whether no lookup ran.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty() && self.failed.is_empty()
    }

    /// What the decision record keeps: per lookup, `{"cached": bool}` or `{"error": …}`. The
    /// answers themselves are not kept: they can be large and hold what the record need not.
    pub fn record(&self) -> Value {
        let answered = self.values.keys().map(|name| {
            let cached = self.cached.get(name).copied().unwrap_or(false);
            (name.clone(), serde_json::json!({ "cached": cached }))
        });
        let failed = self.failed.iter().map(|(name, f)| {
            (
                name.clone(),
                serde_json::json!({ "error": f.reason, "on_error": f.on_error.as_str() }),
            )
        });
        Value::Object(answered.chain(failed).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers() -> Answers {
        Answers {
            values: BTreeMap::from([("account".to_owned(), serde_json::json!({"age_days": 3}))]),
            cached: BTreeMap::from([("account".to_owned(), true)]),
            failed: BTreeMap::from([
                (
                    "ledger".to_owned(),
                    Failure {
                        reason: "connect error".to_owned(),
                        on_error: OnError::SkipRule,
                    },
                ),
                (
                    "payouts".to_owned(),
                    Failure {
                        reason: "HTTP 503 Service Unavailable".to_owned(),
                        on_error: OnError::Retry,
                    },
                ),
            ]),
        }
    }

    #[test]
    fn a_rule_misses_the_first_lookup_it_reads_that_did_not_answer() {
        let a = answers();
        assert_eq!(a.missing(&["account".to_owned()]), None);
        assert_eq!(
            a.missing(&["account".to_owned(), "ledger".to_owned()])
                .as_deref(),
            Some("lookup \"ledger\" failed: connect error")
        );
        assert_eq!(
            a.missing(&["kyc".to_owned()]).as_deref(),
            Some("lookup \"kyc\" was not run")
        );
    }

    #[test]
    fn only_a_retry_lookup_dead_letters_the_event() {
        let a = answers();
        assert_eq!(
            a.dead_letter(),
            Some((
                "payouts",
                "lookup \"payouts\" failed: HTTP 503 Service Unavailable".to_owned()
            ))
        );
        let mut skip = a.clone();
        skip.failed.remove("payouts");
        assert_eq!(skip.dead_letter(), None);
        assert_eq!(
            a.record(),
            serde_json::json!({
                "account": {"cached": true},
                "ledger": {"error": "connect error", "on_error": "skip_rule"},
                "payouts": {"error": "HTTP 503 Service Unavailable", "on_error": "retry"},
            })
        );
    }
}
