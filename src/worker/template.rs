//! Action parameter templates (URLs, headers, bodies, argv) compiled once per rules file with
//! minijinja in strict mode, and a cheap lazily-converted render context built from the event JSON.

use std::collections::BTreeSet;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr, Value};
use minijinja::{AutoEscape, Environment, UndefinedBehavior};

/// Longest source excerpt quoted in an error message; keeps log lines bounded.
const MAX_SNIPPET: usize = 80;

/// What a template reads of one name ([`Templates::member_refs`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MemberRefs {
    /// Its members read as `root.X`, sorted.
    pub names: Vec<String>,
    /// Whether it reads the name in some other way, so possibly any member.
    pub whole: bool,
}

/// All action templates of one rules file, compiled once at load.
///
/// `Send + Sync`: rendering takes `&self`, so one instance can be shared by all workers.
pub struct Templates {
    env: Environment<'static>,
    /// Indexed by `TemplateId`; the same strings are the template names inside `env`.
    names: Vec<String>,
}

/// Cheap handle to a template added with [`Templates::add`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TemplateId(usize);

impl Default for Templates {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Templates")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Templates {
    /// An empty set: strict about undefined variables, no auto-escaping, error spans recorded.
    pub fn new() -> Self {
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        // The default callback picks JSON/HTML escaping from the template name's extension;
        // action output is never HTML and JSON bodies use `tojson` explicitly, so escaping
        // is off for every name.
        env.set_auto_escape_callback(|_| AutoEscape::None);
        // Debug mode defaults to on only in debug builds; it is what records the byte span
        // of a failing expression, which render errors quote.
        env.set_debug(true);
        Templates {
            env,
            names: Vec::new(),
        }
    }

    /// Compiles `source`; `name` (e.g. `actions.quarantine.url`) is used in messages.
    ///
    /// Only syntax is checked here: unknown filters/tests/functions and missing variables
    /// surface at render, so the loader should also render once with a sample context.
    pub fn add(&mut self, name: &str, source: &str) -> Result<TemplateId, String> {
        if self.names.iter().any(|n| n == name) {
            // Re-adding would silently replace the template behind an existing id.
            return Err(format!("{name}: duplicate template name"));
        }
        self.env
            .add_template_owned(name.to_owned(), source.to_owned())
            .map_err(|err| describe(name, source, &err))?;
        self.names.push(name.to_owned());
        Ok(TemplateId(self.names.len() - 1))
    }

    /// The name given to [`add`](Self::add).
    pub fn name(&self, id: TemplateId) -> &str {
        self.names
            .get(id.0)
            .map_or("<unknown template>", String::as_str)
    }

    /// The compiled template behind `id`.
    fn compiled(&self, id: TemplateId) -> Option<minijinja::Template<'_, '_>> {
        self.names
            .get(id.0)
            .and_then(|name| self.env.get_template(name).ok())
    }

    /// Names `X` of all dotted `env.X` references, sorted and deduplicated.
    ///
    /// This is a static scan: references in branches that never run are listed too, which
    /// is what a load-time "is every secret defined?" check wants. Subscript forms such as
    /// `env["X"]` or `env[name]` are not seen; they still fail at render if undefined.
    pub fn env_refs(&self, id: TemplateId) -> Vec<String> {
        self.member_refs(id, "env").names
    }

    /// The members `X` of every dotted `root.X` reference (sorted, deduplicated), and
    /// whether `root` is also read otherwise (`root["X"]`, `root | items`), which may read
    /// any member. A static scan, as [`Templates::env_refs`].
    pub fn member_refs(&self, id: TemplateId, root: &str) -> MemberRefs {
        let mut refs = MemberRefs::default();
        let Some(tmpl) = self.compiled(id) else {
            return refs;
        };
        let prefix = format!("{root}.");
        let mut names = BTreeSet::new();
        for var in tmpl.undeclared_variables(true) {
            if var == root {
                refs.whole = true;
            } else if let Some(rest) = var.strip_prefix(&prefix) {
                // `env.A.b` is still a reference to member A.
                let first = rest.split('.').next().unwrap_or(rest);
                if !first.is_empty() {
                    names.insert(first.to_owned());
                }
            }
        }
        refs.names = names.into_iter().collect();
        refs
    }

