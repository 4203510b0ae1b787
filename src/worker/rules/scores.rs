//! The load-time check that a rule's `when` names only scores the events it reads can carry:
//! cel would only notice a misspelt score when an evaluation reaches it.

use wildmatch::WildMatch;

use crate::config::{Document, glob};
use crate::worker::condition::Condition;
use crate::worker::subject::SubjectSpec;

/// Reports each score `when` names that no `[[subjects]]` spec reading the rule's events
/// declares: such a score is in no event the rule sees, so the name is a typo (or a missing
/// declaration) and the condition could never use it. A name some of those specs declare is
/// accepted: a rule over several providers may guard one provider's score with `has()`.
/// A rule whose events no spec reads is left alone.
pub(super) fn check_names(
    doc: &mut Document<'_>,
    key: &str,
    when: &Condition,
    events: &[(WildMatch, WildMatch)],
    subjects: &[SubjectSpec],
) {
    let names = when.score_names();
    if names.is_empty() {
        return;
    }
    let reached = reached_event_kinds(events, subjects);
    for name in names {
        // Per spec lacking the name: the event kinds it reads for this rule, and what it declares.
        let missing: Vec<(String, String)> = reached
            .iter()
            .filter(|(spec, _)| !spec.scores.iter().any(|(declared, _)| *declared == name))
            .map(|(spec, kinds)| {
                let declared: Vec<&str> = spec.scores.iter().map(|(n, _)| n.as_str()).collect();
                let declared = if declared.is_empty() {
                    "none".to_owned()
                } else {
                    declared.join(", ")
                };
                (kinds.join(", "), declared)
            })
            .collect();
        if missing.len() < reached.len() {
            continue; // declared by some spec the rule reads
        }
        let reason = match missing.as_slice() {
            [] => continue,
            [(kinds, declared)] => format!("no score {name:?} for {kinds}; declared: {declared}"),
            several => {
                let each: Vec<String> = several
                    .iter()
                    .map(|(kinds, declared)| format!("{kinds} (declared: {declared})"))
                    .collect();
                format!("no score {name:?} for {}", each.join(" or "))
            }
        };
        doc.problem(key, reason);
    }
}

/// The specs that read some event a rule's `events` match, each with its event kinds
/// (`provider:type`) that do. An event is read by the first spec matching it, so a kind an
/// earlier spec of the same provider reads in full is not reached through a later one.
fn reached_event_kinds<'s>(
    events: &[(WildMatch, WildMatch)],
    subjects: &'s [SubjectSpec],
) -> Vec<(&'s SubjectSpec, Vec<String>)> {
    let events: Vec<(&WildMatch, String)> = events
        .iter()
        .map(|(provider, event_type)| (provider, event_type.to_string()))
        .collect();
    let mut out = Vec::new();
    for (k, spec) in subjects.iter().enumerate() {
        let earlier: Vec<String> = subjects[..k]
            .iter()
            .filter(|s| s.provider == spec.provider)
            .flat_map(|s| s.types.iter().map(ToString::to_string))
            .collect();
        let earlier: Vec<&str> = earlier.iter().map(String::as_str).collect();
        let kinds: Vec<String> = spec
            .types
            .iter()
            .map(ToString::to_string)
            .filter(|spec_type| {
                events.iter().any(|(provider, event_type)| {
                    // Globs too intricate to settle are not checked: better a typo missed
                    // than a valid file refused.
                    provider.matches(&spec.provider)
                        && glob::overlap(&[event_type, spec_type], &earlier) == Some(true)
                })
            })
            .map(|spec_type| format!("{}:{spec_type}", spec.provider))
            .collect();
        if !kinds.is_empty() {
            out.push((spec, kinds));
        }
    }
    out
}
