//! Reading an event as a `[[subjects]]` spec says: who it is about, its version (for
//! ordering) and its named scores, from JSON pointers into the payload.

use std::collections::BTreeMap;

use serde_json::Value;
use wildmatch::WildMatch;

/// A compiled `[[subjects]]` entry.
#[derive(Debug)]
pub struct SubjectSpec {
    /// Provider name it applies to.
    pub provider: String,
    /// Event type globs (`*`, `?`).
    pub types: Vec<WildMatch>,
    /// Pointer to the subject id.
    pub subject: String,
    /// Pointer to the version (integer or RFC 3339), if events carry one.
    pub version: Option<String>,
    /// Score name → pointer.
    pub scores: Vec<(String, String)>,
}

/// Why a spec cannot read an event; the event dead-letters with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// Nothing at the subject pointer.
    #[error("no subject at {0}")]
    Missing(String),
    /// The subject is neither a non-empty string nor a number.
    #[error("subject at {0} is not a string or a number")]
    NotAnId(String),
    /// The subject contains a NUL character, which no store keeps in a key (PostgreSQL
    /// refuses it), so it names nobody the worker could track.
    #[error("subject at {0} contains a NUL character")]
    Nul(String),
    /// The version is absent or not an integer or RFC 3339.
    #[error("version at {pointer} {reason}")]
    Version {
        /// Its pointer.
        pointer: String,
        /// What is wrong with it, as a phrase (`is missing`, …).
        reason: &'static str,
    },
    /// A score is present but not a number.
    #[error("score {name} at {pointer} is not a number")]
    ScoreNotANumber {
        /// The score's name.
        name: String,
        /// Its pointer.
        pointer: String,
    },
}

/// What an event says about its subject.
#[derive(Debug, Clone, PartialEq)]
pub struct SubjectRead {
    /// The subject id.
    pub id: String,
    /// Version as a comparable integer (RFC 3339 as Unix nanoseconds).
    pub version: Option<i64>,
    /// Named scores present in the event.
    pub scores: BTreeMap<String, f64>,
}

impl SubjectSpec {
    /// Whether this spec reads events of `provider` and `event_type`.
    pub fn matches(&self, provider: &str, event_type: &str) -> bool {
        self.provider == provider && self.types.iter().any(|g| g.matches(event_type))
    }

    /// Reads subject, version and scores from `event`.
    ///
    /// # Errors
    /// A reason naming the pointer: no subject, unusable version, a score that is not a number.
    pub fn read(&self, event: &Value) -> Result<SubjectRead, SubjectError> {
        let id = match event.pointer(&self.subject) {
            Some(Value::String(s)) if s.contains('\0') => {
                return Err(SubjectError::Nul(self.subject.clone()));
            }
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(Value::Number(n)) => n.to_string(),
            // An empty string names nobody either.
            Some(_) => return Err(SubjectError::NotAnId(self.subject.clone())),
            None => return Err(SubjectError::Missing(self.subject.clone())),
        };
        let version = match &self.version {
            None => None,
            Some(pointer) => Some(read_version(event.pointer(pointer)).map_err(|reason| {
                SubjectError::Version {
                    pointer: pointer.clone(),
                    reason,
                }
            })?),
        };
        let mut scores = BTreeMap::new();
        for (name, pointer) in &self.scores {
            match event.pointer(pointer) {
                None | Some(Value::Null) => {}
                Some(Value::Number(n)) => {
                    if let Some(f) = n.as_f64() {
                        scores.insert(name.clone(), f);
                    }
                }
                Some(_) => {
                    return Err(SubjectError::ScoreNotANumber {
                        name: name.clone(),
                        pointer: pointer.clone(),
                    });
                }
            }
        }
        Ok(SubjectRead {
            id,
            version,
            scores,
        })
    }
}

/// A version as the worker compares it: an integer as is, RFC 3339 as Unix nanoseconds.
///
/// # Errors
/// Why it is not one, as a phrase to follow the value (`is missing`, `is not an integer`).
pub fn read_version(value: Option<&Value>) -> Result<i64, &'static str> {
    match value {
        None | Some(Value::Null) => Err("is missing"),
        Some(Value::Number(n)) => n.as_i64().ok_or("is not an integer"),
        Some(Value::String(s)) => {
            if let Ok(i) = s.parse::<i64>() {
                return Ok(i);
            }
            let at = humantime::parse_rfc3339_weak(s)
                .map_err(|_| "is neither an integer nor RFC 3339")?;
            let nanos = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| "is before 1970")?
                .as_nanos();
            i64::try_from(nanos).map_err(|_| "is too far in the future")
        }
        Some(_) => Err("is neither an integer nor RFC 3339"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec() -> SubjectSpec {
        SubjectSpec {
            provider: "dregs".into(),
            types: vec![WildMatch::new("identity.*")],
            subject: "/data/identity_id".into(),
            version: Some("/data/scored_at".into()),
            scores: vec![
                ("humanity".into(), "/data/scores/humanity".into()),
                ("other".into(), "/data/nope".into()),
            ],
        }
    }

    #[test]
    fn reads_subject_version_and_scores() {
        let s = spec();
        assert!(s.matches("dregs", "identity.scored"));
        assert!(!s.matches("dregs", "tier.changed"));
        assert!(!s.matches("other", "identity.scored"));
        let e = json!({"data": {"identity_id": "usr_1", "scored_at": "2026-11-21T14:03:27.401Z", "scores": {"humanity": 22}}});
        let r = s.read(&e).unwrap();
        assert_eq!(r.id, "usr_1");
        assert_eq!(r.scores.get("humanity"), Some(&22.0));
        assert!(!r.scores.contains_key("other"));
        let later = json!({"data": {"identity_id": "usr_1", "scored_at": "2026-11-21T14:03:28Z", "scores": {}}});
        assert!(s.read(&later).unwrap().version > r.version);
        let numbered = json!({"data": {"identity_id": "usr_1", "scored_at": 1412}});
        assert_eq!(s.read(&numbered).unwrap().version, Some(1412));
    }

    #[test]
    fn missing_or_bad_fields_name_their_pointer() {
        let s = spec();
        assert_eq!(
            s.read(&json!({})).unwrap_err().to_string(),
            "no subject at /data/identity_id"
        );
        let e = json!({"data": {"identity_id": "u", "scored_at": "yesterday"}});
        assert!(
            s.read(&e)
                .unwrap_err()
                .to_string()
                .starts_with("version at /data/scored_at")
        );
        let e =
            json!({"data": {"identity_id": "u", "scored_at": 1, "scores": {"humanity": "high"}}});
        assert!(s.read(&e).unwrap_err().to_string().contains("not a number"));
        // A NUL names nobody a store can keep: refused (dead-lettered) on either backend.
        let e = json!({"data": {"identity_id": "u\0v", "scored_at": 1}});
        assert_eq!(
            s.read(&e).unwrap_err().to_string(),
            "subject at /data/identity_id contains a NUL character"
        );
    }
}
