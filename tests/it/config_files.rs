//! Config loading as an operator meets it: the shipped example parses, every problem in a
//! bad file is reported at once with file, line, key and reason, and environment
//! overrides apply to scalars only and never rewrite secrets.

use std::collections::HashMap;

use hookwarden::listener::config::ListenerConfig;
use hookwarden::worker::config::WorkerConfig;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn the_shipped_listener_toml_is_valid() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/listener.toml")).unwrap();
    let config = ListenerConfig::parse("listener.toml", &text, &HashMap::new()).unwrap();
    let names: Vec<_> = config.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["dregs", "reputation", "rewards", "github"]);
}

const BAD: &str = r#"[server]
listen = "127.0.0.1:8080"
max_body = "lots"

[amqp]
exchange = "hookwarden"

[[providers]]
name = "ok"
scheme = "github"
secrets = ["s"]

[[providers]]
name = "bad"
scheme = "hmac-sha512"
secrets = ["env:NOT_SET_ANYWHERE"]

[[providers]]
name = "typo"
scheme = "stripe"
secrets = ["whsec_x"]
tolerence = "5m"
"#;

#[test]
fn every_problem_is_named_with_file_line_and_key() {
    let err = ListenerConfig::parse("listener.toml", BAD, &HashMap::new()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("listener.toml:3: server.max_body: invalid size \"lots\""),
        "{text}"
    );
    assert!(
        text.contains(r#"listener.toml:15: providers[1].scheme: unknown scheme "hmac-sha512"; expected one of hmac-sha256, github, stripe, standard-webhooks"#),
        "{text}"
    );
    assert!(
        text.contains(r#"providers[1].secrets[0]: provider "bad": environment variable NOT_SET_ANYWHERE is not set"#),
        "{text}"
    );
    assert!(
        text.contains("providers[2].tolerence: unknown field `tolerence`"),
        "{text}"
    );
    assert_eq!(err.problems.len(), 4, "{text}");
}

#[test]
fn zero_timeouts_are_refused() {
    let text = "[server]\nheader_timeout = \"0s\"\nbody_timeout = \"0s\"\nhandoff_timeout = \"0s\"\n\
                [[providers]]\nname = \"gh\"\nscheme = \"github\"\nsecrets = [\"s\"]\n";
    let err = ListenerConfig::parse("l.toml", text, &HashMap::new()).unwrap_err();
    let text = err.to_string();
    for key in ["header_timeout", "body_timeout", "handoff_timeout"] {
        assert!(
            text.contains(&format!("server.{key}: must be greater than 0")),
            "{text}"
        );
    }
    assert_eq!(err.problems.len(), 3, "{text}");
}

#[test]
fn syntax_errors_carry_their_line() {
    let err =
        ListenerConfig::parse("l.toml", "[server]\nlisten = \n", &HashMap::new()).unwrap_err();
    assert!(
        err.to_string().starts_with("l.toml:2: invalid TOML"),
        "{err}"
    );
}

const MINIMAL: &str = r#"
[[providers]]
name = "p"
scheme = "hmac-sha256"
signature_header = "X-Sig"
secrets = ["env:P_SECRET"]
"#;

#[test]
fn environment_overrides_scalars_and_keeps_secrets_verbatim() {
    let e = env(&[
        ("HOOKWARDEN__SERVER__MAX_BODY", "2048"),
        ("HOOKWARDEN__AMQP__EXCHANGE", "other"),
        ("HOOKWARDEN__DEDUPE__TTL", "1h"),
        ("P_SECRET", "000123"),
    ]);
    let config = ListenerConfig::parse("l.toml", MINIMAL, &e).unwrap();
    assert_eq!(config.server.max_body, 2048);
    assert_eq!(config.amqp.exchange, "other");
    assert_eq!(config.dedupe.ttl, std::time::Duration::from_secs(3600));
    // A secret "000123" must verify as "000123", not "123".
    let p = config.provider("p").unwrap();
    let body = b"{}";
    let now = std::time::SystemTime::now();
    let headers = p
        .scheme
        .sign(
            &p.scheme.key_from_secret("000123").unwrap(),
            body,
            now,
            "id",
        )
        .unwrap();
    let mut map = http::HeaderMap::new();
    for (n, v) in headers {
        map.insert(n, v);
    }
    assert!(p.scheme.verify(&p.keys, &map, body, now).is_ok());
}

#[test]
fn environment_variables_that_name_no_key_or_a_list_entry_are_errors() {
    let e = env(&[
        ("HOOKWARDEN__SERVER__LISTN", "0.0.0.0:1"),
        ("P_SECRET", "x"),
    ]);
    let err = ListenerConfig::parse("l.toml", MINIMAL, &e).unwrap_err();
    assert!(
        err.to_string().contains("HOOKWARDEN__SERVER__LISTN"),
        "{err}"
    );
    let e = env(&[
        ("HOOKWARDEN__PROVIDERS__0__SECRETS", "x"),
        ("P_SECRET", "x"),
    ]);
    let err = ListenerConfig::parse("l.toml", MINIMAL, &e).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("HOOKWARDEN__PROVIDERS__0__SECRETS"), "{text}");
    assert!(text.contains("list"), "{text}");
}

#[test]
fn scheme_specific_keys_are_refused_on_other_schemes() {
    let text = r#"
[[providers]]
name = "gh"
scheme = "github"
secrets = ["s"]
signature_header = "X-Other"
"#;
    let err = ListenerConfig::parse("l.toml", text, &HashMap::new()).unwrap_err();
    assert!(
        err.to_string()
            .contains("providers[0].signature_header: only for scheme \"hmac-sha256\""),
        "{err}"
    );
    let text = r#"
[[providers]]
name = "sw"
scheme = "standard-webhooks"
secrets = ["whsec_not base64!"]
"#;
    let err = ListenerConfig::parse("l.toml", text, &HashMap::new()).unwrap_err();
    assert!(err.to_string().contains("providers[0].secrets[0]"), "{err}");
    assert!(
        !err.to_string().contains("not base64!"),
        "secret leaked: {err}"
    );
}

#[test]
fn the_shipped_rules_file_is_valid() {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rules.toml")).unwrap();
    let config =
        hookwarden::worker::config::WorkerConfig::parse("rules.toml", &text, &HashMap::new())
            .unwrap();
    let names: Vec<_> = config.rules.rules.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "quarantine-low-humanity",
            "review-sharp-drop",
            "throttle-suspicious",
            "merchant-caution"
        ]
    );
}

