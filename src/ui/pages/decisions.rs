//! The decisions page: newest first, filtered, a page at a time by keyset (the last row's
//! time and event key), so that page 1,000 costs what page 1 does.
//!
//! The store reads by the conditions an index serves (subject, time, dead-lettered); the
//! rule, outcome and provider filters are applied to the rows read. A filter that matches
//! few rows could otherwise read the whole table for one page, so each page reads at most
//! [`SCAN_ROWS`] rows: when it stops short, it says how far back it searched, and its next
//! link searches on from there.

use serde::Serialize;
use serde_json::Value;

use crate::ui::pages::{PAGE_ROWS, Row};
use crate::ui::query::{Cursor, DecisionFilter};
use crate::worker::decide::{EventOutcome, rfc3339_ms};
use crate::worker::state::{Browse, DecisionRecord, Store, StoreError};

/// Most rows one page reads from the store.
pub const SCAN_ROWS: usize = 5_000;
/// Rows read per round trip.
const CHUNK_ROWS: usize = 500;

/// One page of decisions.
#[derive(Debug, Serialize)]
pub struct DecisionsPage {
    /// The rows, newest first.
    pub rows: Vec<Row>,
    /// Where the next page starts, when there may be one.
    pub next: Option<String>,
    /// When the page stopped at [`SCAN_ROWS`] before it was full: the time it searched back
    /// to (RFC 3339).
    pub searched_to: Option<String>,
    /// Rows read to make the page.
    pub scanned: usize,
}

/// Reads the page `filter` asks for; `base` is the page's own path (the next link's).
///
/// # Errors
/// Store failure.
pub fn find(
    store: &dyn Store,
    filter: &DecisionFilter,
    base: &str,
) -> Result<DecisionsPage, StoreError> {
    let next_link = |cursor: &Cursor| format!("{base}?{}", filter.query(Some(cursor)));
    let mut browse = Browse {
        subject_key: filter.subject_key.clone(),
        event_key: filter.event_key.clone(),
        dead_lettered: filter.outcome == Some(EventOutcome::DeadLettered),
        from_ms: filter.from_ms,
        to_ms: filter.to_ms,
        before: filter
            .before
            .as_ref()
            .map(|c| (c.at_ms, c.event_key.clone())),
        limit: CHUNK_ROWS,
    };
    let mut rows = Vec::new();
    let mut scanned = 0;
    loop {
        let chunk = store.browse(&browse)?;
        let exhausted = chunk.len() < CHUNK_ROWS;
        scanned += chunk.len();
        let mut last = None;
        for record in chunk {
            let cursor = Cursor {
                at_ms: record.at_ms,
                event_key: record.event_key.clone(),
            };
            // Filtered on the record as read; only a kept one is made a row.
            if keeps(filter, &record) {
                rows.push(Row::from_record(record));
                if rows.len() == PAGE_ROWS {
                    return Ok(DecisionsPage {
                        rows,
                        next: Some(next_link(&cursor)),
                        searched_to: None,
                        scanned,
                    });
                }
            }
            last = Some(cursor);
        }
        let Some(last) = last.filter(|_| !exhausted) else {
            return Ok(DecisionsPage {
                rows,
                next: None,
                searched_to: None,
                scanned,
            });
        };
        if scanned >= SCAN_ROWS {
            return Ok(DecisionsPage {
                rows,
                next: Some(next_link(&last)),
                searched_to: rfc3339_ms(last.at_ms),
                scanned,
            });
        }
        browse.before = Some((last.at_ms, last.event_key));
    }
}

