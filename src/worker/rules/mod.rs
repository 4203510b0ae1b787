//! The compiled rules of a worker's rules file: `[[subjects]]`, `[[rules]]` and
//! `[actions.*]`, with every CEL condition, template, glob and duration compiled at load so
//! nothing is parsed per event, and every problem reported at once with its key
//! (`rules[2].when: undeclared reference`). [`crate::worker::decide`] reads them.

mod scores;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::Deserialize;
use wildmatch::WildMatch;

use crate::config::Document;
use crate::worker::action::{self, Kind};
use crate::worker::condition::Condition;
use crate::worker::enrich::{self, Lookup};
use crate::worker::facts::{Name, Sample};
use crate::worker::lists::Lists;
use crate::worker::subject::SubjectSpec;
use crate::worker::template::{MemberRefs, Templates};

/// Whether a rule acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Evaluate and act.
    Enforce,
    /// Evaluate and record what would have happened; never act.
    Shadow,
}

impl Mode {
    /// `enforce` or `shadow`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Shadow => "shadow",
        }
    }
}

/// A compiled rule.
pub struct Rule {
    /// Unique name (metrics label, idempotency key part).
    pub name: String,
    /// `provider:type` globs, split.
    pub events: Vec<(WildMatch, WildMatch)>,
    /// The `when` condition.
    pub when: Condition,
    /// Indexes into [`Rules::actions`].
    pub actions: Vec<usize>,
    /// Minimum time between firings for one subject.
    pub cooldown: Option<Duration>,
    /// Enforce or shadow.
    pub mode: Mode,
    /// Its breaker: at most this many firings that act in a sliding window, across every
    /// subject and worker; past it the rule trips.
    pub limit: Option<Limit>,
    /// Indexes into [`Rules::actions`]: run once when the rule trips.
    pub on_trip: Vec<usize>,
    /// The lookups its condition and its actions' templates read (`enrich.NAME`), sorted:
    /// run before it is evaluated.
    pub enrich: Vec<String>,
}

/// A rule's breaker (`limit = { actions = 100, per = "10m" }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Firings that act allowed in the window (each runs all the rule's actions).
    pub actions: u64,
    /// The sliding window.
    #[serde(with = "humantime_serde")]
    pub per: Duration,
}

impl Rule {
    /// Whether the rule applies to events of `provider` and `event_type`.
    pub fn applies(&self, provider: &str, event_type: &str) -> bool {
        self.events
            .iter()
            .any(|(p, t)| p.matches(provider) && t.matches(event_type))
    }
}

/// A compiled action.
pub struct Action {
    /// Its name in `[actions.NAME]`.
    pub name: String,
    /// What it does.
    pub kind: Box<dyn Kind>,
    /// How fast and how many at once it may be sent (`rate`, `concurrency`).
    pub pace: action::Pace,
}

/// Everything a rules file says about deciding and acting.
#[derive(Default)]
pub struct Rules {
    /// `[[subjects]]`, in file order (the first that matches an event reads it).
    pub subjects: Vec<SubjectSpec>,
    /// `[[rules]]`, in file order.
    pub rules: Vec<Rule>,
    /// `[actions.*]`; rules refer to them by index.
    pub actions: Vec<Action>,
    /// Every action template, compiled.
    pub templates: Templates,
    /// The environment variables templates reference as `env.NAME`, read at load.
    pub template_env: BTreeMap<String, String>,
    /// `[lists.*]`, read at load.
    pub lists: Lists,
    /// `[[watch]]`: silence watches.
    pub watches: Vec<crate::worker::watch::Watch>,
    /// `[enrich.*]`: lookups, in name order.
    pub lookups: Vec<Lookup>,
}