/// Operators who load deploy/rabbitmq-definitions.json must get exactly what the daemons
/// declare, or the daemons' declarations fail with 406.
#[test]
fn the_broker_definitions_match_the_declared_topology() {
    use hookwarden::broker::topology::{Topology, events_queue_arguments};
    use lapin::types::AMQPValue;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/deploy/rabbitmq-definitions.json"
    ))
    .unwrap();
    let defs: serde_json::Value = serde_json::from_str(&text).unwrap();
    let amqp = hookwarden::config::amqp::AmqpConfig::default();
    let topology = Topology::for_worker(&amqp);
    let queue = |name: &str| {
        defs["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["name"] == name)
            .unwrap_or_else(|| panic!("queue {name} missing"))
            .clone()
    };
    let events = queue(&topology.queue);
    let mut expected = serde_json::Map::new();
    for (k, v) in events_queue_arguments(&topology).inner() {
        let v = match v {
            AMQPValue::LongString(s) => {
                serde_json::Value::from(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            AMQPValue::LongLongInt(n) => serde_json::Value::from(*n),
            other => panic!("unexpected argument type {other:?}"),
        };
        expected.insert(k.to_string(), v);
    }
    assert_eq!(events["arguments"], serde_json::Value::Object(expected));
    assert_eq!(events["durable"], true);
    for name in [
        &topology.dead_letter_queue,
        topology.review_queue.as_ref().unwrap(),
    ] {
        assert_eq!(
            queue(name)["arguments"],
            serde_json::json!({"x-queue-type": "quorum"})
        );
    }
    let exchange = |name: &str| {
        defs["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(exchange(&topology.exchange)["type"], "fanout");
    assert_eq!(exchange(&topology.dead_letter_exchange)["type"], "fanout");
    let bindings = defs["bindings"].as_array().unwrap();
    assert!(
        bindings
            .iter()
            .any(|b| b["source"] == topology.exchange.as_str()
                && b["destination"] == topology.queue.as_str()
                && b["routing_key"] == "#")
    );
    assert!(
        bindings
            .iter()
            .any(|b| b["source"] == topology.dead_letter_exchange.as_str()
                && b["destination"] == topology.dead_letter_queue.as_str())
    );
}

/// Found by the config_load fuzz target: the `config` crate read this quoted key as a path
/// with index 10,276,875 and allocated that many entries (out of memory).
#[test]
fn keys_that_look_like_paths_are_refused_not_expanded() {
    let text = "\"99999966.000[10276875].662\"=\"X\"\n[[providers]]\nname = \"p\"\nscheme = \"github\"\nsecrets = [\"s\"]\n";
    let err = ListenerConfig::parse("l.toml", text, &HashMap::new()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("l.toml:1: a key may not contain '.', '[' or ']'"),
        "{err}"
    );
    let err = hookwarden::worker::config::WorkerConfig::parse(
        "r.toml",
        "[x]\n\"a[9]\" = 1\n",
        &HashMap::new(),
    )
    .err()
    .expect("refused");
    assert!(err.to_string().contains("r.toml:2"), "{err}");
}

/// A listener config whose scheme is unknown gets that one problem for the provider: which
/// other keys fit depends on the scheme. Problems elsewhere are still reported.
#[test]
fn an_unknown_scheme_is_one_problem_not_one_per_scheme_key() {
    let text = r#"[server]
max_body = "lots"

[[providers]]
name = "dregs"
scheme = "hmac-sha512"
secrets = ["s"]
signature_header = "X-Dregs-Signature"
encoding = "hex"
prefix = "sha256="
event_id = "no pointer"
"#;
    let err = ListenerConfig::parse("listener.toml", text, &HashMap::new()).unwrap_err();
    let text = err.to_string();
    assert_eq!(
        text,
        "listener.toml:2: server.max_body: invalid size \"lots\"; write bytes or a unit such as \
         \"1MiB\" for key `max_body`\n\
         listener.toml:6: providers[0].scheme: unknown scheme \"hmac-sha512\"; expected one of \
         hmac-sha256, github, stripe, standard-webhooks\n\
         listener.toml:11: providers[0].event_id: \"no pointer\" is neither a JSON pointer \
         (\"/id\") nor a header (\"header:X-Event-Id\")",
    );
}

/// A `HOOKWARDEN__…` variable at fault is named alone: no line of the file is to blame.
#[test]
fn environment_problems_name_the_variable_not_a_line_of_the_file() {
    let e = env(&[
        ("HOOKWARDEN__SERVER__LISTN", "0.0.0.0:1"),
        ("HOOKWARDEN__SERVR__LISTEN", "0.0.0.0:1"),
        ("HOOKWARDEN__DEDUPE__TTL", "0s"),
        ("P_SECRET", "x"),
    ]);
    let text = format!("[server]\nlisten = \"127.0.0.1:8080\"\n[dedupe]\nttl = \"1h\"\n{MINIMAL}");
    let err = ListenerConfig::parse("listener.toml", &text, &e).unwrap_err();
    let lines: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "environment variable HOOKWARDEN__SERVR__LISTEN: names no key of the listener config \
             (unknown section `servr`; expected one of server, amqp, dedupe, log, telemetry, spool, providers)",
            "environment variable HOOKWARDEN__SERVER__LISTN: names no key of the listener config \
             (unknown field `listn`, expected one of `listen`, `admin_listen`, `max_body`, \
             `handoff_timeout`, `header_timeout`, `body_timeout`, `shutdown_grace`, \
             `max_connections`, `trusted_proxies`)",
            "environment variable HOOKWARDEN__DEDUPE__TTL: must be greater than 0",
        ]
    );
    // A value the variable sets that cannot be read is the variable's too.
    let e = env(&[("HOOKWARDEN__SERVER__MAX_BODY", "lots"), ("P_SECRET", "x")]);
    let err = ListenerConfig::parse("listener.toml", MINIMAL, &e).unwrap_err();
    assert_eq!(
        err.to_string(),
        "environment variable HOOKWARDEN__SERVER__MAX_BODY: invalid size \"lots\"; write bytes \
         or a unit such as \"1MiB\" for key `max_body`"
    );
    // The same for the worker's rules file.
    let e = env(&[("HOOKWARDEN__STATE__PAHT", "/tmp/x")]);
    let err = WorkerConfig::parse("rules.toml", "[state]\npath = \"/tmp/w.db\"\n", &e)
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "environment variable HOOKWARDEN__STATE__PAHT: names no key of the worker rules file \
         (unknown field `paht`, expected one of `path`, `url`, `pool_size`, `statement_timeout`, \
         `retention`)"
    );
    // An unknown key written in the file is still the file's, with its line.
    let e = env(&[("HOOKWARDEN__SERVER__LISTN", "x"), ("P_SECRET", "x")]);
    let text = format!("[server]\nlistn = \"x\"\n{MINIMAL}");
    let err = ListenerConfig::parse("listener.toml", &text, &e).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("listener.toml:2: server.listn: unknown field `listn`"),
        "{err}"
    );
}

