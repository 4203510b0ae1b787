//! Limits at the door: a provider sending three times its `rate_limit` for three seconds gets
//! about its limit accepted, the rest `429 rate_limited` with a `Retry-After`, nothing over the
//! limit in the queue, and another provider is not slowed down.

use std::time::{Duration, Instant};

use crate::harness::{Broker, DREGS, Harness, admin_get, event, json};

/// 50 requests a second, bursts of 50.
const STORM: &str = r#"
name = "storm"
scheme = "hmac-sha256"
secrets = ["storm-secret"]
signature_header = "X-Storm-Signature"
prefix = "sha256="
rate_limit = { requests = 50, per = "1s", burst = 50 }
"#;

#[tokio::test]
async fn a_provider_over_its_rate_limit_gets_429_and_another_is_unaffected() {
    let l = Harness::new().provider(STORM).provider(DREGS).start().await;
    let (mut accepted, mut limited, mut calm) = (0u32, 0u32, 0u32);
    let mut retry_after = Vec::new();
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / 150));
    // 150 a second, three times the limit, for three seconds; one in ten to the other provider.
    for n in 0..450 {
        tick.tick().await;
        let a = l.send("storm", &event(&format!("storm-{n}"))).await;
        match a.status.as_u16() {
            200 => accepted += 1,
            429 => {
                limited += 1;
                assert_eq!(json(&a)["code"], "rate_limited", "{}", a.body);
                let after = a
                    .headers
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("429 without a whole-seconds Retry-After: {a:?}"));
                retry_after.push(after);
            }
            other => panic!("storm request {n}: {other} {}", a.body),
        }
        if n % 10 == 0 {
            let a = l.send("dregs", &event(&format!("calm-{n}"))).await;
            assert_eq!(a.status, 200, "the other provider: {}", a.body);
            calm += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // A full bucket, then 50 a second for as long as the storm lasted.
    let expected = 50.0 + 50.0 * elapsed;
    assert!(
        (f64::from(accepted) - expected).abs() <= expected * 0.1,
        "{accepted} accepted in {elapsed:.2} s, expected about {expected:.0}"
    );
    assert_eq!(accepted + limited, 450);
    assert!(retry_after.iter().all(|&s| s >= 1), "{retry_after:?}");
    // Nothing over the limit reached the queue: the accepted storm and the calm provider.
    let broker = Broker::connect().await;
    assert_eq!(
        broker.drain(&l.names.queue).await.len(),
        (accepted + calm) as usize
    );
    let (_, metrics) = admin_get(&l.admin, "/metrics").await;
    let line = format!(r#"hookwarden_requests_total{{provider="storm",status="429"}} {limited}"#);
    assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
}
