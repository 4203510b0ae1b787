//! Loading a config file: TOML text plus `HOOKWARDEN__…` environment overrides, merged by
//! the `config` crate, deserialized section by section so that every problem is reported at
//! once with its file, line (where known), key path and reason.

pub mod amqp;
pub mod listener;
pub mod secret;
pub mod units;
pub mod worker;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::de::{DeArray, DeTable, DeValue};

/// The environment variable prefix; `HOOKWARDEN__AMQP__URL` overrides `amqp.url`.
pub const ENV_PREFIX: &str = "HOOKWARDEN";
const ENV_SEPARATOR: &str = "__";

/// One thing wrong with a config, pinned to where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// File as the operator named it.
    pub file: String,
    /// 1-based line of the key in the file, where the key is in the file.
    pub line: Option<usize>,
    /// Key path such as `providers[1].scheme`; empty for the file as a whole.
    pub key: String,
    /// Why it is wrong, and what would be right.
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.reason)
    }
}

/// Every problem found in one config; its `Display` is one problem per line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The problems, in file order as far as it is known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Reads a config file from disk; a file that cannot be read is one problem.
///
/// # Errors
/// The file cannot be read.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|err| ConfigError {
        problems: vec![Problem {
            file: path.display().to_string(),
            line: None,
            key: String::new(),
            reason: format!("cannot read: {err}"),
        }],
    })
}

/// The process environment as a map, taken once at start-up and passed down, so that
/// parsing code and tests never read or change the real environment.
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

/// A parsed, merged config document and the problems found so far.
pub(crate) struct Document<'a> {
    file: String,
    spans: Option<toml::Spanned<DeTable<'a>>>,
    text: &'a str,
    root: HashMap<String, ::config::Value>,
    /// Dotted key path → the environment variable that set it.
    env_keys: HashMap<String, String>,
    problems: Vec<Problem>,
    env: &'a HashMap<String, String>,
}

impl<'a> Document<'a> {
    /// Parses `text` and merges the `HOOKWARDEN__…` variables of `env` over it.
    ///
    /// # Errors
    /// TOML syntax errors (with line), and environment variables that cannot apply.
    pub(crate) fn parse(
        file: &str,
        text: &'a str,
        env: &'a HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut doc = Document {
            file: file.to_owned(),
            spans: None,
            text,
            root: HashMap::new(),
            env_keys: HashMap::new(),
            problems: Vec::new(),
            env,
        };
        match DeTable::parse(text) {
            Ok(spans) => {
                // The `config` crate reads '.', '[' and ']' in a key as a path: a quoted key
                // such as "a[10000000]" would make it allocate ten million entries.
                let mut bad = Vec::new();
                path_like_keys(spans.get_ref(), &mut bad);
                for offset in bad {
                    let line = doc.line_at(offset);
                    doc.problems.push(Problem {
                        file: doc.file.clone(),
                        line: Some(line),
                        key: String::new(),
                        reason:
                            "a key may not contain '.', '[' or ']' (write nested tables instead)"
                                .to_owned(),
                    });
                }
                if !doc.problems.is_empty() {
                    return Err(doc.finish_err());
                }
                doc.spans = Some(spans);
            }
            Err(err) => {
                let line = err.span().map(|span| doc.line_at(span.start));
                doc.problems.push(Problem {
                    file: doc.file.clone(),
                    line,
                    key: String::new(),
                    reason: format!("invalid TOML: {}", err.message().trim()),
                });
                return Err(doc.finish_err());
            }
        }

