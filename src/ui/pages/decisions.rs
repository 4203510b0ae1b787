//! The decisions page: newest first, filtered, a page at a time by keyset (the last row's
//! time and event key), so that page 1,000 costs what page 1 does.
//!
//! The store reads by the conditions an index serves (subject, time, dead-lettered); the
//! rule, outcome and provider filters are applied to the rows read. A filter that matches
//! few rows could otherwise read the whole table for one page, so each page reads at most
//! [`SCAN_ROWS`] rows: when it stops short, it says how far back it searched, and its next
//! link searches on from there.

use serde::Serialize;

use crate::ui::pages::{PAGE_ROWS, Row};
use crate::ui::query::{Cursor, DecisionFilter};
use crate::worker::decide::{EventOutcome, rfc3339_ms};
use crate::worker::state::{Browse, Store, StoreError};

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
    if let Some(event) = &filter.event_key {
        // One event: its record, if the other filters keep it.
        let rows: Vec<Row> = store
            .decisions(Some(event), None, 1)?
            .into_iter()
            .map(Row::from_record)
            .filter(|row| keeps(filter, row))
            .collect();
        let scanned = rows.len();
        return Ok(DecisionsPage {
            rows,
            next: None,
            searched_to: None,
            scanned,
        });
    }
    let mut browse = Browse {
        subject_key: filter.subject_key.clone(),
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
            let row = Row::from_record(record);
            if keeps(filter, &row) {
                rows.push(row);
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

/// Whether `row` passes the filters the store did not apply.
fn keeps(filter: &DecisionFilter, row: &Row) -> bool {
    filter.outcome.is_none_or(|o| o.as_str() == row.outcome)
        && filter.provider.as_ref().is_none_or(|p| *p == row.provider)
        && filter
            .subject_key
            .as_ref()
            .is_none_or(|s| row.subject_key.as_ref() == Some(s))
        && filter
            .rule
            .as_ref()
            .is_none_or(|r| row.rules.iter().any(|m| m.rule == *r))
}
