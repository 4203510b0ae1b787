//! The worker's web view in a real headless Chromium, against a worker that decided a
//! scripted story (first sighting, a quiet event, a sharp drop with a shadow match, a
//! crossing whose action fails and dead-letters it): the subject page charts one point per
//! event with the right marks, the decisions list filters, the dead-letter page lists the
//! event with its replay command, hostile provider content stays text with no script run,
//! the token guards every page and JSON answer, and pages go back by keyset without gaps.
//! Screenshots of each page land in `target/ui-screenshots/`. Prerequisites: RabbitMQ,
//! Chromium.

use serde_json::{Value, json};

use crate::browser;
use crate::sink::Sink;
use crate::worker_harness::{TestWorker, WorkerHarness};

const RULES: &str = r#"
[[rules]]
name = "first-sighting"
events = ["dregs:*"]
when = "!has(previous.score.humanity)"
actions = ["note"]

[[rules]]
name = "sharp-drop"
events = ["dregs:*"]
when = "has(previous.score.humanity) && previous.score.humanity - score.humanity >= 25"
actions = ["review"]

[[rules]]
name = "crossed-30"
events = ["dregs:*"]
when = "has(previous.score.humanity) && previous.score.humanity >= 30.0 && score.humanity < 30.0"
actions = ["quarantine"]

[[rules]]
name = "watch-low"
events = ["dregs:*"]
when = "score.humanity < 50"
actions = ["quarantine"]
mode = "shadow"

[actions.note]
kind = "log"

[actions.review]
kind = "http"
url = "{SINK}/review/{{ subject }}"
headers = { Authorization = "Bearer review-secret-4711" }
body = '{"humanity": {{ score.humanity }}}'

[actions.quarantine]
kind = "http"
url = "{SINK}/accounts/{{ subject }}/quarantine"
retries = 0
timeout = "2s"
"#;

/// The chart's colours (see `hookwarden::ui::chart`): the first score, then each mark.
const SCORE: &str = "#1F77B4";
const ENFORCE: &str = "#D62728";
const SHADOW: &str = "#9467BD";
const TRIPPED: &str = "#FF7F0E";
const ACTION_OK: &str = "#2C2C2C";
const ACTION_FAILED: &str = "#E377C2";

fn dregs_event(id: &str, subject: &str, at: &str, humanity: u32, reason: &str) -> String {
    json!({
        "id": id, "type": "identity.scored",
        "data": {"identity_id": subject, "scored_at": at,
                 "scores": {"humanity": humanity}, "reason": reason},
    })
    .to_string()
}

/// Publishes one event and waits for its decision, so that each is decided at a time of its own.
async fn decide(w: &TestWorker, id: &str, subject: &str, at: &str, humanity: u32) -> String {
    w.publish(
        "dregs",
        "identity.scored",
        id,
        &dregs_event(id, subject, at, humanity, "test"),
    )
    .await;
    w.decision("dregs", id).await.outcome
}

/// GETs `url` with `headers`: status, headers, body.
async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, http::HeaderMap, String) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.text().await.unwrap())
}

async fn get_json(url: &str) -> (u16, Value) {
    let (status, _, body) = get(url, &[("accept", "application/json")]).await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url}: {e}: {body}"));
    (status, json)
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

/// How many elements of the chart are filled with `colour`.
fn filled(dom: &str, colour: &str) -> usize {
    count(dom, &format!("fill=\"{colour}\""))
}

fn event_keys(json: &Value, list: &str) -> Vec<String> {
    json[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["event_key"].as_str().unwrap().to_owned())
        .collect()
}

fn assert_quiet(page: &browser::Page, what: &str) {
    assert!(
        page.console.is_empty(),
        "{what}: the browser's console: {:#?}",
        page.console
    );
}