impl Rules {
    /// Compiles the `[[subjects]]`, `[[rules]]` and `[actions.*]` of `doc`, reporting every
    /// problem to it; `review_queue` is where `amqp` actions publish by default.
    pub(crate) fn compile(
        doc: &mut Document<'_>,
        env: &HashMap<String, String>,
        review_queue: &str,
    ) -> Self {
        let raw_subjects: Vec<Option<RawSubject>> = doc.list("subjects");
        let raw_rules: Vec<Option<RawRule>> = doc.list("rules");
        let raw_actions: Option<BTreeMap<String, ::config::Value>> = doc.section("actions");

        let subjects = build_subjects(doc, raw_subjects);
        let lists = Lists::load(doc);
        let score_names: BTreeSet<String> = subjects
            .iter()
            .flat_map(|s| s.scores.iter().map(|(n, _)| n.clone()))
            .collect();

        let mut templates = Templates::new();
        let lookups = enrich::compile(doc, &mut templates);
        let mut actions = Vec::new();
        for (name, table) in raw_actions.unwrap_or_default() {
            let key = format!("actions.{name}");
            if let Some((kind, pace)) =
                action::compile(doc, &key, table, &mut templates, review_queue)
            {
                actions.push(Action { name, kind, pace });
            }
        }
        let lookup_names: Vec<&str> = lookups.iter().map(|l| l.name.as_str()).collect();
        let template_env = check_templates(doc, &templates, env, &score_names, &lookup_names);
        let watches = crate::worker::watch::compile(doc, &actions);
        let reads = action_lookups(&actions, &templates, &lookup_names);
        check_watch_lookups(doc, &watches, &actions, &reads);

        let mut rules = Vec::new();
        let mut names = BTreeSet::new();
        for (i, raw) in raw_rules.into_iter().enumerate() {
            let Some(raw) = raw else { continue };
            let key = format!("rules[{i}]");
            if !names.insert(raw.name.clone()) {
                doc.problem(
                    &format!("{key}.name"),
                    format!("rule {:?} is defined twice", raw.name),
                );
            }
            let known = Known {
                actions: &actions,
                subjects: &subjects,
                score_names: &score_names,
                lists: &lists,
                lookups: &lookup_names,
                reads: &reads,
            };
            if let Some(rule) = build_rule(doc, &key, raw, &known) {
                rules.push(rule);
            }
        }
        Rules {
            subjects,
            rules,
            actions,
            templates,
            template_env,
            lists,
            watches,
            lookups,
        }
    }

    /// Whether an enforcing rule that applies to events of `provider` and `event_type` reads
    /// the lookup `name`: only then may its failure (`on_error = "retry"`) hold the event.
    pub fn enforced_reads(&self, name: &str, provider: &str, event_type: &str) -> bool {
        self.rules.iter().any(|r| {
            r.mode == Mode::Enforce
                && r.enrich.iter().any(|n| n == name)
                && r.applies(provider, event_type)
        })
    }

    /// The lookups (indexes into [`Rules::lookups`]) that the rules applying to events of
    /// `provider` and `event_type` read, each once.
    pub fn lookups_for(&self, provider: &str, event_type: &str) -> Vec<usize> {
        if self.lookups.is_empty() {
            return Vec::new();
        }
        let mut needed: Vec<usize> = self
            .rules
            .iter()
            .filter(|r| !r.enrich.is_empty() && r.applies(provider, event_type))
            .flat_map(|r| r.enrich.iter())
            .filter_map(|name| self.lookups.iter().position(|l| &l.name == name))
            .collect();
        needed.sort_unstable();
        needed.dedup();
        needed
    }

    /// The first subject spec that reads events of `provider` and `event_type`.
    pub fn subject_spec(&self, provider: &str, event_type: &str) -> Option<&SubjectSpec> {
        self.subjects
            .iter()
            .find(|s| s.matches(provider, event_type))
    }

