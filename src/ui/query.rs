//! A page's query string, read into typed filters: every parameter that does not read is a
//! 400 naming it and why, never a page quietly showing something else than was asked.

use crate::ui::error::UiError;
use crate::worker::decide::EventOutcome;

/// The decoded `name=value` pairs of a query string (form encoding: `+` is a space).
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Reads `query` (the part after `?`, if any).
    pub fn parse(query: Option<&str>) -> Self {
        Self(
            form_urlencoded::parse(query.unwrap_or("").as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    /// The last value of `name`; `None` when absent or blank (an empty form field). Not
    /// trimmed: a provider's key may begin or end with a space.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.trim().is_empty())
    }
}

/// Where a page of rows, newest first, goes on from: older than this time and event key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// The last row's time, Unix milliseconds.
    pub at_ms: i64,
    /// The last row's event key.
    pub event_key: String,
}

impl Cursor {
    /// As written in a `before=` parameter: `TIME.KEY` (the key may hold dots; the time
    /// cannot).
    pub fn encode(&self) -> String {
        format!("{}.{}", self.at_ms, self.event_key)
    }

    fn decode(text: &str) -> Result<Self, UiError> {
        let bad = || UiError::BadRequest(format!("before: {text:?} is not a page position"));
        let (at, key) = text.split_once('.').ok_or_else(bad)?;
        Ok(Self {
            at_ms: at.parse().map_err(|_| bad())?,
            event_key: key.to_owned(),
        })
    }
}

/// What the decisions page (and its JSON) is asked to show.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DecisionFilter {
    /// `subject`: a subject key, `provider/subject`.
    pub subject_key: Option<String>,
    /// `event`: an event key, `provider/event_id`.
    pub event_key: Option<String>,
    /// `rule`: decisions where this rule matched (or could not be evaluated).
    pub rule: Option<String>,
    /// `outcome`.
    pub outcome: Option<EventOutcome>,
    /// `provider`.
    pub provider: Option<String>,
    /// `from`: made at or after, Unix milliseconds.
    pub from_ms: Option<i64>,
    /// `to`: made at or before, Unix milliseconds.
    pub to_ms: Option<i64>,
    /// `before`: the page goes on from here.
    pub before: Option<Cursor>,
}

impl DecisionFilter {
    /// Reads the filter from `params`. A subject or event written without its provider takes
    /// the `provider` parameter's.
    ///
    /// # Errors
    /// A parameter that does not read, naming it.
    pub fn parse(params: &Params) -> Result<Self, UiError> {
        // Names the operator types (provider, outcome, rule, times) are trimmed; keys, which
        // are the provider's, are not.
        let provider = params.get("provider").map(|p| p.trim().to_owned());
        let keyed = |name: &str, example: &str| -> Result<Option<String>, UiError> {
            let Some(value) = params.get(name) else {
                return Ok(None);
            };
            if value.contains('/') {
                return Ok(Some(value.to_owned()));
            }
            match &provider {
                Some(provider) => Ok(Some(format!("{provider}/{value}"))),
                None => Err(UiError::BadRequest(format!(
                    "{name}: write it as provider/{name} ({example}), or give provider"
                ))),
            }
        };
        let outcome = match params.get("outcome").map(str::trim) {
            None => None,
            Some(text) => Some(
                EventOutcome::ALL
                    .into_iter()
                    .find(|o| o.as_str() == text)
                    .ok_or_else(|| {
                        let known: Vec<&str> =
                            EventOutcome::ALL.iter().map(|o| o.as_str()).collect();
                        UiError::BadRequest(format!(
                            "outcome: unknown outcome {text:?}; expected one of {}",
                            known.join(", ")
                        ))
                    })?,
            ),
        };
        let from_ms = params
            .get("from")
            .map(|t| time("from", t.trim()))
            .transpose()?;
        let to_ms = params.get("to").map(|t| time("to", t.trim())).transpose()?;
        if let (Some(from), Some(to)) = (from_ms, to_ms)
            && from > to
        {
            return Err(UiError::BadRequest("from: is after to".to_owned()));
        }
        Ok(Self {
            subject_key: keyed("subject", "acme/usr_1")?,
            event_key: keyed("event", "acme/evt_1")?,
            rule: params.get("rule").map(|r| r.trim().to_owned()),
            outcome,
            provider,
            from_ms,
            to_ms,
            before: params.get("before").map(Cursor::decode).transpose()?,
        })
    }

