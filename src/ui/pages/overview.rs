//! The overview: the last hour at a glance. Events decided per minute and by outcome (counted
//! by the store), what each rule matched and what its actions came to (read from the newest
//! [`TALLY_ROWS`] decisions of the hour), dead letters waiting, tripped rules and silent
//! watches, each linking to the page that shows more.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ui::pages::{Mark, Row};
use crate::worker::decide::rfc3339_ms;
use crate::worker::state::{Browse, Store, StoreError, now_ms};

/// The window the overview covers.
pub const WINDOW_MS: i64 = 3_600_000;
/// Decisions read for the per-rule tallies.
pub const TALLY_ROWS: usize = 5_000;
/// Dead letters counted before the count says "at least".
const DEAD_COUNTED: usize = 1_000;

/// The overview.
#[derive(Debug, Serialize)]
pub struct Overview {
    /// The window's start, RFC 3339.
    pub since: String,
    /// The window's start, Unix milliseconds.
    pub since_ms: i64,
    /// Events decided in each minute of the window, oldest first (minutes with none left out).
    pub minutes: Vec<Minute>,
    /// Events decided in the window, by outcome.
    pub outcomes: BTreeMap<String, u64>,
    /// Events decided in the window.
    pub decided: u64,
    /// Per rule: what it did in the decisions read.
    pub rules: Vec<RuleTally>,
    /// Decisions read for `rules` (at most [`TALLY_ROWS`], the newest).
    pub tallied: usize,
    /// Events dead-lettered and not replayed since (counted up to a thousand).
    pub dead_letters: usize,
    /// Whether there are more dead letters than counted.
    pub dead_letters_more: bool,
    /// Rules whose breaker has tripped.
    pub trips: Vec<TripView>,
    /// Watches (and providers) that have gone silent.
    pub silent: Vec<Silence>,
}

/// One minute.
#[derive(Debug, Serialize)]
pub struct Minute {
    /// Its start, Unix milliseconds.
    pub at_ms: i64,
    /// Events decided in it.
    pub count: u64,
}

/// One rule's tally.
#[derive(Debug, Default, Serialize)]
pub struct RuleTally {
    /// The rule.
    pub rule: String,
    /// Events it fired on (enforced).
    pub enforced: u64,
    /// Events it matched in shadow mode.
    pub shadow: u64,
    /// Matches held by its tripped breaker.
    pub tripped: u64,
    /// Matches while cooling down.
    pub cooldown: u64,
    /// Conditions that could not be evaluated.
    pub errors: u64,
    /// Its actions that ran.
    pub actions_ok: u64,
    /// Its actions that failed.
    pub actions_failed: u64,
    /// Its decisions page.
    pub href: String,
}

/// A tripped rule.
#[derive(Debug, Serialize)]
pub struct TripView {
    /// The rule.
    pub rule: String,
    /// When it tripped, RFC 3339.
    pub at: String,
    /// Firings in its window.
    pub count: u64,
    /// Its window.
    pub per: String,
}

/// A silent watch.
#[derive(Debug, Serialize)]
pub struct Silence {
    /// `watch/NAME` or `provider/NAME`.
    pub key: String,
    /// Its last event, RFC 3339.
    pub last_seen: String,
    /// Silent since, RFC 3339.
    pub since: String,
}

/// Reads the overview.
///
/// # Errors
/// Store failure.
pub fn find(store: &dyn Store) -> Result<Overview, StoreError> {
    let since = now_ms().saturating_sub(WINDOW_MS);
    let mut minutes: BTreeMap<i64, u64> = BTreeMap::new();
    let mut outcomes = BTreeMap::new();
    for a in store.activity(since)? {
        *minutes.entry(a.minute_ms).or_default() += a.count;
        *outcomes.entry(a.outcome).or_default() += a.count;
    }
    let recent = store.browse(&Browse {
        from_ms: Some(since),
        limit: TALLY_ROWS,
        ..Browse::default()
    })?;
    let tallied = recent.len();
    let mut rules: BTreeMap<String, RuleTally> = BTreeMap::new();
    for record in recent {
        let row = Row::from_record(record);
        for mark in &row.rules {
            let tally = rules.entry(mark.rule.clone()).or_default();
            match mark.mark {
                Mark::Enforce => tally.enforced += 1,
                Mark::Shadow => tally.shadow += 1,
                Mark::Tripped => tally.tripped += 1,
                Mark::Cooldown => tally.cooldown += 1,
                Mark::Error => tally.errors += 1,
                Mark::ActionOk | Mark::ActionFailed => {}
            }
        }
        for action in &row.actions {
            let tally = rules.entry(action.rule.clone()).or_default();
            match action.outcome.as_str() {
                "ok" => tally.actions_ok += 1,
                "failed" => tally.actions_failed += 1,
                _ => {}
            }
        }
    }
    let dead = store.browse(&Browse {
        dead_lettered: true,
        limit: DEAD_COUNTED + 1,
        ..Browse::default()
    })?;
    Ok(Overview {
        since: rfc3339_ms(since).unwrap_or_default(),
        since_ms: since,
        decided: outcomes.values().sum(),
        minutes: minutes
            .into_iter()
            .map(|(at_ms, count)| Minute { at_ms, count })
            .collect(),
        outcomes,
        rules: rules
            .into_iter()
            .map(|(rule, tally)| {
                let mut query = form_urlencoded::Serializer::new(String::new());
                query.append_pair("rule", &rule);
                RuleTally {
                    href: format!("/ui/decisions?{}", query.finish()),
                    rule,
                    ..tally
                }
            })
            .collect(),
        tallied,
        dead_letters: dead.len().min(DEAD_COUNTED),
        dead_letters_more: dead.len() > DEAD_COUNTED,
        trips: store
            .trips()?
            .into_iter()
            .map(|t| TripView {
                at: rfc3339_ms(t.at_ms).unwrap_or_default(),
                per: t.per().to_string(),
                rule: t.rule,
                count: t.count,
            })
            .collect(),
        silent: store
            .seen()?
            .into_iter()
            .filter_map(|s| {
                Some(Silence {
                    since: rfc3339_ms(s.silent_since_ms?)?,
                    last_seen: rfc3339_ms(s.at_ms).unwrap_or_default(),
                    key: s.key,
                })
            })
            .collect(),
    })
}