    /// A line per subject spec and rule, for `--check`.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for s in &self.subjects {
            out.push_str(&format!(
                "subjects: provider {:?}, subject {}, {} score(s)\n",
                s.provider,
                s.subject,
                s.scores.len()
            ));
        }
        for r in &self.rules {
            let actions: Vec<&str> = r
                .actions
                .iter()
                .map(|&i| self.actions[i].name.as_str())
                .collect();
            out.push_str(&format!(
                "rule {:?} ({}): when {} → {}{}\n",
                r.name,
                r.mode.as_str(),
                r.when.source(),
                actions.join(", "),
                r.cooldown
                    .map(|c| format!(", cooldown {}", humantime::format_duration(c)))
                    .unwrap_or_default()
                    + &r.limit
                        .map(|l| format!(
                            ", at most {} per {}",
                            l.actions,
                            humantime::format_duration(l.per)
                        ))
                        .unwrap_or_default()
            ));
        }
        for l in &self.lookups {
            let readers: Vec<&str> = self
                .rules
                .iter()
                .filter(|r| r.enrich.contains(&l.name))
                .map(|r| r.name.as_str())
                .collect();
            out.push_str(&format!(
                "lookup {:?}: {}; read by {}\n",
                l.name,
                l.describe(),
                if readers.is_empty() {
                    "no rule (never run)".to_owned()
                } else {
                    readers.join(", ")
                }
            ));
        }
        for a in &self.actions {
            if let Some(pace) = a.pace.describe() {
                out.push_str(&format!("action {:?} paced: {pace}\n", a.name));
            }
        }
        for name in self.lists.names() {
            if let Some(list) = self.lists.get(name) {
                let kind = match list {
                    crate::worker::lists::List::Strings(_) => "string",
                    crate::worker::lists::List::Cidrs(_) => "cidr",
                };
                out.push_str(&format!("list {name:?} ({kind}): {} entries\n", list.len()));
            }
        }
        for w in &self.watches {
            let names = |indexes: &[usize]| -> String {
                indexes
                    .iter()
                    .map(|&i| self.actions[i].name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            out.push_str(&format!(
                "watch {:?}: provider {:?} silent {} → {}{}\n",
                w.name,
                w.provider,
                humantime::format_duration(w.silent_for),
                names(&w.actions),
                if w.on_recover.is_empty() {
                    String::new()
                } else {
                    format!("; recovered → {}", names(&w.on_recover))
                }
            ));
        }
        out
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSubject {
    provider: String,
    types: Vec<String>,
    subject: String,
    version: Option<String>,
    #[serde(default)]
    scores: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: String,
    events: Vec<String>,
    when: String,
    actions: Vec<String>,
    #[serde(default, with = "humantime_serde")]
    cooldown: Option<Duration>,
    mode: Option<String>,
    limit: Option<Limit>,
    #[serde(default)]
    on_trip: Vec<String>,
}

fn build_subjects(doc: &mut Document<'_>, raw: Vec<Option<RawSubject>>) -> Vec<SubjectSpec> {
    let mut out = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let key = format!("subjects[{i}]");
        let mut ok = true;
        for (field, pointer) in std::iter::once(("subject".to_owned(), &raw.subject))
            .chain(raw.version.iter().map(|v| ("version".to_owned(), v)))
            .chain(raw.scores.iter().map(|(n, p)| (format!("scores.{n}"), p)))
        {
            if !pointer.starts_with('/') {
                doc.problem(
                    &format!("{key}.{field}"),
                    format!("{pointer:?} is not a JSON pointer (write \"/data/id\")"),
                );
                ok = false;
            }
        }
        if raw.types.is_empty() {
            doc.problem(
                &format!("{key}.types"),
                "needs at least one event type (globs allowed)".to_owned(),
            );
            ok = false;
        }
        if ok {
            // In file order, as messages list them.
            let mut scores: Vec<(String, String)> = raw.scores.into_iter().collect();
            scores.sort_by_key(|(name, _)| doc.offset_of(&format!("{key}.scores.{name}")));
            out.push(SubjectSpec {
                provider: raw.provider,
                types: raw.types.iter().map(|t| WildMatch::new(t)).collect(),
                subject: raw.subject,
                version: raw.version,
                scores,
            });
        }
    }
    out
}

/// What a rule may refer to.
struct Known<'k> {
    actions: &'k [Action],
    subjects: &'k [SubjectSpec],
    score_names: &'k BTreeSet<String>,
    lists: &'k Lists,
    /// The `[enrich.*]` names.
    lookups: &'k [&'k str],
    /// What each action's templates read of `enrich`, by action index.
    reads: &'k [MemberRefs],
}

