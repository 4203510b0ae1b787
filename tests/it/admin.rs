//! The admin address: health, readiness and the metrics an operator would graph.

use crate::harness::{Harness, admin_get, event};

#[tokio::test]
async fn health_readiness_and_metrics() {
    let l = Harness::new().start().await;
    assert_eq!(admin_get(&l.admin, "/healthz").await.0, 200);
    assert_eq!(admin_get(&l.admin, "/readyz").await.0, 200);
    assert_eq!(l.send("dregs", &event("evt_m1")).await.status, 200);
    assert_eq!(l.send("dregs", &event("evt_m1")).await.status, 200);
    assert_eq!(
        l.post("/hooks/dregs", &[], &event("evt_m2")).await.status,
        401
    );
    let (status, text) = admin_get(&l.admin, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"hookwarden_requests_total{provider="dregs",status="200"} 2"#,
        r#"hookwarden_requests_total{provider="dregs",status="401"} 1"#,
        r#"hookwarden_verification_failures_total{provider="dregs",reason="missing_signature"} 1"#,
        r#"hookwarden_duplicates_total{provider="dregs"} 1"#,
        "hookwarden_handoff_seconds_count 1",
        "hookwarden_broker_connected 1",
        "hookwarden_publishes_in_flight 0",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // The public port serves only /hooks/*.
    assert_eq!(l.post("/metrics", &[], "").await.status, 404);
}