#[tokio::test]
async fn the_subject_page_charts_the_story_and_the_lists_filter_it() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    let ui = format!("{}/ui", w.admin);
    assert_eq!(
        decide(&w, "e1", "usr_7", "2026-11-30T10:00:00Z", 90).await,
        "acted"
    );
    assert_eq!(
        decide(&w, "e2", "usr_7", "2026-11-30T10:01:00Z", 70).await,
        "no_match"
    );
    assert_eq!(
        decide(&w, "e3", "usr_7", "2026-11-30T10:02:00Z", 40).await,
        "acted"
    );
    sink.fail_always(true);
    assert_eq!(
        decide(&w, "e4", "usr_7", "2026-11-30T10:03:00Z", 20).await,
        "dead_lettered"
    );
    sink.fail_always(false);

    // The subject: one point per event on the score's line, a mark per rule and action.
    let subject_url = format!("{ui}/subject?key=dregs%2Fusr_7");
    let page = browser::open(&subject_url).await;
    assert_quiet(&page, "subject page");
    assert_eq!(page.title(), "Subject dregs/usr_7 · hookwarden");
    // Each colour once more for its legend entry.
    assert_eq!(filled(&page.dom, SCORE), 4 + 1, "one point per event");
    assert_eq!(filled(&page.dom, ENFORCE), 3 + 1, "e1, e3, e4 enforced");
    assert_eq!(filled(&page.dom, SHADOW), 2 + 1, "watch-low on e3 and e4");
    assert_eq!(
        filled(&page.dom, ACTION_OK),
        2 + 1,
        "note on e1, review on e3"
    );
    assert_eq!(filled(&page.dom, ACTION_FAILED), 1 + 1, "quarantine on e4");
    assert_eq!(filled(&page.dom, TRIPPED), 0);
    for (key, outcome) in [
        ("e4", "dead_lettered"),
        ("e3", "acted"),
        ("e2", "no_match"),
        ("e1", "acted"),
    ] {
        assert!(
            page.dom.contains(&format!(
                "<span class=\"event-key\">dregs/{key}</span> identity.scored <span class=\"outcome\">{outcome}</span>"
            )),
            "{key} {outcome} listed"
        );
    }
    let order: Vec<usize> = ["dregs/e4", "dregs/e3", "dregs/e2", "dregs/e1"]
        .iter()
        .map(|k| page.dom.find(&format!("\"event-key\">{k}<")).unwrap())
        .collect();
    assert!(order.is_sorted(), "newest first: {order:?}");
    // Each event's scores beside those its rules compared them with.
    for shown in [
        "<span class=\"score\">humanity 20.0 (was 40.0)</span>",
        "<span class=\"score\">humanity 40.0 (was 70.0)</span>",
        "<span class=\"score\">humanity 90.0</span>",
    ] {
        assert!(page.dom.contains(shown), "{shown}");
    }
    // What the review action sent, its credential masked; the raw event as received.
    assert!(page.dom.contains("/review/usr_7"));
    assert!(
        !page.dom.contains("review-secret-4711"),
        "the secret is masked"
    );
    assert!(page.dom.contains("Dead-lettered: HTTP 500"));
    assert!(
        page.dom
            .contains("<h3>watch-low (shadow) would have sent quarantine</h3>"),
        "what the shadow rule would have sent"
    );
    assert!(
        page.dom
            .contains("&quot;scored_at&quot;: &quot;2026-11-30T10:03:00Z&quot;")
            || page.dom.contains("\"scored_at\": \"2026-11-30T10:03:00Z\"")
    );
    let (_, json) = get_json(&subject_url).await;
    assert_eq!(json["points"].as_array().unwrap().len(), 4);
    assert_eq!(
        json["points"][2]["marks"],
        json!(["enforce", "shadow", "action_ok"])
    );
    let review = &json["events"][1]["actions"][0];
    assert_eq!(review["action"], "review");
    assert!(
        review["request"]["headers"]
            .as_array()
            .unwrap()
            .contains(&json!(["authorization", "***"])),
        "{review}"
    );

    // The decisions list, by each filter: the events it shows, in the order shown.
    let listed = |query: &'static str| {
        let url = format!("{ui}/decisions?{query}");
        async move {
            let page = browser::open(&url).await;
            assert_quiet(&page, query);
            assert_eq!(
                page.title(),
                "Decisions · hookwarden",
                "{query}: {}",
                page.dom
            );
            let mut shown: Vec<(usize, String)> = ["e1", "e2", "e3", "e4"]
                .iter()
                .filter_map(|k| Some((page.dom.find(&format!(">dregs/{k}</a>"))?, (*k).to_owned())))
                .collect();
            shown.sort();
            let keys: Vec<String> = shown.into_iter().map(|(_, k)| k).collect();
            assert_eq!(
                keys.is_empty(),
                page.dom.contains("No decisions."),
                "{query}"
            );
            (keys, page)
        }
    };
    assert_eq!(listed("").await.0, ["e4", "e3", "e2", "e1"], "newest first");
    assert_eq!(listed("rule=sharp-drop").await.0, ["e3"]);
    assert_eq!(listed("rule=watch-low").await.0, ["e4", "e3"]);
    assert_eq!(listed("outcome=dead_lettered").await.0, ["e4"]);
    assert_eq!(listed("outcome=no_match").await.0, ["e2"]);
    assert_eq!(
        listed("subject=usr_7&provider=dregs").await.0,
        ["e4", "e3", "e2", "e1"]
    );
    assert_eq!(
        listed("subject=dregs%2Fusr_8").await.0,
        Vec::<String>::new()
    );
    assert_eq!(listed("event=dregs%2Fe2").await.0, ["e2"]);
    assert_eq!(listed("provider=other").await.0, Vec::<String>::new());
    assert_eq!(
        listed("to=2020-01-01T00%3A00").await.0,
        Vec::<String>::new()
    );
    assert_eq!(
        listed("from=2020-01-01T00%3A00&rule=first-sighting")
            .await
            .0,
        ["e1"]
    );
    let (_, page) = listed("rule=sharp-drop").await;
    assert!(
        page.dom.contains("href=\"/ui/subject?key=dregs%2Fusr_7\""),
        "a row links to its subject"
    );

    // The dead letters: e4, why, and the command that replays it.
    let page = browser::open(&format!("{ui}/dead-letters")).await;
    assert_quiet(&page, "dead letters");
    assert!(page.dom.contains(">dregs/e4</a>"));
    assert!(
        page.dom.contains(
            "<td>crossed-30</td>\n  <td>quarantine</td>\n  <td class=\"reason\">HTTP 500 Internal Server Error</td>"
        ),
        "{}",
        page.dom
    );
    // The rules file's path made absolute, so that the command works from anywhere.
    let rules = std::env::current_dir().unwrap().join("rules.toml");
    assert!(page.dom.contains(&format!(
        "hookwarden dead-letters --rules {} replay --id=e4",
        rules.display()
    )));

    // The overview counts what was decided.
    let page = browser::open(&format!("{ui}/")).await;
    assert_quiet(&page, "overview");
    assert_eq!(page.by_id("decided").as_deref(), Some("4"));
    assert_eq!(page.by_id("dead-letters").as_deref(), Some("1"));
    let (_, overview) = get_json(&format!("{ui}/")).await;
    let rule = |name: &str| {
        overview["rules"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["rule"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {overview}"))
    };
    assert_eq!(rule("sharp-drop")["enforced"], 1);
    assert_eq!(rule("watch-low")["shadow"], 2);
    assert_eq!(rule("crossed-30")["actions_failed"], 1);
    assert_eq!(
        overview["outcomes"],
        json!({"acted": 2, "dead_lettered": 1, "no_match": 1})
    );

    for (path, name, height) in [
        ("/subject?key=dregs%2Fusr_7", "subject", 1100),
        ("/decisions", "decisions", 700),
        ("/dead-letters", "dead-letters", 500),
        ("/", "overview", 1000),
    ] {
        browser::screenshot(&format!("{ui}{path}"), name, height).await;
    }
}

#[tokio::test]
async fn hostile_provider_content_is_text_everywhere_and_no_script_runs() {
    const SUBJECT: &str = "</svg><script>document.title='pwned'</script>\"><img src=x onerror=\"document.title='pwned'\">";
    const ID: &str = "\"><img src=x onerror=document.title='pwned'>";
    const KIND: &str = "identity.<script>document.title='pwned'</script>";
    // An id that starts with `-`, as an option would.
    const ID2: &str = "-\"><img src=x onerror=document.title='pwned'>2";
    // The console check below sees what a page logs: a page that logs, to show it does.
    let control = browser::open("data:text/html,<script>console.log('control')</script>").await;
    assert_eq!(control.console.len(), 1, "{:?}", control.console);

    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    let body = dregs_event(
        ID,
        SUBJECT,
        "2026-11-30T10:00:00Z",
        90,
        "</svg><script>document.title='pwned'</script>",
    );
    w.publish("dregs", KIND, ID, &body).await;
    assert_eq!(w.decision("dregs", ID).await.outcome, "acted");
    // A sharp drop whose review fails: the hostile event on the dead-letter page too.
    sink.fail_always(true);
    let body = dregs_event(ID2, SUBJECT, "2026-11-30T10:01:00Z", 40, "<b>bold</b>");
    w.publish("dregs", KIND, ID2, &body).await;
    assert_eq!(w.decision("dregs", ID2).await.outcome, "dead_lettered");

    let key: String =
        form_urlencoded::byte_serialize(format!("dregs/{SUBJECT}").as_bytes()).collect();
    let event: String = form_urlencoded::byte_serialize(format!("dregs/{ID}").as_bytes()).collect();
    let ui = format!("{}/ui", w.admin);
    for (path, title) in [
        (
            format!("/subject?key={key}"),
            format!("Subject dregs/{SUBJECT}"),
        ),
        ("/decisions".to_owned(), "Decisions".to_owned()),
        (format!("/decisions?subject={key}"), "Decisions".to_owned()),
        (format!("/decisions?event={event}"), "Decisions".to_owned()),
        ("/dead-letters".to_owned(), "Dead letters".to_owned()),
        ("/".to_owned(), "Overview".to_owned()),
    ] {
        let url = format!("{ui}{path}");
        // As served: every tag of the provider's escaped (our pages have no script or img).
        let (status, headers, html) = get(&url, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            headers["content-security-policy"],
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
            "{path}"
        );
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(!html.contains("<script"), "{path}: {html}");
        assert!(!html.contains("<img"), "{path}: {html}");
        // In the browser: the title as we wrote it (escaped, it reads as the text), and
        // nothing in the console (an injected handler blocked by the policy would be there).
        let page = browser::open(&url).await;
        assert_quiet(&page, &path);
        let shown = format!("{title} · hookwarden")
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        assert_eq!(page.title(), shown, "{path}");
        assert!(!page.dom.contains("pwned</title>"));
    }
    let (_, json) = get_json(&format!("{ui}/subject?key={key}")).await;
    assert_eq!(
        json["key"],
        format!("dregs/{SUBJECT}"),
        "JSON carries it as it is"
    );
    assert_eq!(json["events"][1]["event_type"], KIND);
    // The replay command pastes as one word, whatever the id holds.
    let (_, json) = get_json(&format!("{ui}/dead-letters")).await;
    let rules = std::env::current_dir().unwrap().join("rules.toml");
    assert_eq!(
        json["letters"][0]["replay"],
        format!(
            "hookwarden dead-letters --rules {} replay \
             --id='-\"><img src=x onerror=document.title='\\''pwned'\\''>2'",
            rules.display()
        )
    );
}

#[tokio::test]
async fn without_a_token_only_the_loopback_is_served() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(RULES).start(&sink.url()).await;
    let ui = format!("{}/ui", w.admin);
    let (status, _, _) = get(&format!("{ui}/"), &[]).await;
    assert_eq!(status, 200);
    // A name pointed at 127.0.0.1 by another site (DNS rebinding) is refused.
    let (status, _, body) = get(
        &format!("{ui}/decisions"),
        &[
            ("host", "rebound.example:9091"),
            ("accept", "application/json"),
        ],
    )
    .await;
    assert_eq!(status, 403);
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "Host \"rebound.example:9091\" is not this machine's loopback: without a [ui] token the \
         web view answers only http://127.0.0.1, [::1] or localhost"
    );
}