/// Each daemon given the other's file says so, once, and names the command that takes it.
#[test]
fn a_file_for_the_other_daemon_is_named_as_such() {
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/rules.toml")).unwrap();
    let listener =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/listener.toml")).unwrap();
    let err = ListenerConfig::parse("deploy/rules.toml", &rules, &HashMap::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "deploy/rules.toml: this looks like a worker rules file, not a listener config (it has \
         [state], [archive], [ui], [[subjects]], [[rules]], [enrich], [actions]); the worker takes it: \
         hookwarden-worker --config deploy/rules.toml"
    );
    let err = WorkerConfig::parse("listener.toml", &listener, &HashMap::new())
        .err()
        .expect("refused");
    assert_eq!(
        err.to_string(),
        "listener.toml: this looks like a listener config, not a worker rules file (it has \
         [dedupe], [spool], [[providers]]); the listener takes it: hookwarden-listener \
         --config listener.toml"
    );
    // A file with sections of both is no clear sign: its stray sections are named.
    let mixed = "[state]\npath = \"x\"\n[[providers]]\nname = \"g\"\nscheme = \"github\"\nsecrets = [\"s\"]\n";
    let err = ListenerConfig::parse("l.toml", mixed, &HashMap::new()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "l.toml:1: state: a section of the worker rules file, not of the listener config; \
         expected one of server, amqp, dedupe, log, telemetry, spool, providers"
    );
    // Sections both daemons have are no sign either.
    let err = WorkerConfig::parse("r.toml", "[server]\nlisten = \"x\"\n", &HashMap::new())
        .err()
        .expect("refused");
    assert!(
        err.to_string()
            .starts_with("r.toml:2: server.listen: unknown field `listen`"),
        "{err}"
    );
}