fn build_rule(doc: &mut Document<'_>, key: &str, raw: RawRule, known: &Known<'_>) -> Option<Rule> {
    let Known {
        actions,
        subjects,
        score_names,
        lists,
        ..
    } = *known;
    let mut ok = true;
    let mut events = Vec::new();
    for (j, pattern) in raw.events.iter().enumerate() {
        match pattern.split_once(':') {
            Some((p, t)) if !p.is_empty() && !t.is_empty() => {
                events.push((WildMatch::new(p), WildMatch::new(t)));
            }
            _ => {
                doc.problem(
                    &format!("{key}.events[{j}]"),
                    format!("{pattern:?} is not provider:type (globs allowed, e.g. \"dregs:identity.*\")"),
                );
                ok = false;
            }
        }
    }
    if raw.events.is_empty() {
        doc.problem(
            &format!("{key}.events"),
            "needs at least one provider:type pattern".to_owned(),
        );
        ok = false;
    }
    let sample = Sample::new(score_names.iter().map(String::as_str), BTreeMap::new())
        .with_lists(lists.clone())
        .with_lookups(known.lookups.iter().copied());
    let when = match Condition::compile_checked(&raw.when, &sample.facts()) {
        Ok(c) => {
            scores::check_names(doc, &format!("{key}.when"), &c, &events, subjects);
            for name in c.list_names() {
                if lists.get(&name).is_none() {
                    let known: Vec<&str> = lists.names().collect();
                    doc.problem(
                        &format!("{key}.when"),
                        format!(
                            "no list named {name:?}; defined: {}",
                            if known.is_empty() {
                                "none (add [lists.NAME] file = \"…\")".to_owned()
                            } else {
                                known.join(", ")
                            }
                        ),
                    );
                    ok = false;
                }
            }
            for name in c.enrich_names().unwrap_or_default() {
                if !known.lookups.contains(&name.as_str()) {
                    doc.problem(&format!("{key}.when"), no_lookup(&name, known.lookups));
                    ok = false;
                }
            }
            Some(c)
        }
        Err(reason) => {
            doc.problem(&format!("{key}.when"), reason);
            None
        }
    };
    let indexes = action_indexes(
        doc,
        &format!("{key}.actions"),
        &raw.actions,
        actions,
        &mut ok,
    );
    let on_trip = action_indexes(
        doc,
        &format!("{key}.on_trip"),
        &raw.on_trip,
        actions,
        &mut ok,
    );
    match raw.limit {
        Some(limit) if limit.actions == 0 || limit.per.is_zero() => {
            doc.problem(
                &format!("{key}.limit"),
                "actions and per must be more than 0 (limit = { actions = 100, per = \"10m\" })"
                    .to_owned(),
            );
            ok = false;
        }
        None if !raw.on_trip.is_empty() => {
            doc.problem(
                &format!("{key}.on_trip"),
                "on_trip runs when the rule's limit trips: give the rule a limit \
                 (limit = { actions = 100, per = \"10m\" })"
                    .to_owned(),
            );
            ok = false;
        }
        _ => {}
    }
    let mode = match raw.mode.as_deref().unwrap_or("enforce") {
        "enforce" => Mode::Enforce,
        "shadow" => Mode::Shadow,
        other => {
            doc.problem(
                &format!("{key}.mode"),
                format!("unknown mode {other:?}; expected enforce or shadow"),
            );
            ok = false;
            Mode::Shadow
        }
    };
    let enrich = rule_lookups(when.as_ref(), &indexes, &on_trip, known);
    match (ok, when) {
        (true, Some(when)) => Some(Rule {
            name: raw.name,
            events,
            when,
            actions: indexes,
            cooldown: raw.cooldown,
            mode,
            limit: raw.limit,
            on_trip,
            enrich,
        }),
        _ => None,
    }
}

/// The indexes of the actions `names` (the list at `key`) name; a name no `[actions.*]` table
/// defines is reported and clears `ok`.
fn action_indexes(
    doc: &mut Document<'_>,
    key: &str,
    names: &[String],
    actions: &[Action],
    ok: &mut bool,
) -> Vec<usize> {
    let mut indexes = Vec::new();
    for (j, name) in names.iter().enumerate() {
        match actions.iter().position(|a| &a.name == name) {
            Some(i) => indexes.push(i),
            None => {
                let known: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
                doc.problem(
                    &format!("{key}[{j}]"),
                    format!("no action named {name:?}; defined: {}", known.join(", ")),
                );
                *ok = false;
            }
        }
    }
    indexes
}

/// The lookups a rule reads: those its condition names and those its actions' and on_trip
/// actions' templates name; every lookup when either reads `enrich` as a whole. Sorted.
fn rule_lookups(
    when: Option<&Condition>,
    actions: &[usize],
    on_trip: &[usize],
    known: &Known<'_>,
) -> Vec<String> {
    let mut names = BTreeSet::new();
    let mut whole = false;
    match when.map(Condition::enrich_names) {
        Some(Some(read)) => names.extend(read),
        Some(None) => whole = true,
        None => {}
    }
    for &a in actions.iter().chain(on_trip) {
        if let Some(reads) = known.reads.get(a) {
            whole |= reads.whole;
            names.extend(reads.names.iter().cloned());
        }
    }
    if whole {
        names.extend(known.lookups.iter().map(|n| (*n).to_owned()));
    }
    names
        .into_iter()
        .filter(|n| known.lookups.contains(&n.as_str()))
        .collect()
}

