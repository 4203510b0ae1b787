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
