//! Enrichment lookups against a real local account service: a rule reads `enrich.account`,
//! the lookup runs once per event however many rules read it and never for events no rule
//! reading it applies to, answers are cached for `cache_ttl`, and a service that is down
//! errs only the rules that read it (`skip_rule`) or holds the event through its retries and
//! then dead-letters it naming the lookup (`retry`). Prerequisite: RabbitMQ.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

use crate::harness::{free_addr, header, metric};
use crate::sink::Sink;
use crate::worker_harness::WorkerHarness;

/// An account service: `GET /accounts/ID` answers `{"age_days": …, "payout_pending": …}`
/// from its table (404 for an account it does not know), counting every request by path.
struct Accounts {
    addr: SocketAddr,
    state: Arc<AccountsState>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct AccountsState {
    ages: Mutex<HashMap<String, u32>>,
    asked: Mutex<Vec<String>>,
    /// Answer 503 to this many requests first.
    fail_first: AtomicU32,
}

impl Accounts {
    async fn start(ages: &[(&str, u32)]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AccountsState::default());
        state
            .ages
            .lock()
            .unwrap()
            .extend(ages.iter().map(|(id, age)| ((*id).to_owned(), *age)));
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let s = s.clone();
                        async move {
                            let path = req.uri().path().to_owned();
                            s.asked.lock().unwrap().push(path.clone());
                            let failing = s
                                .fail_first
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok();
                            let age = path
                                .strip_prefix("/accounts/")
                                .and_then(|id| s.ages.lock().unwrap().get(id).copied());
                            let (status, body) = match (failing, age) {
                                (true, _) => (503, String::new()),
                                (false, Some(age)) => (
                                    200,
                                    format!(r#"{{"age_days": {age}, "payout_pending": true}}"#),
                                ),
                                (false, None) => (404, String::new()),
                            };
                            let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
                            *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                            Ok::<_, Infallible>(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests asked for `path`.
    fn asked(&self, path: &str) -> usize {
        self.state
            .asked
            .lock()
            .unwrap()
            .iter()
            .filter(|p| *p == path)
            .count()
    }

    fn total(&self) -> usize {
        self.state.asked.lock().unwrap().len()
    }

    fn fail_first(&self, n: u32) {
        self.state.fail_first.store(n, Ordering::SeqCst);
    }
}

impl Drop for Accounts {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Two rules read the account lookup (young low scorers are quarantined, every account with
/// a payout pending noted with its age); a third, on another event type, reads nothing.
const RULES: &str = r#"
[enrich.account]
kind = "http"
url = "ACCOUNTS/accounts/{{ subject }}"
timeout = "2s"
retries = RETRIES
CACHE
on_error = "ON_ERROR"

[[rules]]
name = "quarantine-young"
events = ["dregs:identity.scored"]
when = "score.humanity < 30.0 && enrich.account.age_days < 30"
actions = ["quarantine"]

[[rules]]
name = "payout-review"
events = ["dregs:identity.scored"]
when = "enrich.account.payout_pending"
actions = ["note"]

[[rules]]
name = "low-score"
events = ["dregs:identity.*"]
when = "score.humanity < 30.0"
actions = ["alert"]

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
body = '{"age_days": {{ enrich.account.age_days }}}'
retries = 0

[actions.note]
kind = "log"
message = "payout pending on {{ subject }}, {{ enrich.account.age_days }} days old"

[actions.alert]
kind = "http"
url = "{SINK}/alert/{{ subject }}"
retries = 0
"#;

fn rules(accounts: &str, on_error: &str, retries: u32, cache: &str) -> String {
    RULES
        .replace("ACCOUNTS", accounts)
        .replace("ON_ERROR", on_error)
        .replace("RETRIES", &retries.to_string())
        .replace("CACHE", cache)
}

#[tokio::test]
async fn a_rule_acts_on_what_the_lookup_answers_and_the_lookup_runs_once_per_event() {
    let sink = Sink::start().await;
    let accounts = Accounts::start(&[("young", 5), ("old", 400)]).await;
    let w = WorkerHarness::for_dregs(&rules(
        &accounts.url(),
        "skip_rule",
        0,
        "cache_ttl = \"1m\"",
    ))
    .start(&sink.url())
    .await;
    w.publish_dregs("e-young", "young", "2026-12-01T10:00:00Z", 10)
        .await;
    w.publish_dregs("e-old", "old", "2026-12-01T10:00:00Z", 10)
        .await;
    // Only "low-score" applies to identity.verified, and it reads no lookup.
    w.publish(
        "dregs",
        "identity.verified",
        "e-verified",
        &crate::worker_harness::dregs("e-verified", "quiet", "2026-12-01T10:00:00Z", 10),
    )
    .await;

    let young = w.decision("dregs", "e-young").await;
    let old = w.decision("dregs", "e-old").await;
    let verified = w.decision("dregs", "e-verified").await;
    assert_eq!(young.outcome, "acted", "{}", young.record);
    let quarantined = sink
        .wait_until(
            "the young account's quarantine",
            Duration::from_secs(10),
            |r| r.iter().any(|r| r.path == "/accounts/young/quarantine"),
        )
        .await;
    let q = quarantined
        .iter()
        .find(|r| r.path == "/accounts/young/quarantine")
        .unwrap();
    assert_eq!(
        q.body, r#"{"age_days": 5}"#,
        "the action's template reads the answer"
    );
    let fired = |d: &hookwarden::worker::state::DecisionRecord, rule: &str| {
        d.record["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == rule)
            .map(|r| r["matched"] == true)
    };
    assert_eq!(fired(&young, "quarantine-young"), Some(true));
    assert_eq!(
        fired(&old, "quarantine-young"),
        Some(false),
        "{}",
        old.record
    );
    assert_eq!(fired(&old, "payout-review"), Some(true), "{}", old.record);
    assert_eq!(young.record["enrich"]["account"]["cached"], false);
    // Two rules read it: one request per event. None for the event no reading rule takes.
    assert_eq!(accounts.asked("/accounts/young"), 1);
    assert_eq!(accounts.asked("/accounts/old"), 1);
    assert_eq!(accounts.asked("/accounts/quiet"), 0);
    assert_eq!(verified.outcome, "acted", "{}", verified.record);
    assert!(
        verified.record.get("enrich").is_none(),
        "{}",
        verified.record
    );

    // Within cache_ttl the answer is reused.
    w.publish_dregs("e-young-2", "young", "2026-12-01T10:05:00Z", 12)
        .await;
    let again = w.decision("dregs", "e-young-2").await;
    assert_eq!(
        again.record["enrich"]["account"]["cached"], true,
        "{}",
        again.record
    );
    assert_eq!(accounts.asked("/accounts/young"), 1);
    let metrics = w.metrics();
    assert_eq!(
        metric(
            &metrics,
            r#"hookwarden_worker_lookups_total{lookup="account",outcome="cached"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            r#"hookwarden_worker_lookups_total{lookup="account",outcome="answered"}"#
        ),
        Some(2.0),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_lookup_that_is_down_errs_the_rules_that_read_it_and_the_others_act() {
    let sink = Sink::start().await;
    // Nothing listens there: every connection is refused.
    let down = format!("http://{}", free_addr());
    let w = WorkerHarness::for_dregs(&rules(&down, "skip_rule", 1, ""))
        .start(&sink.url())
        .await;
    w.publish_dregs("e-down", "u1", "2026-12-01T10:00:00Z", 10)
        .await;
    let d = w.decision("dregs", "e-down").await;
    assert_eq!(d.outcome, "acted", "{}", d.record);
    sink.wait_until(
        "the alert of the rule that reads no lookup",
        Duration::from_secs(10),
        |r| r.iter().any(|r| r.path == "/alert/u1"),
    )
    .await;
    let rules = d.record["rules"].as_array().unwrap();
    let quarantine = rules
        .iter()
        .find(|r| r["rule"] == "quarantine-young")
        .unwrap();
    let error = quarantine["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("lookup \"account\" failed: connect error"),
        "{}",
        d.record
    );
    assert_eq!(d.record["enrich"]["account"]["on_error"], "skip_rule");
    assert!(
        !sink
            .received()
            .iter()
            .any(|r| r.path.contains("quarantine"))
    );
}

#[tokio::test]
async fn with_retry_an_event_waits_out_a_short_outage_and_dead_letters_after_a_long_one() {
    let sink = Sink::start().await;
    let accounts = Accounts::start(&[("young", 5)]).await;
    let w = WorkerHarness::for_dregs(&rules(&accounts.url(), "retry", 3, ""))
        .start(&sink.url())
        .await;
    // Down for two attempts, back for the third: within the retries.
    accounts.fail_first(2);
    w.publish_dregs("e-back", "young", "2026-12-01T10:00:00Z", 10)
        .await;
    let d = w.decision("dregs", "e-back").await;
    assert_eq!(d.outcome, "acted", "{}", d.record);
    assert_eq!(accounts.asked("/accounts/young"), 3);
    sink.wait_until("the quarantine", Duration::from_secs(10), |r| {
        r.iter().any(|r| r.path == "/accounts/young/quarantine")
    })
    .await;

    // Down for longer than the retries: nothing of the event acts, and it is dead-lettered
    // naming the lookup.
    accounts.fail_first(100);
    let before = accounts.total();
    w.publish_dregs("e-gone", "young", "2026-12-01T10:01:00Z", 10)
        .await;
    let d = w.decision("dregs", "e-gone").await;
    assert_eq!(d.outcome, "dead_lettered", "{}", d.record);
    assert_eq!(
        accounts.total() - before,
        4,
        "one attempt and three retries"
    );
    let dead = crate::harness::eventually_get(&w.broker, &w.names.dead_letter_queue).await;
    let p = &dead.delivery.properties;
    assert_eq!(p.message_id().as_ref().map(|s| s.as_str()), Some("e-gone"));
    assert_eq!(
        header(p, "x-hookwarden-error").as_deref(),
        Some("lookup \"account\" failed: HTTP 503 Service Unavailable")
    );
    assert_eq!(header(p, "x-hookwarden-rule"), None);
    // The alert rule reads no lookup, yet nothing of the dead-lettered event ran: the
    // one alert is the first event's.
    let alerts = sink
        .received()
        .iter()
        .filter(|r| r.path == "/alert/young")
        .count();
    assert_eq!(alerts, 1);
}

#[tokio::test]
async fn a_lookup_only_shadow_rules_read_never_dead_letters_the_event() {
    let sink = Sink::start().await;
    let down = format!("http://{}", free_addr());
    let rules = rules(&down, "retry", 0, "")
        .replace(
            "actions = [\"quarantine\"]",
            "actions = [\"quarantine\"]\nmode = \"shadow\"",
        )
        .replace(
            "actions = [\"note\"]",
            "actions = [\"note\"]\nmode = \"shadow\"",
        );
    let w = WorkerHarness::for_dregs(&rules).start(&sink.url()).await;
    w.publish_dregs("e-shadow", "u1", "2026-12-01T10:00:00Z", 10)
        .await;
    let d = w.decision("dregs", "e-shadow").await;
    assert_eq!(d.outcome, "acted", "{}", d.record);
    assert_eq!(d.record["enrich"]["account"]["on_error"], "skip_rule");
    sink.wait_until("the enforcing rule's alert", Duration::from_secs(10), |r| {
        r.iter().any(|r| r.path == "/alert/u1")
    })
    .await;
}