/// What each action's templates read of `enrich`, by action index.
fn action_lookups(actions: &[Action], templates: &Templates, lookups: &[&str]) -> Vec<MemberRefs> {
    actions
        .iter()
        .map(|action| {
            let prefix = format!("actions.{}.", action.name);
            let mut reads = MemberRefs::default();
            for (_, id) in templates
                .all()
                .into_iter()
                .filter(|(n, _)| n.starts_with(&prefix))
            {
                let refs = templates.member_refs(id, Name::Enrich.as_str());
                reads.whole |= refs.whole;
                reads.names.extend(refs.names);
            }
            reads.names.retain(|n| lookups.contains(&n.as_str()));
            reads.names.sort_unstable();
            reads.names.dedup();
            reads
        })
        .collect()
}

/// A watch has no event to look anything up for: its actions cannot read `enrich`.
fn check_watch_lookups(
    doc: &mut Document<'_>,
    watches: &[crate::worker::watch::Watch],
    actions: &[Action],
    reads: &[MemberRefs],
) {
    for (i, watch) in watches.iter().enumerate() {
        for &a in watch.actions.iter().chain(&watch.on_recover) {
            let Some(r) = reads.get(a) else { continue };
            if r.whole || !r.names.is_empty() {
                doc.problem(
                    &format!("watch[{i}]"),
                    format!(
                        "action {:?} reads enrich, but a watch's actions have no event to look \
                         anything up for",
                        actions[a].name
                    ),
                );
            }
        }
    }
}

/// Why `enrich.NAME` names nothing.
fn no_lookup(name: &str, lookups: &[&str]) -> String {
    format!(
        "no lookup named {name:?} (enrich.{name}); defined: {}",
        if lookups.is_empty() {
            "none (add [enrich.NAME] kind = \"http\", url = \"…\")".to_owned()
        } else {
            lookups.join(", ")
        }
    )
}

/// Checks every template against the names templates may use and the environment, and
/// returns the `env.NAME` values they reference.
fn check_templates(
    doc: &mut Document<'_>,
    templates: &Templates,
    env: &HashMap<String, String>,
    score_names: &BTreeSet<String>,
    lookups: &[&str],
) -> BTreeMap<String, String> {
    let mut used = BTreeMap::new();
    for (name, id) in templates.all() {
        for lookup in templates.member_refs(id, Name::Enrich.as_str()).names {
            if !lookups.contains(&lookup.as_str()) {
                doc.problem(&name, no_lookup(&lookup, lookups));
            }
        }
        for var in templates.undeclared(id) {
            if Name::parse(&var).is_none() {
                let names: Vec<&str> = Name::template_names().collect();
                doc.problem(
                    &name,
                    format!("undefined name '{var}'; templates see {}", names.join(", ")),
                );
            }
        }
        for var in templates.env_refs(id) {
            match env.get(&var) {
                Some(value) => {
                    used.insert(var, value.clone());
                }
                None => doc.problem(
                    &name,
                    format!("env.{var}: environment variable {var} is not set"),
                ),
            }
        }
    }
    // Render each once with a sample, so unknown filters and syntax only found at render
    // surface now; undefined *fields* of the sample event are not errors here.
    let sample = Sample::new(score_names.iter().map(String::as_str), used)
        .with_lookups(lookups.iter().copied());
    // The names only a trip's or a watch's actions see are set as they would be there.
    let mut sample_context = sample.facts().template_context("sample-rule");
    if let serde_json::Value::Object(names) = &mut sample_context {
        names.insert("count".to_owned(), serde_json::json!(101));
        names.insert("per".to_owned(), serde_json::json!("10m"));
        names.insert("subjects".to_owned(), serde_json::json!(["sample-subject"]));
        names.insert(
            "watch".to_owned(),
            serde_json::json!({"name": "sample-watch", "provider": "sample", "state": "silent",
                "silent_for": "1h", "last_seen": "2026-01-01T00:00:00Z", "silent_since": null}),
        );
    }
    let context = crate::worker::template::context(std::sync::Arc::new(sample_context));
    for (name, id) in templates.all() {
        if let Err(reason) = templates.render_check(id, &context) {
            doc.problem(&name, reason);
        }
    }
    sample.into_env()
}