const SUBJECTS: &str = r#"
[[subjects]]
provider = "dregs"
types = ["identity.scored"]
subject = "/data/identity_id"
scores = { humanity = "/data/scores/humanity", uniqueness = "/data/scores/uniqueness", authenticity = "/data/scores/authenticity" }

[[subjects]]
provider = "dregs"
types = ["*"]
subject = "/data/identity_id"

[[subjects]]
provider = "reputation"
types = ["Reputation_Score_Updated"]
subject = "/entity/id"
scores = { reputation = "/new_score" }

[actions.note]
kind = "log"
"#;

fn rule_problems(events: &str, when: &str) -> Vec<String> {
    let text = format!(
        "{SUBJECTS}\n[[rules]]\nname = \"r\"\nevents = {events}\nwhen = '{when}'\nactions = [\"note\"]\n"
    );
    match WorkerConfig::parse("rules.toml", &text, &HashMap::new()) {
        Ok(_) => Vec::new(),
        Err(err) => err.problems.iter().map(ToString::to_string).collect(),
    }
}

/// A score the rule names but no spec reading its events declares fails at load, however it is
/// spelled and even where evaluation would never reach it.
#[test]
fn score_names_are_checked_against_the_subjects_a_rule_reads() {
    let line = SUBJECTS.lines().count() + 5;
    for when in [
        "score.uniquness < 70.0",
        "false && score.uniquness < 70.0",
        "has(score.uniquness) && score.uniquness < 70.0",
        "has(previous.score.uniquness)",
        r#"score["uniquness"] < 70.0"#,
        r#""uniquness" in previous.score"#,
    ] {
        assert_eq!(
            rule_problems(r#"["dregs:identity.scored"]"#, when),
            [format!(
                "rules.toml:{line}: rules[0].when: no score \"uniquness\" for \
                 dregs:identity.scored; declared: humanity, uniqueness, authenticity"
            )],
            "{when}"
        );
    }
    // Declared by no spec the rule's globs reach: named with every event kind and what each
    // declares.
    assert_eq!(
        rule_problems(r#"["*:*"]"#, "has(score.humanty) && score.humanty < 30.0"),
        [format!(
            "rules.toml:{line}: rules[0].when: no score \"humanty\" for dregs:identity.scored \
             (declared: humanity, uniqueness, authenticity) or dregs:* (declared: none) \
             or reputation:Reputation_Score_Updated (declared: reputation)"
        )]
    );
    // Declared by one of them: a rule over several providers guards it with has().
    assert!(rule_problems(r#"["*:*"]"#, "has(score.humanity) && score.humanity < 30.0").is_empty());
    // An event is read by the first spec that matches it: the catch-all after the specific
    // spec never reads identity.scored, but it does read the rest of identity.*.
    assert!(rule_problems(r#"["dregs:identity.scored"]"#, "score.humanity < 30.0").is_empty());
    assert_eq!(
        rule_problems(r#"["dregs:identity.other"]"#, "score.humanity < 30.0"),
        [format!(
            "rules.toml:{line}: rules[0].when: no score \"humanity\" for dregs:*; declared: none"
        )]
    );
    // Names computed at evaluation cannot be checked; a rule no spec reads is left as it was.
    assert!(rule_problems(r#"["dregs:identity.scored"]"#, "score[subject] > 1.0").is_empty());
    assert!(rule_problems(r#"["elsewhere:*"]"#, "score.anything > 1.0").is_empty());
    assert!(
        rule_problems(
            r#"["reputation:*"]"#,
            "score.reputation < 60.0 && previous.score.reputation >= 60.0"
        )
        .is_empty()
    );
}