    /// Every template as (name, id), in the order added.
    pub fn all(&self) -> Vec<(String, TemplateId)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), TemplateId(i)))
            .collect()
    }

    /// Top-level names the template reads that it does not set itself (`score`, `env`, ...),
    /// so the loader can reject a misspelt `scor` before any event arrives.
    pub fn undeclared(&self, id: TemplateId) -> Vec<String> {
        let Some(tmpl) = self.compiled(id) else {
            return Vec::new();
        };
        let names: BTreeSet<String> = tmpl.undeclared_variables(false).into_iter().collect();
        names.into_iter().collect()
    }

    /// Renders once with a sample `context` and reports what only a render finds (unknown
    /// filters, tests, functions, type errors); an undefined value is not reported, because
    /// the sample event lacks fields real events have.
    ///
    /// # Errors
    /// The first such problem, as a one-line reason.
    pub fn render_check(&self, id: TemplateId, context: &Value) -> Result<(), String> {
        match self.render_raw(id, context) {
            Ok(_) => Ok(()),
            Err(Some(err)) if err.kind() == minijinja::ErrorKind::UndefinedError => Ok(()),
            Err(Some(err)) => {
                let name = self.name(id).to_owned();
                let source = self
                    .env
                    .get_template(&name)
                    .map(|t| t.source().to_owned())
                    .unwrap_or_default();
                Err(describe(&name, &source, &err))
            }
            Err(None) => Err(format!("template id {} does not exist", id.0)),
        }
    }

    fn render_raw(
        &self,
        id: TemplateId,
        context: &Value,
    ) -> Result<String, Option<minijinja::Error>> {
        let name = self.names.get(id.0).ok_or(None)?;
        let tmpl = self.env.get_template(name).map_err(Some)?;
        tmpl.render(context).map_err(Some)
    }

    /// Renders with `context` (see [`context`]); the error names the template and quotes the
    /// failing expression.
    pub fn render(&self, id: TemplateId, context: &Value) -> Result<String, String> {
        let name = self
            .names
            .get(id.0)
            .ok_or_else(|| format!("template id {} does not exist", id.0))?;
        let tmpl = self
            .env
            .get_template(name)
            .map_err(|err| describe(name, "", &err))?;
        tmpl.render(context)
            .map_err(|err| describe(name, tmpl.source(), &err))
    }
}

/// One-line message: `name: reason in "snippet" (line L, column C)`.
fn describe(name: &str, source: &str, err: &minijinja::Error) -> String {
    let mut msg = format!("{name}: {}", reason(err));
    let range = err.range().filter(|r| {
        r.start <= r.end && source.is_char_boundary(r.start) && source.is_char_boundary(r.end)
    });
    match range.filter(|r| r.end <= source.len()) {
        Some(range) => {
            let snippet = enclosing_tag(source, range.clone());
            let (line, column) = line_column(source, range.start);
            msg.push_str(&format!(
                " in \"{}\" (line {line}, column {column})",
                shorten(snippet)
            ));
        }
        None => {
            if let Some(line) = err.line() {
                msg.push_str(&format!(" (line {line})"));
            }
        }
    }
    // Nested causes (e.g. a filter's own error) carry the useful part of some messages.
    let mut cause = std::error::Error::source(err);
    while let Some(c) = cause {
        msg.push_str(&format!(": {c}"));
        cause = c.source();
    }
    msg.replace(['\n', '\r'], " ")
}

fn reason(err: &minijinja::Error) -> String {
    use minijinja::ErrorKind;
    let kind = match err.kind() {
        // The kind's own text ("undefined value") is what the spec'd message uses.
        ErrorKind::UndefinedError => "undefined value".to_owned(),
        other => other.to_string(),
    };
    match err.detail() {
        Some(detail) => format!("{kind}: {detail}"),
        None => kind,
    }
}

/// Widens an expression span to the `{{ … }}` / `{% … %}` tag around it when that tag is on
/// one line, since the tag is what the author wrote and will search for.
fn enclosing_tag(source: &str, range: std::ops::Range<usize>) -> &str {
    let before = &source[..range.start];
    let after = &source[range.end..];
    let open = match (before.rfind("{{"), before.rfind("{%")) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let close = match (after.find("}}"), after.find("%}")) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if let (Some(open), Some(close)) = (open, close) {
        let end = range.end + close + 2;
        let tag = &source[open..end];
        // Reject widening that crosses another tag or a line: then the span alone is clearer.
        let inner = &tag[2..tag.len() - 2];
        if !tag.contains('\n') && !inner.contains("}}") && !inner.contains("%}") {
            return tag;
        }
    }
    &source[range]
}

fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let before = &source[..offset];
    let line = before.matches('\n').count() + 1;
    let column = before
        .rfind('\n')
        .map_or(before, |nl| &before[nl + 1..])
        .chars()
        .count()
        + 1;
    (line, column)
}

fn shorten(s: &str) -> String {
    if s.chars().count() <= MAX_SNIPPET {
        s.to_owned()
    } else {
        let head: String = s.chars().take(MAX_SNIPPET).collect();
        format!("{head}…")
    }
}