    /// The query string that asks for this filter again, going on from `before`.
    pub fn query(&self, before: Option<&Cursor>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        let pairs = [
            ("subject", self.subject_key.clone()),
            ("event", self.event_key.clone()),
            ("rule", self.rule.clone()),
            ("outcome", self.outcome.map(|o| o.as_str().to_owned())),
            ("provider", self.provider.clone()),
            ("from", self.from_ms.and_then(form_time)),
            ("to", self.to_ms.and_then(form_time)),
            ("before", before.map(Cursor::encode)),
        ];
        for (name, value) in pairs {
            if let Some(value) = value {
                query.append_pair(name, &value);
            }
        }
        query.finish()
    }
}

/// A time as a form's `datetime-local` field sends it (`2026-12-01T06:30`, taken as UTC) or
/// as RFC 3339 (`2026-12-01T06:30:00Z`); Unix milliseconds.
fn time(name: &str, text: &str) -> Result<i64, UiError> {
    let bad = || {
        UiError::BadRequest(format!(
            "{name}: {text:?} is not a time (write 2026-12-01T06:30, UTC, or RFC 3339)"
        ))
    };
    let at = humantime::parse_rfc3339(text)
        .or_else(|_| {
            let padded = match text.len() {
                16 => format!("{text}:00"),
                _ => text.to_owned(),
            };
            humantime::parse_rfc3339_weak(&padded)
        })
        .map_err(|_| bad())?;
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())?
        .as_millis();
    i64::try_from(ms).map_err(|_| bad())
}

/// A time as the form's field shows it again (UTC; to the millisecond when it has any, so
/// that the next page's link keeps exactly the range asked for).
fn form_time(ms: i64) -> Option<String> {
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).ok()?);
    let text = match ms % 1000 {
        0 => humantime::format_rfc3339_seconds(at).to_string(),
        _ => humantime::format_rfc3339_millis(at).to_string(),
    };
    Some(text.trim_end_matches('Z').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(query: &str) -> Result<DecisionFilter, UiError> {
        DecisionFilter::parse(&Params::parse(Some(query)))
    }

    #[test]
    fn a_filter_reads_every_parameter_and_writes_itself_back() {
        let f = filter(
            "subject=usr%2B1+&provider=acme&rule=quarantine&outcome=acted\
             &from=2026-12-01T06%3A30&to=2026-12-01T07:00:00.250Z&before=1796106600000.acme%2Fe.1",
        )
        .unwrap();
        assert_eq!(
            f.subject_key.as_deref(),
            Some("acme/usr+1 "),
            "keys are not trimmed"
        );
        assert_eq!(f.outcome, Some(EventOutcome::Acted));
        assert_eq!(f.from_ms, Some(1_796_106_600_000));
        assert_eq!(f.to_ms, Some(1_796_108_400_250));
        assert_eq!(
            f.before,
            Some(Cursor {
                at_ms: 1_796_106_600_000,
                event_key: "acme/e.1".into()
            })
        );
        let again = filter(&f.query(f.before.as_ref())).unwrap();
        assert_eq!(again, f);
    }

    #[test]
    fn blank_fields_are_no_filter_and_bad_ones_are_named() {
        assert_eq!(
            filter("subject=&rule=+&outcome=").unwrap(),
            DecisionFilter::default()
        );
        let reason = |q: &str| filter(q).unwrap_err().to_string();
        assert_eq!(
            reason("outcome=won"),
            "outcome: unknown outcome \"won\"; expected one of acted, matched, no_match, \
             tripped, dead_lettered, stale, no_subject, duplicate"
        );
        assert_eq!(
            reason("subject=usr_1"),
            "subject: write it as provider/subject (acme/usr_1), or give provider"
        );
        assert_eq!(
            reason("from=yesterday"),
            "from: \"yesterday\" is not a time (write 2026-12-01T06:30, UTC, or RFC 3339)"
        );
        assert_eq!(reason("before=12"), "before: \"12\" is not a page position");
        assert_eq!(
            reason("from=2026-12-02T00:00&to=2026-12-01T00:00"),
            "from: is after to"
        );
    }
}
