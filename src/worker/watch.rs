//! Silence watches (`[[watch]]`): alerting on the absence of data. A provider that stops
//! sending (a revoked webhook, an outage on their side, a listener that lost its route) looks
//! exactly like a quiet day; a watch runs its `actions` once when no matching event has been
//! decided for `silent_for`, and its `on_recover` actions once when events resume.
//!
//! When events were last decided is kept in the state store, per watch and per provider, so a
//! restarted worker carries on counting and several workers agree; which worker runs a watch's
//! actions is settled there too (only the one whose update marks the watch silent, or
//! recovered, runs them). Batches note what they decide ([`Seen::note`]); a loop writes that
//! down a few times a second, checks every watch, and sets `hookwarden_last_event_age_seconds`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use wildmatch::WildMatch;

use crate::config::Document;
use crate::telemetry::trace::Parent;
use crate::worker::action::{self, Firing, Runner};
use crate::worker::config::WorkerConfig;
use crate::worker::decide::{PlannedAction, rfc3339_ms};
use crate::worker::facts::{Facts, Name};
use crate::worker::rules::{Action, Rules};
use crate::worker::state::{Store, StoreError, now_ms};

/// `[[watch]]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWatch {
    name: String,
    provider: String,
    #[serde(default)]
    types: Vec<String>,
    #[serde(with = "humantime_serde")]
    silent_for: Duration,
    actions: Vec<String>,
    #[serde(default)]
    on_recover: Vec<String>,
}

/// A compiled silence watch.
#[derive(Debug)]
pub struct Watch {
    /// Its name (the key of its state in the store).
    pub name: String,
    /// The provider whose events it watches.
    pub provider: String,
    /// Globs of the event types it watches; empty: every type.
    pub types: Vec<WildMatch>,
    /// How long without a decided event counts as silence.
    pub silent_for: Duration,
    /// Indexes into [`Rules::actions`]: run once when it falls silent.
    pub actions: Vec<usize>,
    /// Indexes into [`Rules::actions`]: run once when events resume.
    pub on_recover: Vec<usize>,
}

impl Watch {
    /// Whether an event of `provider` and `event_type` counts for it.
    pub fn watches(&self, provider: &str, event_type: &str) -> bool {
        self.provider == provider
            && (self.types.is_empty() || self.types.iter().any(|t| t.matches(event_type)))
    }

    /// Its key in the store.
    fn key(&self) -> String {
        format!("watch/{}", self.name)
    }
}

/// The store key of a provider's last decided event.
fn provider_key(provider: &str) -> String {
    format!("provider/{provider}")
}

/// Compiles `doc`'s `[[watch]]` entries against the actions defined.
pub(crate) fn compile(doc: &mut Document<'_>, actions: &[Action]) -> Vec<Watch> {
    let raw: Vec<Option<RawWatch>> = doc.list("watch");
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let Some(raw) = raw else { continue };
        let key = format!("watch[{i}]");
        let mut ok = true;
        if !names.insert(raw.name.clone()) {
            doc.problem(
                &format!("{key}.name"),
                format!("watch {:?} is defined twice", raw.name),
            );
            ok = false;
        }
        if raw.silent_for.is_zero() {
            doc.problem(
                &format!("{key}.silent_for"),
                "must be more than 0s".to_owned(),
            );
            ok = false;
        }
        if raw.actions.is_empty() {
            doc.problem(
                &format!("{key}.actions"),
                "needs at least one action to run when it falls silent".to_owned(),
            );
            ok = false;
        }
        let mut indexes = |list: &str, names: &[String], ok: &mut bool| -> Vec<usize> {
            let mut found = Vec::new();
            for (j, name) in names.iter().enumerate() {
                match actions.iter().position(|a| &a.name == name) {
                    Some(index) => found.push(index),
                    None => {
                        let known: Vec<&str> = actions.iter().map(|a| a.name.as_str()).collect();
                        doc.problem(
                            &format!("{key}.{list}[{j}]"),
                            format!("no action named {name:?}; defined: {}", known.join(", ")),
                        );
                        *ok = false;
                    }
                }
            }
            found
        };
        let on_silence = indexes("actions", &raw.actions, &mut ok);
        let on_recover = indexes("on_recover", &raw.on_recover, &mut ok);
        if ok {
            out.push(Watch {
                name: raw.name,
                provider: raw.provider,
                types: raw.types.iter().map(|t| WildMatch::new(t)).collect(),
                silent_for: raw.silent_for,
                actions: on_silence,
                on_recover,
            });
        }
    }
    out
}

/// What batches decided since the loop last wrote it down: per store key, the latest time.
#[derive(Debug, Default)]
pub struct Seen(Mutex<HashMap<String, i64>>);