/// Builds a render context from a JSON value in O(1).
///
/// Choice: the JSON is *not* converted up front (that would copy the whole webhook payload
/// for every event). Instead the returned value is a minijinja object that shares `base` via
/// the `Arc` and converts only what a template actually touches: containers become further
/// lazy views, scalars become plain values. Attribute/index access, iteration, `length`,
/// `items()`, `in` and `tojson` all work as for a converted map. `base` should be a JSON
/// object (its keys become the top-level variables). To add non-JSON variables, merge with
/// `minijinja::context! { extra => …, ..context(base) }`.
pub fn context(base: Arc<serde_json::Value>) -> Value {
    JsonView::wrap(base, Arc::from(Vec::new()))
}

/// One path step from the root of the shared JSON document.
#[derive(Debug, Clone)]
enum Step {
    Key(Arc<str>),
    Index(usize),
}

/// A lazy view of the node at `path` inside `root`.
#[derive(Debug)]
struct JsonView {
    root: Arc<serde_json::Value>,
    path: Arc<[Step]>,
}

impl JsonView {
    fn node(&self) -> Option<&serde_json::Value> {
        self.path
            .iter()
            .try_fold(&*self.root, |node, step| match (node, step) {
                (serde_json::Value::Object(map), Step::Key(k)) => map.get(&**k),
                (serde_json::Value::Array(items), Step::Index(i)) => items.get(*i),
                _ => None,
            })
    }

    /// Value for the node at `path`; the node must exist (callers found it first).
    fn wrap(root: Arc<serde_json::Value>, path: Arc<[Step]>) -> Value {
        let view = JsonView { root, path };
        match view.node() {
            Some(serde_json::Value::Object(_) | serde_json::Value::Array(_)) => {
                Value::from_object(view)
            }
            Some(scalar) => scalar_value(scalar),
            None => Value::UNDEFINED,
        }
    }

    fn child(&self, step: Step) -> Value {
        let mut path = Vec::with_capacity(self.path.len() + 1);
        path.extend(self.path.iter().cloned());
        path.push(step);
        JsonView::wrap(self.root.clone(), path.into())
    }
}

fn scalar_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::from(()),
        serde_json::Value::Bool(b) => Value::from(*b),
        serde_json::Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                Value::from(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        serde_json::Value::String(s) => Value::from(s.as_str()),
        // Containers are handled by `JsonView::wrap`; keep this total anyway.
        other => Value::from(minijinja::value::Serde(other)),
    }
}

