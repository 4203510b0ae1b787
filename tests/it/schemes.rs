//! Each signature scheme end to end through a running listener, signed as the provider
//! would sign, including Standard Webhooks sent with svix's header names.

use crate::harness::{Broker, Harness, json};
use http::{HeaderName, HeaderValue};

const GITHUB: &str = r#"
name = "gh"
scheme = "github"
secrets = ["old-secret", "gh-secret"]
"#;
const STRIPE: &str = r#"
name = "stripe"
scheme = "stripe"
secrets = ["whsec_test_stripe"]
"#;
const STANDARD: &str = r#"
name = "rewards"
scheme = "standard-webhooks"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
"#;

#[tokio::test]
async fn github_takes_id_and_type_from_its_headers() {
    let l = Harness::new().provider(GITHUB).start().await;
    let body = r#"{"action":"opened","zen":"Keep it logically awesome."}"#;
    let mut headers = l.sign("gh", body.as_bytes());
    headers.push((
        HeaderName::from_static("x-github-delivery"),
        HeaderValue::from_static("72d3162e-cc78-11e3"),
    ));
    headers.push((
        HeaderName::from_static("x-github-event"),
        HeaderValue::from_static("issues"),
    ));
    let a = l.post("/hooks/gh", &headers, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(json(&a)["id"], "72d3162e-cc78-11e3");
    let broker = Broker::connect().await;
    let msg = broker.get(&l.names.queue).await.unwrap();
    assert_eq!(msg.delivery.routing_key.as_str(), "gh.issues");
}

#[tokio::test]
async fn stripe_events_route_by_their_type() {
    let l = Harness::new().provider(STRIPE).start().await;
    let body = r#"{"id":"evt_1Stripe","type":"charge.dispute.created","object":"event"}"#;
    let a = l.send("stripe", body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let broker = Broker::connect().await;
    let msg = broker.get(&l.names.queue).await.unwrap();
    assert_eq!(
        msg.delivery.routing_key.as_str(),
        "stripe.charge.dispute.created"
    );
}

#[tokio::test]
async fn standard_webhooks_use_the_webhook_id_and_accept_svix_headers() {
    let l = Harness::new().provider(STANDARD).start().await;
    let body = r#"{"type":"tier.changed","customer_id":"cust_5520"}"#;
    let headers = l.sign("rewards", body.as_bytes());
    let id = headers
        .iter()
        .find(|(n, _)| n == "webhook-id")
        .map(|(_, v)| v.to_str().unwrap().to_owned())
        .unwrap();
    let a = l.post("/hooks/rewards", &headers, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(json(&a)["id"], id.as_str());
    // The same event as svix sends it: svix-* header names.
    let svix: Vec<_> = l
        .sign("rewards", body.as_bytes())
        .into_iter()
        .map(|(n, v)| {
            let renamed = n.as_str().replace("webhook-", "svix-");
            (HeaderName::from_bytes(renamed.as_bytes()).unwrap(), v)
        })
        .collect();
    let a = l.post("/hooks/rewards", &svix, body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let broker = Broker::connect().await;
    assert_eq!(broker.drain(&l.names.queue).await.len(), 2);
}

/// Seed of the sender's ed25519 key in the `v1a` test (bytes 0, 1, …, 31) and its public key.
const V1A_PUBLIC: &str = "whpk_A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=";
const V1A_SECRET: &str =
    "whsk_AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8DoQe/884Qvh1w3RjnS8CZZ+TWMJulDV8d3IZkElUxuA==";

/// `v1a,<base64>` over `{id}.{ts}.{body}`, signed by Python's `cryptography` (an ed25519
/// implementation of its own) with the key from `seed_byte`, `seed_byte + 1`, ….
fn python_v1a(seed_start: u8, id: &str, ts: &str, body: &str) -> String {
    let script = "import base64, sys\n\
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey\n\
        start, message = int(sys.argv[1]), sys.argv[2].encode()\n\
        key = Ed25519PrivateKey.from_private_bytes(bytes(range(start, start + 32)))\n\
        print('v1a,' + base64.b64encode(key.sign(message)).decode())\n";
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            script,
            &seed_start.to_string(),
            &format!("{id}.{ts}.{body}"),
        ])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "python3 with the cryptography package signs: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn standard_webhooks_v1a_signatures_of_an_independent_signer_are_verified_with_public_keys() {
    let provider = format!(
        "name = \"rewards\"\nscheme = \"standard-webhooks\"\n\
         secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\npublic_keys = [\"{V1A_PUBLIC}\"]\n"
    );
    let l = Harness::new().provider(&provider).start().await;
    let body = r#"{"type":"tier.changed","customer_id":"cust_5520"}"#;
    let ts = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .to_string();
    let headers = |id: &str, signature: &str| {
        vec![
            (
                HeaderName::from_static("webhook-id"),
                HeaderValue::from_str(id).unwrap(),
            ),
            (
                HeaderName::from_static("webhook-timestamp"),
                HeaderValue::from_str(&ts).unwrap(),
            ),
            (
                HeaderName::from_static("webhook-signature"),
                HeaderValue::from_str(signature).unwrap(),
            ),
        ]
    };
    let good = python_v1a(0, "msg_v1a_ok", &ts, body);
    let a = l
        .post("/hooks/rewards", &headers("msg_v1a_ok", &good), body)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(json(&a)["id"], "msg_v1a_ok");

    // Every way it can be wrong: 401 `mismatch`, nothing published.
    let other_key = python_v1a(1, "msg_v1a_bad", &ts, body);
    let signed_for_other_body = python_v1a(0, "msg_v1a_bad", &ts, r#"{"type":"tier.changed"}"#);
    let as_v1 = good.replacen("v1a,", "v1,", 1);
    let truncated = good[..good.len() - 8].to_owned();
    let short = format!("v1a,{}", base64_of(&[9u8; 63]));
    for (what, signature) in [
        ("another key", other_key.as_str()),
        ("another body", signed_for_other_body.as_str()),
        ("under v1", as_v1.as_str()),
        ("truncated", truncated.as_str()),
        ("not base64", "v1a,n0t*base64!"),
        ("63 bytes", short.as_str()),
    ] {
        let a = l
            .post("/hooks/rewards", &headers("msg_v1a_bad", signature), body)
            .await;
        assert_eq!(a.status, 401, "{what}: {}", a.body);
        assert_eq!(json(&a)["code"], "mismatch", "{what}");
    }
    // The same provider's shared secret still signs v1.
    let a = l.send("rewards", body).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let broker = Broker::connect().await;
    assert_eq!(broker.drain(&l.names.queue).await.len(), 2);

    // `hookwarden send` signs v1a with the sender's secret key.
    let out = crate::harness::run_cli(&[
        "send",
        "--scheme",
        "standard-webhooks",
        "--secret",
        V1A_SECRET,
        "--url",
        &format!("{}/hooks/rewards", l.base),
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/reward-tier-changed.json"
        ),
    ])
    .await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        crate::harness::explain(&out)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("200 "));
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