        let mut overrides = HashMap::new();
        let prefix = format!("{ENV_PREFIX}{ENV_SEPARATOR}");
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(&prefix) else {
                continue;
            };
            let segments: Vec<String> = rest.split(ENV_SEPARATOR).map(str::to_lowercase).collect();
            if segments.iter().any(|s| s.is_empty()) {
                doc.problem_env(name, "names no key (empty segment)".to_owned());
            } else if segments.iter().any(|s| s.parse::<usize>().is_ok()) {
                doc.problem_env(
                    name,
                    "entries of a list cannot be overridden from the environment; \
                     reference env: or file: secrets in the file instead"
                        .to_owned(),
                );
            } else {
                doc.env_keys.insert(segments.join("."), name.clone());
                overrides.insert(rest.to_owned(), value.clone());
            }
        }

        let built = ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Toml))
            .add_source(
                ::config::Environment::with_prefix(ENV_PREFIX)
                    .prefix_separator(ENV_SEPARATOR)
                    .separator(ENV_SEPARATOR)
                    // Never rewrite strings: a secret `000123` must stay `000123`.
                    .try_parsing(false)
                    .source(Some(
                        overrides
                            .into_iter()
                            .map(|(k, v)| (format!("{prefix}{k}"), v))
                            .collect(),
                    )),
            )
            .build()
            .and_then(|c| c.try_deserialize::<HashMap<String, ::config::Value>>());
        match built {
            Ok(root) => doc.root = root,
            Err(err) => doc.problems.push(Problem {
                file: doc.file.clone(),
                line: None,
                key: String::new(),
                reason: err.to_string(),
            }),
        }
        if doc.problems.is_empty() {
            Ok(doc)
        } else {
            Err(doc.finish_err())
        }
    }

    /// Reports top-level keys that are not among `known`.
    pub(crate) fn reject_unknown_sections(&mut self, known: &[&str]) {
        let mut unknown: Vec<String> = self
            .root
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        unknown.sort();
        for key in unknown {
            let reason = format!("unknown section; expected one of {}", known.join(", "));
            let reason = self.unknown_field_from_env(&key, format!("unknown field: {reason}"));
            self.problem(&key, reason);
        }
    }

    /// Deserializes the table `key` (absent: an empty table, so defaults apply).
    pub(crate) fn section<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let value = self.root.get(key).cloned().unwrap_or_else(empty_table);
        self.deserialize(key, value)
    }

    /// Deserializes each entry of the array `key`; `None` for an entry that failed.
    pub(crate) fn list<T: DeserializeOwned>(&mut self, key: &str) -> Vec<Option<T>> {
        let Some(value) = self.root.get(key).cloned() else {
            return Vec::new();
        };
        match value.into_array() {
            Ok(entries) => entries
                .into_iter()
                .enumerate()
                .map(|(i, entry)| self.deserialize(&format!("{key}[{i}]"), entry))
                .collect(),
            Err(_) => {
                self.problem(key, format!("must be an array of tables ([[{key}]])"));
                Vec::new()
            }
        }
    }

    fn deserialize<T: DeserializeOwned>(
        &mut self,
        prefix: &str,
        value: ::config::Value,
    ) -> Option<T> {
        match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(v) => Some(v),
            Err(err) => {
                let inner = err.path().to_string();
                let key = if inner == "." || inner.is_empty() {
                    prefix.to_owned()
                } else {
                    format!("{prefix}.{inner}")
                };
                let reason = err.into_inner().to_string();
                let reason = match self.env_keys.get(&key) {
                    Some(var) => format!("{reason} (set by environment variable {var})"),
                    None => reason,
                };
                let reason = self.unknown_field_from_env(&key, reason);
                self.problem(&key, reason);
                None
            }
        }
    }

    /// An unknown field set from the environment is reported as that variable.
    fn unknown_field_from_env(&self, key: &str, reason: String) -> String {
        if !reason.starts_with("unknown field") {
            return reason;
        }
        let mut found: Vec<&String> = self
            .env_keys
            .iter()
            .filter(|(path, _)| path.as_str() == key || path.starts_with(&format!("{key}.")))
            .map(|(_, var)| var)
            .collect();
        found.sort();
        match found.first() {
            Some(var) => format!("environment variable {var} names no key: {reason}"),
            None => reason,
        }
    }

    /// Records a problem at `key` (a path such as `providers[1].scheme`).
    pub(crate) fn problem(&mut self, key: &str, reason: String) {
        let line = self.line_of(key);
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            key: key.to_owned(),
            reason,
        });
    }

    fn problem_env(&mut self, var: &str, reason: String) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line: None,
            key: String::new(),
            reason: format!("environment variable {var} {reason}"),
        });
    }

    /// The injected environment (for `env:` secrets and `$CREDENTIALS_DIRECTORY`).
    pub(crate) fn env(&self) -> &'a HashMap<String, String> {
        self.env
    }

    /// All problems, or `Ok` when there were none.
    pub(crate) fn finish(mut self) -> Result<(), ConfigError> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            self.problems.sort_by_key(|p| p.line.unwrap_or(usize::MAX));
            Err(self.finish_err())
        }
    }

    fn finish_err(self) -> ConfigError {
        ConfigError {
            problems: self.problems,
        }
    }

    /// The line of the deepest part of `key` that is present in the file.
    fn line_of(&self, key: &str) -> Option<usize> {
        let spans = self.spans.as_ref()?;
        let mut span = None;
        let mut table: Option<&DeTable<'_>> = Some(spans.get_ref());
        let mut array: Option<&DeArray<'_>> = None;
        for segment in split_path(key) {
            let found = match (segment, table, array) {
                (Segment::Key(name), Some(t), _) => t.get(name),
                (Segment::Index(i), _, Some(a)) => a.get(i),
                _ => None,
            };
            let Some(value) = found else { break };
            span = Some(value.span());
            table = None;
            array = None;
            match value.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        span.map(|s| self.line_at(s.start))
    }

    fn line_at(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }
}

/// Byte offsets of keys containing characters the `config` crate treats as path syntax.
fn path_like_keys(table: &DeTable<'_>, out: &mut Vec<usize>) {
    for (key, value) in table {
        if key.get_ref().contains(['.', '[', ']']) {
            out.push(key.span().start);
        }
        walk_value(value.get_ref(), out);
    }
}

fn walk_value(value: &DeValue<'_>, out: &mut Vec<usize>) {
    match value {
        DeValue::Table(t) => path_like_keys(t, out),
        DeValue::Array(a) => {
            for v in a.iter() {
                walk_value(v.get_ref(), out);
            }
        }
        _ => {}
    }
}

fn empty_table() -> ::config::Value {
    ::config::Value::new(None, ::config::ValueKind::Table(Default::default()))
}

enum Segment<'k> {
    Key(&'k str),
    Index(usize),
}

/// Splits `providers[1].scheme` into `providers`, `1`, `scheme`.
fn split_path(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            out.push(Segment::Key(&rest[..open]));
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    out.push(Segment::Index(i));
                }
                rest = &rest[close + 1..];
                if !rest.starts_with('[') {
                    break;
                }
            }
        } else {
            out.push(Segment::Key(rest));
        }
    }
    out
}