#[tokio::test]
async fn with_a_token_every_page_and_json_answer_needs_it() {
    const TOKEN: &str = "ui-token-0123456789abcdef";
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(&format!("{RULES}\n[ui]\ntoken = \"{TOKEN}\"\n"))
        .start(&sink.url())
        .await;
    decide(&w, "t1", "usr_1", "2026-11-30T10:00:00Z", 90).await;
    let ui = format!("{}/ui", w.admin);
    let bearer = format!("Bearer {TOKEN}");
    let paths = [
        "/",
        "/decisions",
        "/subject?key=dregs%2Fusr_1",
        "/dead-letters",
    ];
    for path in paths {
        let url = format!("{ui}{path}");
        let (status, headers, html) = get(&url, &[]).await;
        assert_eq!(status, 401, "{path}");
        assert_eq!(headers["www-authenticate"], "Bearer realm=\"hookwarden\"");
        assert!(
            html.contains("<form method=\"post\" action=\"/ui/login\""),
            "the login form"
        );
        assert!(!html.contains("usr_1"), "{path} shows nothing of the state");
        let (status, _, body) = get(&url, &[("accept", "application/json")]).await;
        assert_eq!(status, 401, "{path} JSON");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["error"],
            "this view needs the [ui] token: send it as a bearer token, or log in at /ui/login"
        );
        let wrong = get(
            &url,
            &[("authorization", "Bearer ui-token-0123456789abcdeX")],
        )
        .await;
        assert_eq!(wrong.0, 401, "{path} with a wrong token");
        let right = get(
            &url,
            &[("authorization", &bearer), ("accept", "application/json")],
        )
        .await;
        assert_eq!(right.0, 200, "{path} with the token: {}", right.2);
    }

    // The login form: a wrong token is refused; the right one sets the session cookie.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = |token: &'static str| {
        client
            .post(format!("{ui}/login"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("token={token}"))
            .send()
    };
    let refused = login("not-the-token-at-all").await.unwrap();
    assert_eq!(refused.status().as_u16(), 401);
    assert!(refused.headers().get("set-cookie").is_none());
    assert!(
        refused
            .text()
            .await
            .unwrap()
            .contains("That is not the token.")
    );
    let accepted = login(TOKEN).await.unwrap();
    assert_eq!(accepted.status().as_u16(), 303);
    assert_eq!(accepted.headers()["location"], "/ui/");
    let cookie = accepted.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.ends_with("; Path=/ui; HttpOnly; SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(TOKEN), "the cookie is not the token");
    let session = cookie.split(';').next().unwrap();
    for path in paths {
        let (status, _, _) = get(&format!("{ui}{path}"), &[("cookie", session)]).await;
        assert_eq!(status, 200, "{path} with the session cookie");
    }
    // The browser, without the token, gets the login form.
    let page = browser::open(&format!("{ui}/decisions")).await;
    assert_eq!(page.title(), "Log in · hookwarden");
    assert!(!page.dom.contains("dregs/t1"));
}

