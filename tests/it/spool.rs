//! The spool through a broker outage: events answered 200 while the broker is cut off are on
//! disk, reach the queue in arrival order once it is back, survive a listener restart, and
//! a full spool answers 503. The broker is cut with an in-test TCP proxy.

use std::time::Duration;

use crate::harness::{
    Broker, Harness, Proxy, TestListener, Want, admin_get, event, json, metric, tempdir, wait_for,
    wait_for_metric,
};

/// Takes messages off `queue` until `expected` have come; returns their ids in arrival order.
async fn queue_ids(broker: &Broker, queue: &str, expected: usize) -> Vec<String> {
    let ids = std::sync::Mutex::new(Vec::new());
    let ids = &ids;
    wait_for(
        &format!("{expected} messages on {queue}"),
        Duration::from_secs(20),
        move || async move {
            let got = broker.drain_ids(queue).await;
            let mut ids = ids.lock().unwrap();
            ids.extend(got);
            if ids.len() >= expected {
                Ok(())
            } else {
                let last = &ids[ids.len().saturating_sub(5)..];
                Err(format!("{} taken, the last: {last:?}", ids.len()))
            }
        },
    )
    .await;
    std::mem::take(&mut *ids.lock().unwrap())
}

/// Waits (at most `within`) until the listener reports an empty spool.
async fn spool_drained(l: &TestListener, within: Duration) {
    wait_for_metric(&l.admin, "hookwarden_spool_depth", Want::Equal(0.0), within).await;
}

/// A listener with a spool in `dir`, connected to the broker through `proxy`.
async fn spooling_listener(proxy: &Proxy, dir: &tempdir::Dir) -> TestListener {
    let l = Harness::new()
        .amqp("url", &format!("\"{}\"", proxy.url()))
        .spool(&dir.path.join("spool.db"), "")
        .start()
        .await;
    let publisher = l.running.as_ref().unwrap().publisher.clone();
    assert!(publisher.wait_connected(Duration::from_secs(10)).await);
    l
}

/// A listener with a spool in `dir`, connected through a proxy that is then cut.
async fn spooling_listener_cut_off(dir: &tempdir::Dir) -> (Proxy, TestListener) {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let l = spooling_listener(&proxy, dir).await;
    proxy.down();
    let publisher = l.running.as_ref().unwrap().publisher.clone();
    wait_for("the broker seen as down", Duration::from_secs(10), || {
        let connected = publisher.is_connected();
        async move {
            if connected {
                Err("the publisher still connected".to_owned())
            } else {
                Ok(())
            }
        }
    })
    .await;
    (proxy, l)
}

#[tokio::test]
async fn events_during_an_outage_are_spooled_then_forwarded_in_order() {
    let dir = tempdir::Dir::new();
    let (proxy, mut l) = spooling_listener_cut_off(&dir).await;
    // Still ready: the spool takes events.
    assert_eq!(admin_get(&l.admin, "/readyz").await.0, 200);
    let ids: Vec<String> = (0..20).map(|i| format!("out_{i:02}")).collect();
    for id in &ids {
        let a = l.send("dregs", &event(id)).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(json(&a)["status"], "accepted");
    }
    // The same id again during the outage is still a duplicate.
    assert_eq!(
        json(&l.send("dregs", &event("out_00")).await)["status"],
        "duplicate"
    );
    let (_, metrics) = admin_get(&l.admin, "/metrics").await;
    assert!(metrics.contains("hookwarden_spooled_total 20"), "{metrics}");

    proxy.up();
    let broker = Broker::connect().await;
    let got = queue_ids(&broker, &l.names.queue, ids.len()).await;
    assert_eq!(got, ids, "every spooled event, once, in arrival order");
    spool_drained(&l, Duration::from_secs(10)).await;
    // Back to direct publishing.
    assert_eq!(l.send("dregs", &event("after")).await.status, 200);
    assert_eq!(queue_ids(&broker, &l.names.queue, 1).await, vec!["after"]);
    l.stop().await;
}

#[tokio::test]
async fn a_restarted_listener_forwards_what_its_spool_holds() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let dir = tempdir::Dir::new();
    let spool = dir.path.join("spool.db");
    proxy.down();
    let mut first = Harness::new()
        .amqp("url", &format!("\"{}\"", proxy.url()))
        .spool(&spool, "")
        .start()
        .await;
    for i in 0..5 {
        assert_eq!(
            first
                .send("dregs", &event(&format!("kept_{i}")))
                .await
                .status,
            200
        );
    }
    first.stop().await;
    // The second listener (same spool, broker reachable) forwards before anything else.
    let second = Harness::new()
        .spool(&spool, "")
        .start_with_names(first.names.clone_names())
        .await;
    let broker = Broker::connect().await;
    let got = queue_ids(&broker, &second.names.queue, 5).await;
    assert_eq!(got, (0..5).map(|i| format!("kept_{i}")).collect::<Vec<_>>());
    drop(first);
}