/// Whether `row` passes the filters the store did not apply. A rule filter keeps the
/// decisions where the rule matched, or could not be evaluated (both an analyst looks for).
fn keeps(filter: &DecisionFilter, decision: &DecisionRecord) -> bool {
    let provider = decision.event_key.split_once('/').map_or("", |(p, _)| p);
    let rule_took_part = |rule: &str| {
        let rules = decision.record.get("rules").and_then(Value::as_array);
        rules.into_iter().flatten().any(|entry| {
            entry.get("rule").and_then(Value::as_str) == Some(rule)
                && (entry.get("matched").and_then(Value::as_bool) == Some(true)
                    || entry.get("error").is_some_and(|e| !e.is_null()))
        })
    };
    filter
        .outcome
        .is_none_or(|o| o.as_str() == decision.outcome)
        && filter.provider.as_ref().is_none_or(|p| p == provider)
        && filter
            .subject_key
            .as_ref()
            .is_none_or(|s| decision.subject_key.as_ref() == Some(s))
        && filter.rule.as_deref().is_none_or(rule_took_part)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::state::{Batch, SqliteStore};
    use serde_json::json;

    /// A store of `n` decisions, a hundred to each millisecond (a batch's records share
    /// one), every third `no_match`, and the rule `rare` matched by the two given.
    fn store(n: usize, rare: &[usize]) -> (SqliteStore, std::path::PathBuf) {
        let path = std::env::temp_dir().join(format!("hw-ui-{}.db", uuid::Uuid::new_v4().simple()));
        let store = SqliteStore::open(&path).unwrap();
        let decisions = (0..n)
            .map(|i| DecisionRecord {
                event_key: format!("acme/e{i:05}"),
                subject_key: Some("acme/s".into()),
                outcome: if i % 3 == 0 { "no_match" } else { "acted" }.into(),
                record: json!({"rules": [{"rule": "rare", "matched": rare.contains(&i)}]}),
                at_ms: 1_000_000 + i64::try_from(i / 100).unwrap(),
            })
            .collect();
        store
            .commit(&Batch {
                decisions,
                ..Batch::default()
            })
            .unwrap();
        (store, path)
    }

    fn remove(path: &std::path::Path) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    /// Every page of `filter`, following the next links.
    fn pages(store: &SqliteStore, mut filter: DecisionFilter) -> Vec<DecisionsPage> {
        let mut out = Vec::new();
        loop {
            let page = find(store, &filter, "/ui/decisions").unwrap();
            let next = page.next.clone();
            out.push(page);
            let Some(next) = next else { return out };
            let query = next.split_once('?').map(|(_, q)| q).unwrap_or("");
            filter = DecisionFilter::parse(&crate::ui::query::Params::parse(Some(query))).unwrap();
        }
    }

    #[test]
    fn pages_cover_every_match_once_in_order_across_ties_and_chunks() {
        let (store, path) = store(1_300, &[]);
        let filter = DecisionFilter {
            outcome: Some(EventOutcome::NoMatch),
            ..DecisionFilter::default()
        };
        let pages = pages(&store, filter);
        let keys: Vec<String> = pages
            .iter()
            .flat_map(|p| p.rows.iter().map(|r| r.event_key.clone()))
            .collect();
        let expected: Vec<String> = (0..1_300)
            .rev()
            .filter(|i| i % 3 == 0)
            .map(|i| format!("acme/e{i:05}"))
            .collect();
        assert_eq!(keys, expected);
        assert!(pages.iter().all(|p| p.rows.len() <= PAGE_ROWS));
        remove(&path);
    }

    #[test]
    fn a_rare_match_is_searched_for_a_bounded_stretch_at_a_time() {
        let (store, path) = store(6_000, &[10, 5_990]);
        let filter = DecisionFilter {
            rule: Some("rare".into()),
            ..DecisionFilter::default()
        };
        let pages = pages(&store, filter);
        let found: Vec<Vec<&str>> = pages
            .iter()
            .map(|p| p.rows.iter().map(|r| r.event_key.as_str()).collect())
            .collect();
        assert_eq!(found, [vec!["acme/e05990"], vec!["acme/e00010"]]);
        assert_eq!(pages[0].scanned, SCAN_ROWS);
        assert!(
            pages[0].searched_to.is_some(),
            "it says how far it searched"
        );
        assert_eq!(pages[1].scanned, 1_000);
        assert!(pages[1].searched_to.is_none() && pages[1].next.is_none());
        remove(&path);
    }
}