impl Object for JsonView {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        match self.node() {
            Some(serde_json::Value::Array(_)) => ObjectRepr::Seq,
            _ => ObjectRepr::Map,
        }
    }

    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        match self.node()? {
            serde_json::Value::Object(map) => {
                let k = key.as_str()?;
                map.contains_key(k).then(|| self.child(Step::Key(k.into())))
            }
            serde_json::Value::Array(items) => {
                let i = key.as_usize()?;
                (i < items.len()).then(|| self.child(Step::Index(i)))
            }
            _ => None,
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        match self.node() {
            Some(serde_json::Value::Object(map)) => {
                Enumerator::Values(map.keys().map(|k| Value::from(k.as_str())).collect())
            }
            Some(serde_json::Value::Array(items)) => Enumerator::Seq(items.len()),
            _ => Enumerator::Empty,
        }
    }

    fn enumerator_len(self: &Arc<Self>) -> Option<usize> {
        match self.node() {
            Some(serde_json::Value::Object(map)) => Some(map.len()),
            Some(serde_json::Value::Array(items)) => Some(items.len()),
            _ => Some(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(v: serde_json::Value) -> Value {
        context(Arc::new(v))
    }

    #[test]
    fn is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<Templates>();
        check::<TemplateId>();
    }

    #[test]
    fn json_body_with_quotes_renders_valid_json() {
        let mut t = Templates::new();
        // A name ending in .json would enable JSON autoescaping by default; prove it is off.
        let id = t
            .add(
                "actions.quarantine.body.json",
                r#"{"rule": {{ rule | tojson }}, "humanity": {{ score.humanity }}, "s": "{{ plain }}"}"#,
            )
            .unwrap();
        let rule = r#"block "bad" bots \ and </script>"#;
        let out = t
            .render(
                id,
                &ctx(json!({"rule": rule, "score": {"humanity": 0.25}, "plain": "x"})),
            )
            .unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(parsed, json!({"rule": rule, "humanity": 0.25, "s": "x"}));
    }

    #[test]
    fn missing_variable_error_quotes_snippet() {
        let mut t = Templates::new();
        let id = t
            .add("actions.quarantine.body", "a\n{{ scor.humanity }}")
            .unwrap();
        let err = t
            .render(id, &ctx(json!({"score": {"humanity": 1}})))
            .unwrap_err();
        assert!(
            err.starts_with("actions.quarantine.body: undefined value"),
            "{err}"
        );
        assert!(err.contains(r#"in "{{ scor.humanity }}""#), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(!err.contains('\n'), "{err}");

        // A missing nested key is an error too, not an empty string.
        let id = t.add("nested", "{{ score.nope }}").unwrap();
        let err = t
            .render(id, &ctx(json!({"score": {"humanity": 1}})))
            .unwrap_err();
        assert!(err.contains(r#""{{ score.nope }}""#), "{err}");
    }

    #[test]
    fn env_refs_lists_env_names() {
        let mut t = Templates::new();
        let id = t
            .add(
                "actions.quarantine.headers.authorization",
                "Bearer {{ env.TOKEN }}{% if rule %}{{ env.OTHER.part }}{% endif %}{{ env.TOKEN }}{{ rule }}",
            )
            .unwrap();
        assert_eq!(t.env_refs(id), vec!["OTHER".to_owned(), "TOKEN".to_owned()]);
        let plain = t.add("plain", "{{ rule }}").unwrap();
        assert!(t.env_refs(plain).is_empty());
    }

    #[test]
    fn member_refs_list_dotted_members_and_say_when_the_whole_name_is_read() {
        let mut t = Templates::new();
        let dotted = t
            .add(
                "a",
                "{{ enrich.account.age_days }} {{ enrich.ledger }} {{ event.x }}",
            )
            .unwrap();
        assert_eq!(
            t.member_refs(dotted, "enrich"),
            MemberRefs {
                names: vec!["account".to_owned(), "ledger".to_owned()],
                whole: false
            }
        );
        let whole = t
            .add(
                "b",
                "{% for name, answer in enrich | items %}{{ name }}{% endfor %}",
            )
            .unwrap();
        assert!(t.member_refs(whole, "enrich").whole);
        let none = t.add("c", "{{ rule }}").unwrap();
        assert_eq!(t.member_refs(none, "enrich"), MemberRefs::default());
    }

    #[test]
    fn env_merged_into_context_renders() {
        let mut t = Templates::new();
        let id = t
            .add("auth", "Bearer {{ env.TOKEN }} for {{ rule }}")
            .unwrap();
        let base = ctx(json!({"rule": "r1"}));
        let c = minijinja::context! { env => minijinja::context! { TOKEN => "s3cr3t" }, ..base };
        assert_eq!(t.render(id, &c).unwrap(), "Bearer s3cr3t for r1");
    }

    #[test]
    fn unknown_filter_found_by_sample_render() {
        let mut t = Templates::new();
        // Compiles fine: filters are resolved only when rendered.
        let id = t.add("actions.x.url", "{{ rule | shout }}").unwrap();
        let err = t.render(id, &ctx(json!({"rule": "r"}))).unwrap_err();
        assert!(err.contains("unknown filter"), "{err}");
        assert!(err.contains(r#""{{ rule | shout }}""#), "{err}");
    }

    #[test]
    fn syntax_error_has_position() {
        let mut t = Templates::new();
        let err = t.add("actions.x.body", "ok\n{% for x in %}").unwrap_err();
        assert!(err.starts_with("actions.x.body: syntax error"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("column"), "{err}");
    }

    #[test]
    fn duplicate_name_rejected() {
        let mut t = Templates::new();
        let a = t.add("a", "1").unwrap();
        assert!(t.add("a", "2").unwrap_err().contains("duplicate"));
        assert_eq!(t.render(a, &ctx(json!({}))).unwrap(), "1");
    }

    #[test]
    fn lazy_context_behaves_like_converted_json() {
        let mut t = Templates::new();
        let id = t
            .add(
                "ops",
                "{{ tags[-1] }}|{{ tags | length }}|{{ 'a' in tags }}|{{ obj | tojson }}|\
                 {% for k, v in obj | items %}{{ k }}={{ v }};{% endfor %}|{{ obj.y[1] + 1 }}|\
                 {{ n is none }}|{{ big }}|{{ tags == ['a', 'b'] }}",
            )
            .unwrap();
        let out = t
            .render(
                id,
                &ctx(
                    json!({"tags": ["a", "b"], "obj": {"x": 1, "y": [1, 2]}, "n": null,
                            "big": u64::MAX}),
                ),
            )
            .unwrap();
        assert_eq!(
            out,
            format!(
                "b|2|True|{{\"x\": 1, \"y\": [1, 2]}}|x=1;y=[1, 2];|3|True|{}|True",
                u64::MAX
            )
        );
    }
}