impl Seen {
    /// An event of `provider` and `event_type` was decided at `now_ms`: for its provider and
    /// for every watch that counts it.
    pub fn note(&self, rules: &Rules, provider: &str, event_type: &str, now_ms: i64) {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut put = |key: String| {
            let at = seen.entry(key).or_insert(now_ms);
            *at = (*at).max(now_ms);
        };
        put(provider_key(provider));
        for watch in rules
            .watches
            .iter()
            .filter(|w| w.watches(provider, event_type))
        {
            put(watch.key());
        }
    }

    /// Puts back what [`Seen::take`] took, when it could not be written down.
    fn restore(&self, taken: Vec<(String, i64)>) {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for (key, at) in taken {
            let kept = seen.entry(key).or_insert(at);
            *kept = (*kept).max(at);
        }
    }

    fn take(&self) -> Vec<(String, i64)> {
        let mut seen = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let mut taken: Vec<(String, i64)> = seen.drain().collect();
        // Key order: two workers' upserts take their row locks in the same order.
        taken.sort();
        taken
    }
}

/// How often the loop writes down what was seen and checks the watches: a watch fires at
/// most this late, and its last-seen time is at most this stale in the store.
const TICK: Duration = Duration::from_millis(250);

/// What the loop needs from the worker.
pub struct Watching {
    /// The rules in force (a reload swaps them).
    pub config: Arc<std::sync::RwLock<Arc<WorkerConfig>>>,
    /// The state store.
    pub store: Arc<dyn Store>,
    /// What batches noted.
    pub seen: Arc<Seen>,
    /// Runs the watches' actions, once the worker has a broker session (for `amqp` actions).
    pub runner: Arc<dyn Fn() -> Option<Runner> + Send + Sync>,
    /// Metrics.
    pub metrics: Arc<crate::telemetry::WorkerMetrics>,
}

