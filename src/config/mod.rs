//! Loading a config file: TOML text plus `HOOKWARDEN__…` environment overrides, merged by
//! the `config` crate, deserialized section by section so that every problem is reported at
//! once with its file, line (where known), key path and reason.

pub mod amqp;
pub(crate) mod glob;
pub mod log;
pub mod secret;
pub mod telemetry;
pub mod units;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::de::DeserializeOwned;
use toml::de::{DeArray, DeTable, DeValue};

/// The environment variable prefix; `HOOKWARDEN__AMQP__URL` overrides `amqp.url`.
pub const ENV_PREFIX: &str = "HOOKWARDEN";
const ENV_SEPARATOR: &str = "__";

/// Which daemon a config file is for. Each has top-level sections the other lacks, which
/// tell a file given to the wrong daemon apart from a file with mistakes in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// `listener.toml`, read by `hookwarden-listener`.
    Listener,
    /// The rules file, read by `hookwarden-worker`.
    Worker,
}

impl ConfigKind {
    /// What operators call such a file.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Listener => "listener config",
            Self::Worker => "worker rules file",
        }
    }

    /// Every top-level section this kind of file may have.
    pub fn sections(self) -> &'static [&'static str] {
        match self {
            Self::Listener => &[
                "server",
                "amqp",
                "dedupe",
                "log",
                "telemetry",
                "spool",
                "providers",
            ],
            Self::Worker => &[
                "amqp",
                "server",
                "state",
                "archive",
                "log",
                "telemetry",
                "subjects",
                "rules",
                "actions",
                "lists",
                "enrich",
                "watch",
                "ui",
            ],
        }
    }

    /// The sections only this kind has (`server`, `amqp`, `log` and `telemetry` are in both).
    fn own_sections(self) -> &'static [&'static str] {
        match self {
            Self::Listener => &["providers", "dedupe", "spool"],
            Self::Worker => &[
                "subjects", "rules", "actions", "state", "archive", "lists", "enrich", "watch",
                "ui",
            ],
        }
    }

    fn other(self) -> Self {
        match self {
            Self::Listener => Self::Worker,
            Self::Worker => Self::Listener,
        }
    }

    /// The daemon that reads this kind of file, and its name in prose.
    fn daemon(self) -> (&'static str, &'static str) {
        match self {
            Self::Listener => ("hookwarden-listener", "the listener"),
            Self::Worker => ("hookwarden-worker", "the worker"),
        }
    }
}

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
    /// The `HOOKWARDEN__…` variable at fault, when the problem is in the environment rather
    /// than in the file: it is then shown under the variable's name alone, since no line of
    /// the file is to blame.
    pub variable: Option<String>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(variable) = &self.variable {
            return write!(f, "environment variable {variable}: {}", self.reason);
        }
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
            variable: None,
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
    kind: ConfigKind,
    spans: Option<toml::Spanned<DeTable<'a>>>,
    text: &'a str,
    root: HashMap<String, ::config::Value>,
    /// Dotted key path → the environment variable that set it.
    env_keys: HashMap<String, String>,
    problems: Vec<Problem>,
    env: &'a HashMap<String, String>,
}