#[tokio::test]
async fn pages_go_back_by_keyset_and_bad_requests_say_why() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(&format!("{RULES}\n[ui]\nenabled = true\n"))
        .start(&sink.url())
        .await;
    let ids: Vec<String> = (0..57).map(|i| format!("p{i:02}")).collect();
    for (i, id) in ids.iter().enumerate() {
        let at = format!("2026-11-30T10:{:02}:{:02}Z", i / 60, i % 60);
        w.publish(
            "dregs",
            "identity.scored",
            id,
            &dregs_event(id, "pager", &at, 90, "test"),
        )
        .await;
    }
    for id in &ids {
        w.decision("dregs", id).await;
    }
    let ui = format!("{}/ui", w.admin);
    for first in [
        format!("{ui}/decisions?subject=dregs%2Fpager"),
        format!("{ui}/subject?key=dregs%2Fpager"),
    ] {
        let list = if first.contains("/subject") {
            "events"
        } else {
            "rows"
        };
        let (status, page1) = get_json(&first).await;
        assert_eq!(status, 200);
        let mut seen = event_keys(&page1, list);
        assert_eq!(seen.len(), 50, "{first}");
        let next = page1["next"].as_str().expect("a next page");
        let (_, page2) = get_json(&format!("{}{next}", w.admin)).await;
        seen.extend(event_keys(&page2, list));
        assert!(page2["next"].is_null(), "{first}: the last page");
        let mut expected: Vec<String> = ids.iter().map(|i| format!("dregs/{i}")).collect();
        expected.sort();
        seen.sort();
        assert_eq!(seen, expected, "{first}: every event once");
    }

    for (path, status, error) in [
        (
            "/decisions?outcome=won",
            400,
            "outcome: unknown outcome \"won\"; expected one of acted, matched, no_match, \
             tripped, dead_lettered, stale, no_subject, duplicate",
        ),
        (
            "/decisions?from=yesterday",
            400,
            "from: \"yesterday\" is not a time (write 2026-12-01T06:30, UTC, or RFC 3339)",
        ),
        ("/subject", 400, "key: give the subject as provider/subject"),
        (
            "/subject?key=dregs%2Fnobody",
            404,
            "no subject dregs/nobody in the state store",
        ),
        ("/nothing", 404, "no page /ui/nothing"),
    ] {
        let (got, json) = get_json(&format!("{ui}{path}")).await;
        assert_eq!(
            (got, json["error"].as_str().unwrap()),
            (status, error),
            "{path}"
        );
    }
    let client = reqwest::Client::new();
    let answer = client
        .delete(format!("{ui}/decisions"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 405);
    assert_eq!(
        serde_json::from_str::<Value>(&answer.text().await.unwrap()).unwrap()["error"],
        "the web view is read-only: DELETE is not allowed here"
    );
}

#[tokio::test]
async fn ui_enabled_false_serves_no_pages() {
    let sink = Sink::start().await;
    let w = WorkerHarness::for_dregs(&format!("{RULES}\n[ui]\nenabled = false\n"))
        .start(&sink.url())
        .await;
    let (status, _, _) = get(&format!("{}/ui/", w.admin), &[]).await;
    assert_eq!(status, 404);
    let (status, _, _) = get(&format!("{}/healthz", w.admin), &[]).await;
    assert_eq!(status, 200);
}
