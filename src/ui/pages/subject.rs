//! The subject page: what the worker knows of one subject now, its scores over its newest
//! [`CHART_EVENTS`] events with the marks rules and actions left, and its events a page at a
//! time, each with the decision, what its actions sent and the raw event (when archived).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::Serialize;

use crate::ui::pages::{Mark, PAGE_ROWS, Row};
use crate::ui::query::Cursor;
use crate::worker::decide::rfc3339_ms;
use crate::worker::state::{Browse, Store, StoreError};

/// Events the chart draws at most.
pub const CHART_EVENTS: usize = 500;

/// The subject page.
#[derive(Debug, Serialize)]
pub struct SubjectPage {
    /// `provider/subject`.
    pub key: String,
    /// Its state now, when the worker has seen it.
    pub state: Option<StateNow>,
    /// The chart's points, oldest first: one per event.
    pub points: Vec<Point>,
    /// The score names the chart draws, in order.
    pub score_names: Vec<String>,
    /// The events of this page, newest first.
    pub events: Vec<EventView>,
    /// Where the next page of events starts.
    pub next: Option<String>,
}

/// The subject's state as the worker holds it.
#[derive(Debug, Serialize)]
pub struct StateNow {
    /// Last accepted version.
    pub version: Option<i64>,
    /// Scores of its last event.
    pub scores: BTreeMap<String, f64>,
    /// When its last event was handled, RFC 3339.
    pub at: Option<String>,
    /// Per rule, when it last fired (RFC 3339).
    pub fired: BTreeMap<String, String>,
}

/// One event on the chart.
#[derive(Debug, Serialize)]
pub struct Point {
    /// When it was decided, Unix milliseconds.
    pub at_ms: i64,
    /// Its scores.
    pub scores: BTreeMap<String, f64>,
    /// What rules and actions did on it.
    pub marks: Vec<Mark>,
}

/// One event below the chart.
#[derive(Debug, Serialize)]
pub struct EventView {
    /// Its decision.
    #[serde(flatten)]
    pub row: Row,
    /// The raw event as received, pretty-printed; `None` when not archived (or pruned).
    pub raw: Option<String>,
    /// The scores its rules saw as `previous`: those of the subject's last event before it
    /// that changed its state (not stale, not dead-lettered); `None` when none is at hand.
    pub previous_scores: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Rows read past a page to find the scores its oldest events were compared with.
const LOOK_BACK: usize = 10;

/// Whether an event with this outcome left its scores as the subject's state (a stale or
/// dead-lettered one leaves the state as it was).
fn kept_state(outcome: &str) -> bool {
    !matches!(
        outcome,
        "stale" | "dead_lettered" | "no_subject" | "duplicate"
    )
}

/// Reads the page of `key`, its events from `before` on; `None` when the worker has neither
/// state nor decisions for it.
///
/// # Errors
/// Store failure.
pub fn find(
    store: &dyn Store,
    key: &str,
    before: Option<&Cursor>,
) -> Result<Option<SubjectPage>, StoreError> {
    let state = store.load_subjects(&[key.to_owned()])?.remove(key);
    let charted: Vec<Row> = store
        .browse(&Browse {
            subject_key: Some(key.to_owned()),
            limit: CHART_EVENTS,
            ..Browse::default()
        })?
        .into_iter()
        .map(Row::from_record)
        .collect();
    if state.is_none() && charted.is_empty() {
        return Ok(None);
    }
    // A few rows past the page, for the scores the page's oldest events were compared with.
    let wanted = PAGE_ROWS + LOOK_BACK;
    let mut listed: Vec<Row> = match before {
        // The first page is the chart's newest rows: read once.
        None => charted.iter().take(wanted).cloned().collect(),
        Some(cursor) => store
            .browse(&Browse {
                subject_key: Some(key.to_owned()),
                before: Some((cursor.at_ms, cursor.event_key.clone())),
                limit: wanted,
                ..Browse::default()
            })?
            .into_iter()
            .map(Row::from_record)
            .collect(),
    };
    // Records say what their rules read as `previous`; for older records, the scores of the
    // last state-changing event decided before (a batch's events share their time, and their
    // order within it is not known: none then).
    let previous: Vec<Option<serde_json::Map<String, serde_json::Value>>> = (0..listed.len())
        .map(|i| {
            let row = &listed[i];
            row.previous_scores.clone().or_else(|| {
                listed[i + 1..]
                    .iter()
                    .find(|older| kept_state(&older.outcome))
                    .filter(|older| older.at_ms < row.at_ms)
                    .map(|older| older.scores.clone())
            })
        })
        .collect();
    let more = listed.len() > PAGE_ROWS;
    listed.truncate(PAGE_ROWS);
    let next = more.then(|| listed.last()).flatten().map(|last| {
        let cursor = Cursor {
            at_ms: last.at_ms,
            event_key: last.event_key.clone(),
        };
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("key", key);
        query.append_pair("before", &cursor.encode());
        format!("/ui/subject?{}", query.finish())
    });
    let keys: Vec<String> = listed.iter().map(|r| r.event_key.clone()).collect();
    let mut raw: HashMap<String, String> = store
        .archived(&keys)?
        .into_iter()
        .map(|a| {
            let pretty = serde_json::from_str::<serde_json::Value>(&a.body)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(a.body);
            (a.event_key, pretty)
        })
        .collect();
    let events = listed
        .into_iter()
        .zip(previous)
        .map(|(row, previous_scores)| EventView {
            raw: raw.remove(&row.event_key),
            previous_scores,
            row,
        })
        .collect();
    let mut names = BTreeSet::new();
    let points: Vec<Point> = charted
        .iter()
        .rev()
        .map(|row| {
            let scores: BTreeMap<String, f64> = row
                .scores
                .iter()
                .filter_map(|(name, v)| Some((name.clone(), v.as_f64()?)))
                .collect();
            names.extend(scores.keys().cloned());
            Point {
                at_ms: row.at_ms,
                scores,
                marks: row.marks(),
            }
        })
        .collect();
    Ok(Some(SubjectPage {
        key: key.to_owned(),
        state: state.map(|s| StateNow {
            version: s.version,
            scores: s.scores,
            at: s.at_ms.and_then(rfc3339_ms),
            fired: s
                .fired_ms
                .into_iter()
                .filter_map(|(rule, at)| Some((rule, rfc3339_ms(at)?)))
                .collect(),
        }),
        points,
        score_names: names.into_iter().collect(),
        events,
        next,
    }))
}