impl<'a> Document<'a> {
    /// Parses `text`, a `kind` file, and merges the `HOOKWARDEN__…` variables of `env` over it.
    ///
    /// # Errors
    /// TOML syntax errors (with line), a file of the other kind (that alone), and environment
    /// variables that cannot apply.
    pub(crate) fn parse(
        file: &str,
        text: &'a str,
        env: &'a HashMap<String, String>,
        kind: ConfigKind,
    ) -> Result<Self, ConfigError> {
        let mut doc = Document {
            file: file.to_owned(),
            kind,
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
                        variable: None,
                    });
                }
                if !doc.problems.is_empty() {
                    return Err(doc.finish_err());
                }
                // Checked against the wrong daemon's keys, every section of such a file would
                // be a problem of its own; the one problem is which daemon it was given to.
                if let Some(reason) = doc.other_kind(spans.get_ref()) {
                    doc.problems.push(Problem {
                        file: doc.file.clone(),
                        line: None,
                        key: String::new(),
                        reason,
                        variable: None,
                    });
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
                    variable: None,
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
                doc.problem_env(name, "", "names no key (empty segment)".to_owned());
            } else if segments.iter().any(|s| s.parse::<usize>().is_ok()) {
                doc.problem_env(
                    name,
                    "",
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
                variable: None,
            }),
        }
        if doc.problems.is_empty() {
            Ok(doc)
        } else {
            Err(doc.finish_err())
        }
    }

    /// Why `table`, the file's top level, looks like the other kind of file: it has sections
    /// only that kind has and none only this kind has. `None` when it does not.
    fn other_kind(&self, table: &DeTable<'_>) -> Option<String> {
        let has = |name: &&str| table.contains_key(*name);
        if self.kind.own_sections().iter().any(has) {
            return None;
        }
        let other = self.kind.other();
        let mut found: Vec<(usize, String)> = table
            .iter()
            .filter(|(key, _)| other.own_sections().contains(&key.get_ref().as_ref()))
            .map(|(key, value)| {
                let header = match value.get_ref() {
                    DeValue::Array(_) => format!("[[{}]]", key.get_ref()),
                    _ => format!("[{}]", key.get_ref()),
                };
                (key.span().start, header)
            })
            .collect();
        if found.is_empty() {
            return None;
        }
        found.sort();
        let headers: Vec<String> = found.into_iter().map(|(_, header)| header).collect();
        let (command, daemon) = other.daemon();
        Some(format!(
            "this looks like a {}, not a {} (it has {}); {daemon} takes it: {command} --config {}",
            other.describe(),
            self.kind.describe(),
            headers.join(", "),
            self.file,
        ))
    }

    /// Reports top-level keys that are not sections of this kind of file.
    pub(crate) fn reject_unknown_sections(&mut self) {
        let known = self.kind.sections();
        let mut unknown: Vec<String> = self
            .root
            .keys()
            .filter(|k| !known.contains(&k.as_str()))
            .cloned()
            .collect();
        unknown.sort();
        let expected = format!("expected one of {}", known.join(", "));
        for key in unknown {
            let variable = (!self.in_file(&key))
                .then(|| self.variable_under(&key))
                .flatten();
            let other = self.kind.other();
            let elsewhere = other.own_sections().contains(&key.as_str());
            match variable {
                Some(variable) => {
                    let section = match elsewhere {
                        true => format!("`{key}` is a section of the {}", other.describe()),
                        false => format!("unknown section `{key}`"),
                    };
                    let reason = format!(
                        "names no key of the {} ({section}; {expected})",
                        self.kind.describe()
                    );
                    self.problem_env(&variable, &key, reason);
                }
                None if elsewhere => {
                    let reason = format!(
                        "a section of the {}, not of the {}; {expected}",
                        other.describe(),
                        self.kind.describe()
                    );
                    self.problem_in_file(&key, reason);
                }
                None => self.problem_in_file(&key, format!("unknown section; {expected}")),
            }
        }
    }

    /// Deserializes the table `key` (absent: an empty table, so defaults apply).
    pub(crate) fn section<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let value = self.root.get(key).cloned().unwrap_or_else(empty_table);
        self.deserialize_at(key, value)
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
                .map(|(i, entry)| self.deserialize_at(&format!("{key}[{i}]"), entry))
                .collect(),
            Err(_) => {
                self.problem(key, format!("must be an array of tables ([[{key}]])"));
                Vec::new()
            }
        }
    }

    /// Deserializes `value`, the table at `prefix`; `None` after reporting why not.
    pub(crate) fn deserialize_at<T: DeserializeOwned>(
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
                // A value a variable set is that variable's; so is an unknown field the file
                // does not spell (the variable's typo).
                let unknown = reason.starts_with("unknown field");
                let variable = match unknown {
                    true if self.in_file(&key) => None,
                    true => self.variable_under(&key),
                    false => self.env_keys.get(&key).cloned(),
                };
                match variable {
                    Some(variable) if unknown => {
                        let reason =
                            format!("names no key of the {} ({reason})", self.kind.describe());
                        self.problem_env(&variable, &key, reason);
                    }
                    Some(variable) => self.problem_env(&variable, &key, reason),
                    None => self.problem_in_file(&key, reason),
                }
                None
            }
        }
    }

    /// The first (by name) variable that sets `key` or a key below it.
    fn variable_under(&self, key: &str) -> Option<String> {
        let below = format!("{key}.");
        self.env_keys
            .iter()
            .filter(|(path, _)| path.as_str() == key || path.starts_with(&below))
            .map(|(_, variable)| variable)
            .min()
            .cloned()
    }

    /// Records a problem at `key` (a path such as `providers[1].scheme`); a key whose value
    /// came from the environment is reported as that variable.
    pub(crate) fn problem(&mut self, key: &str, reason: String) {
        match self.env_keys.get(key).cloned() {
            Some(variable) => self.problem_env(&variable, key, reason),
            None => self.problem_in_file(key, reason),
        }
    }

    /// Records a problem at `key` in the file, at the line of its deepest part written there.
    fn problem_in_file(&mut self, key: &str, reason: String) {
        let line = self.line_of(key);
        self.problems.push(Problem {
            file: self.file.clone(),
            line,
            key: key.to_owned(),
            reason,
            variable: None,
        });
    }

    /// Records a problem in the environment variable `variable` (setting `key`, if it names one).
    fn problem_env(&mut self, variable: &str, key: &str, reason: String) {
        self.problems.push(Problem {
            file: self.file.clone(),
            line: None,
            key: key.to_owned(),
            reason,
            variable: Some(variable.to_owned()),
        });
    }

    /// The file's name as given (paths it names are relative to its directory).
    pub(crate) fn file(&self) -> &str {
        &self.file
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
        self.offset_of(key).map(|offset| self.line_at(offset))
    }

    /// The byte offset of the deepest part of `key` that is present in the file.
    pub(crate) fn offset_of(&self, key: &str) -> Option<usize> {
        self.find(key).map(|(offset, _)| offset)
    }

    /// Whether `key` itself, not just a table above it, is written in the file.
    fn in_file(&self, key: &str) -> bool {
        self.find(key).is_some_and(|(_, whole)| whole)
    }

    /// The offset of the deepest part of `key` present in the file, and whether that is all of it.
    fn find(&self, key: &str) -> Option<(usize, bool)> {
        let spans = self.spans.as_ref()?;
        let mut whole = true;
        let mut span = None;
        let mut table: Option<&DeTable<'_>> = Some(spans.get_ref());
        let mut array: Option<&DeArray<'_>> = None;
        for segment in split_path(key) {
            let found = match (segment, table, array) {
                (Segment::Key(name), Some(t), _) => t.get(name),
                (Segment::Index(i), _, Some(a)) => a.get(i),
                _ => None,
            };
            let Some(value) = found else {
                whole = false;
                break;
            };
            span = Some(value.span());
            table = None;
            array = None;
            match value.get_ref() {
                DeValue::Table(t) => table = Some(t),
                DeValue::Array(a) => array = Some(a),
                _ => {}
            }
        }
        span.map(|s| (s.start, whole))
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