/// Runs until `shutdown`: every [`TICK`], writes down what was seen, then fires or recovers
/// the watches whose time has come.
pub async fn run(watching: Watching, shutdown: tokio_util::sync::CancellationToken) {
    let mut state = Ticking::default();
    loop {
        tokio::select! {
            () = tokio::time::sleep(TICK) => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(err) = tick(&watching, &mut state).await {
            tracing::warn!(error = %err, "checking the silence watches failed");
        }
    }
}

/// What the loop remembers between ticks.
#[derive(Default)]
struct Ticking {
    /// Watches this worker has started counting for.
    started: HashSet<String>,
    /// Watches whose actions failed: not tried again before this, and the pause after.
    retry: HashMap<String, (tokio::time::Instant, Duration)>,
}

/// The first pause before a watch whose actions failed is tried again, doubled each time up to
/// [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

async fn tick(w: &Watching, ticking: &mut Ticking) -> Result<(), StoreError> {
    let started = &mut ticking.started;
    let config = w
        .config
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let now = now_ms();
    // A watch no worker has counted for yet counts from now.
    let fresh: Vec<String> = config
        .rules
        .watches
        .iter()
        .map(Watch::key)
        .filter(|k| !started.contains(k))
        .collect();
    let seen = w.seen.take();
    let store = w.store.clone();
    let written = seen.clone();
    let rows = match blocking(move || {
        store.start_seen(&fresh, now)?;
        store.touch_seen(&written)?;
        Ok((store.seen()?, fresh))
    })
    .await
    {
        Ok(rows) => rows,
        Err(err) => {
            // Kept for the next tick: losing them could make a watch think it is silent.
            w.seen.restore(seen);
            return Err(err);
        }
    };
    let (rows, fresh) = rows;
    started.extend(fresh);
    let rows: BTreeMap<String, (i64, Option<i64>)> = rows
        .into_iter()
        .map(|s| (s.key, (s.at_ms, s.silent_since_ms)))
        .collect();
    for (key, (at, _)) in &rows {
        if let Some(provider) = key.strip_prefix("provider/") {
            let age = (now.saturating_sub(*at)).max(0) as f64 / 1000.0;
            w.metrics.last_event_age(provider, age);
        }
    }
    for watch in &config.rules.watches {
        let Some(&(at, silent_since)) = rows.get(&watch.key()) else {
            continue;
        };
        let silent_for = i64::try_from(watch.silent_for.as_millis()).unwrap_or(i64::MAX);
        let transition = match silent_since {
            None if now.saturating_sub(at) >= silent_for => Transition::Silent { last_seen: at },
            Some(since) if at > since => Transition::Recovered { since },
            _ => continue,
        };
        if ticking
            .retry
            .get(&watch.name)
            .is_some_and(|(after, _)| tokio::time::Instant::now() < *after)
        {
            continue;
        }
        // Actions need a broker session (an `amqp` action publishes on it); without one the
        // watch waits, its state untouched, and fires on the first tick that has one.
        let Some(runner) = (w.runner)() else { continue };
        let (store, key) = (w.store.clone(), watch.key());
        let won = blocking(move || match transition {
            Transition::Silent { last_seen } => store.mark_silent(&key, now, last_seen),
            Transition::Recovered { since } => store.mark_recovered(&key, since),
        })
        .await?;
        if !won {
            // Another worker got there first and runs the actions.
            continue;
        }
        let (indexes, what): (&[usize], &str) = match transition {
            Transition::Silent { last_seen } => {
                tracing::error!(
                    watch = %watch.name,
                    provider = %watch.provider,
                    last_seen = rfc3339_ms(last_seen).unwrap_or_default(),
                    silent_for = %humantime::format_duration(watch.silent_for),
                    "no event decided for the watch's silent_for: running its actions"
                );
                (&watch.actions, "silent")
            }
            Transition::Recovered { .. } => {
                tracing::info!(watch = %watch.name, provider = %watch.provider, "events resumed");
                (&watch.on_recover, "recovered")
            }
        };
        let planned = plan(&config.rules, watch, indexes, what, transition);
        // Those that completed on an earlier try are skipped: the keys are the same.
        let (store, keys) = (
            w.store.clone(),
            planned.iter().map(|p| p.key.clone()).collect::<Vec<_>>(),
        );
        let done = blocking(move || store.done_among(&keys)).await?;
        let mut failed = false;
        for action in &planned {
            // A watch's actions start a trace of their own: no event caused them.
            let pace = &config.rules.actions[action.index].pace;
            let result = runner.run(action, &done, Parent::Remote(None), pace).await;
            w.metrics
                .action(&result.action, result.outcome.as_str(), result.latency_ms);
            if result.outcome == action::ActionOutcome::Failed {
                failed = true;
                tracing::error!(
                    watch = %watch.name,
                    action = %result.action,
                    error = result.error.as_deref().unwrap_or("failed"),
                    "watch action failed; tried again later"
                );
            }
        }
        if failed {
            // Undone, so that a later tick (of this worker or another) tries again.
            let (store, key) = (w.store.clone(), watch.key());
            let (marked, before) = match transition {
                Transition::Silent { .. } => (Some(now), None),
                Transition::Recovered { since } => (None, Some(since)),
            };
            blocking(move || store.reset_silence(&key, marked, before)).await?;
            let pause = ticking
                .retry
                .get(&watch.name)
                .map_or(RETRY_FIRST, |(_, pause)| (*pause * 2).min(RETRY_MAX));
            ticking.retry.insert(
                watch.name.clone(),
                (tokio::time::Instant::now() + pause, pause),
            );
        } else {
            ticking.retry.remove(&watch.name);
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Copy)]
enum Transition {
    Silent { last_seen: i64 },
    Recovered { since: i64 },
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| StoreError::Poisoned)?
}

/// The watch's actions rendered: templates see `rule` (the watch's name), `provider`, `env`
/// and `watch` (name, provider, state `silent` or `recovered`, `silent_for`, `last_seen`,
/// `silent_since`); there is no event. Keyed by the watch, the transition and the time that
/// names it (the last event before a silence; the start of the silence that ended), the same
/// on every try, so each runs once.
fn plan(
    rules: &Rules,
    watch: &Watch,
    indexes: &[usize],
    what: &str,
    transition: Transition,
) -> Vec<PlannedAction> {
    let (last_seen, silent_since, at) = match transition {
        Transition::Silent { last_seen } => (Some(last_seen), None, last_seen),
        Transition::Recovered { since } => (None, Some(since), since),
    };
    let empty = BTreeMap::new();
    let facts = Facts {
        event: &Value::Null,
        provider: &watch.provider,
        event_type: "",
        event_id: "",
        subject: "",
        score: &empty,
        previous_score: &empty,
        previous_at: None,
        env: &rules.template_env,
        lists: &rules.lists,
        enrich: &std::collections::BTreeMap::new(),
    };
    let mut context = facts.template_context(&watch.name);
    if let Value::Object(names) = &mut context {
        names.insert(
            Name::Watch.as_str().to_owned(),
            serde_json::json!({
                "name": watch.name,
                "provider": watch.provider,
                "state": what,
                "silent_for": humantime::format_duration(watch.silent_for).to_string(),
                "last_seen": last_seen.and_then(rfc3339_ms),
                "silent_since": silent_since.and_then(rfc3339_ms),
            }),
        );
    }
    let context = crate::worker::template::context(Arc::new(context));
    let event_key = format!("watch/{}/{what}/{at}", watch.name);
    indexes
        .iter()
        .map(|&index| {
            let action = &rules.actions[index];
            let key = action::idempotency_key(&event_key, &watch.name, &action.name);
            let request = action.kind.render(&Firing::new(
                &rules.templates,
                &facts,
                &watch.name,
                &key,
                context.clone(),
            ));
            PlannedAction {
                index,
                action: action.name.clone(),
                kind: action.kind.name(),
                key,
                request,
            }
        })
        .collect()
}