#[tokio::test]
async fn a_full_spool_answers_503() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let dir = tempdir::Dir::new();
    proxy.down();
    let l = Harness::new()
        .amqp("url", &format!("\"{}\"", proxy.url()))
        .spool(&dir.path.join("spool.db"), "max_bytes = 600")
        .start()
        .await;
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(
            l.send("dregs", &event(&format!("f{i}")))
                .await
                .status
                .as_u16(),
        );
    }
    assert!(statuses.starts_with(&[200, 200]), "{statuses:?}");
    assert_eq!(statuses.last(), Some(&503), "{statuses:?}");
    assert_eq!(admin_get(&l.admin, "/readyz").await.0, 503);
}

#[tokio::test]
async fn under_steady_load_after_an_outage_the_listener_returns_to_publishing_directly() {
    let dir = tempdir::Dir::new();
    let (proxy, mut l) = spooling_listener_cut_off(&dir).await;
    let outage: Vec<String> = (0..20).map(|i| format!("out_{i:02}")).collect();
    for id in &outage {
        assert_eq!(l.send("dregs", &event(id)).await.status, 200);
    }
    proxy.up();

    // 16 clients keep sending, each its next event as soon as the last is answered: the
    // spool never sees a quiet moment in which to run empty by itself.
    let url = format!("{}/hooks/dregs", l.base);
    let mut clients = Vec::new();
    for c in 0..16 {
        let requests: Vec<_> = (0..150)
            .map(|i| {
                let body = event(&format!("load_{c:02}_{i:03}"));
                (l.sign("dregs", body.as_bytes()), body)
            })
            .collect();
        let url = url.clone();
        clients.push(tokio::spawn(async move {
            let mut ok = 0;
            for (headers, body) in requests {
                let answer =
                    hookwarden::cli::http_client::post(&url, &headers, bytes::Bytes::from(body))
                        .await
                        .unwrap();
                ok += usize::from(answer.status == 200);
            }
            ok
        }));
    }
    let spooled = |metrics: &str| metric(metrics, "hookwarden_spooled_total").unwrap_or(0.0);
    // While the load goes on, the spool empties and stays empty: later events go direct.
    spool_drained(&l, Duration::from_secs(20)).await;
    let first = spooled(&admin_get(&l.admin, "/metrics").await.1);
    // "Nothing spooled for a while" has no event to wait for: half a second of the load.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let later = spooled(&admin_get(&l.admin, "/metrics").await.1);
    let mut ok = 0;
    for client in clients {
        ok += client.await.unwrap();
    }
    assert_eq!(ok, 16 * 150, "every request answered 200");
    assert_eq!(first, later, "nothing spooled once the spool ran empty");
    assert!(
        later < f64::from(20 + 16 * 150),
        "load events went direct, not all through the spool"
    );

    // Nothing lost, nothing twice, and the outage's events first, in order.
    let broker = Broker::connect().await;
    let got = queue_ids(&broker, &l.names.queue, 20 + 16 * 150).await;
    assert_eq!(got.len(), 20 + 16 * 150);
    assert_eq!(got[..20], outage[..]);
    let distinct: std::collections::HashSet<_> = got.iter().collect();
    assert_eq!(distinct.len(), got.len());
    l.stop().await;
}

/// The broker link goes silent without a word (frozen proxy: sockets open, nothing
/// forwarded). lapin alone, on the broker's 60 s heartbeat, kept `broker_connected 1` for
/// two minutes while every event waited out its confirm timeout; the listener must notice
/// by itself, say so, and deliver what it took once a new connection works.
#[tokio::test]
async fn a_broker_link_gone_silent_is_noticed_and_what_was_taken_arrives() {
    let proxy = Proxy::start("127.0.0.1:5672").await;
    let dir = tempdir::Dir::new();
    let mut l = spooling_listener(&proxy, &dir).await;
    proxy.freeze();
    // Held off until the daemon has said so: a quick reconnect would make that a blink.
    proxy.refuse_new();
    let ids: Vec<String> = (0..5).map(|i| format!("silent_{i}")).collect();
    for id in &ids {
        let a = l.send("dregs", &event(id)).await;
        assert_eq!(a.status, 200, "{}", a.body);
    }
    // lapin alone, on the broker's 60 s heartbeat, took 120 s to notice.
    wait_for_metric(
        &l.admin,
        "hookwarden_broker_connected",
        Want::Equal(0.0),
        Duration::from_secs(30),
    )
    .await;
    proxy.up();
    let broker = Broker::connect().await;
    let got = queue_ids(&broker, &l.names.queue, ids.len()).await;
    assert_eq!(
        got, ids,
        "every event taken, once, in order, over the new connection"
    );
    l.stop().await;
}
