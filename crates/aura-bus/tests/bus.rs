//! The event bus against a real redis-server.

use std::time::Duration;

use aura_bus::{
    Bus, BusError, Offset, Pattern, Retention,
    hub::{Hub, Start},
};
use aura_common::redis::connect;
use aura_testkit::{RedisServer, wait_until};
use serde_json::json;
use tokio_util::sync::CancellationToken;

async fn setup(redis: &RedisServer, retention: Retention) -> (Bus, Hub) {
    let conn = connect(&redis.url()).await.unwrap();
    let bus = Bus::new(conn, "aura", retention);
    let hub = Hub::start(bus.clone(), &redis.url(), 256, CancellationToken::new()).unwrap();
    (bus, hub)
}

fn patterns(p: &[&str]) -> Vec<Pattern> {
    p.iter().map(|p| Pattern::parse(p).unwrap()).collect()
}

async fn wait_subscribed(hub: &Hub, bus: &Bus) {
    // The hub subscribes asynchronously; publish probes until one arrives.
    let mut probe = hub.subscribe(patterns(&["probe.x"]), Start::Live, 16).unwrap();
    loop {
        bus.publish("probe.x", "probe", &json!({})).await.unwrap();
        if tokio::time::timeout(Duration::from_millis(50), probe.recv()).await.is_ok() {
            return;
        }
    }
}

#[tokio::test]
async fn many_subscribers_get_every_event_in_order_over_one_redis_subscription() {
    let redis = RedisServer::start();
    let (bus, hub) = setup(&redis, Retention::default()).await;
    let mut subs: Vec<_> =
        (0..1000).map(|_| hub.subscribe(patterns(&["orders.*"]), Start::Live, 256).unwrap()).collect();
    wait_until("one shared redis subscription", Duration::from_secs(5), || async {
        hub.redis_pattern_count() == 1
    })
    .await;
    wait_subscribed(&hub, &bus).await;
    for i in 0..50 {
        bus.publish("orders.eu", "created", &json!({"i": i})).await.unwrap();
    }
    for sub in subs.iter_mut() {
        for i in 0..50 {
            let event = sub.recv().await.unwrap().unwrap();
            assert_eq!(event.payload["i"], i);
        }
    }
    let mut conn = redis.client();
    let numpat: i64 = redis::cmd("PUBSUB").arg("NUMPAT").query(&mut conn).unwrap();
    assert!(numpat <= 3, "pattern subscriptions on redis: {numpat}");
}

#[tokio::test]
async fn resume_from_offset_has_no_gap_and_no_duplicate() {
    let redis = RedisServer::start();
    let (bus, hub) = setup(&redis, Retention::default()).await;
    let mut first = hub.subscribe(patterns(&["t.a"]), Start::Beginning, 64).unwrap();
    for i in 0..10 {
        bus.publish("t.a", "n", &json!({"i": i})).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut last: Option<Offset> = None;
    for _ in 0..4 {
        let e = first.recv().await.unwrap().unwrap();
        seen.push(e.payload["i"].as_i64().unwrap());
        last = Some(e.offset);
    }
    drop(first);
    // While disconnected, more events are published.
    let publisher = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 10..200 {
                bus.publish("t.a", "n", &json!({"i": i})).await.unwrap();
            }
        })
    };
    let mut second = hub.subscribe(patterns(&["t.a"]), Start::After(last.unwrap()), 64).unwrap();
    while seen.len() < 200 {
        let e = second.recv().await.unwrap().unwrap();
        seen.push(e.payload["i"].as_i64().unwrap());
    }
    publisher.await.unwrap();
    assert_eq!(seen, (0..200).collect::<Vec<_>>());
}

#[tokio::test]
async fn slow_subscriber_is_cut_off_with_a_resume_offset_while_fast_one_gets_all() {
    let redis = RedisServer::start();
    let conn = connect(&redis.url()).await.unwrap();
    let bus = Bus::new(conn, "aura", Retention::default());
    let hub = Hub::start(bus.clone(), &redis.url(), 8, CancellationToken::new()).unwrap();
    let mut slow = hub.subscribe(patterns(&["s.x"]), Start::Live, 1).unwrap();
    let mut fast = hub.subscribe(patterns(&["s.x"]), Start::Live, 1024).unwrap();
    wait_subscribed(&hub, &bus).await;
    let fast_reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 500 {
            fast.recv().await.unwrap().unwrap();
            n += 1;
        }
        n
    });
    for i in 0..500 {
        bus.publish("s.x", "n", &json!({"i": i})).await.unwrap();
    }
    assert_eq!(fast_reader.await.unwrap(), 500);
    let mut got = 0;
    let mut last = String::new();
    let err = loop {
        match slow.recv().await.expect("ends with an error, not silently") {
            Ok(e) => {
                got += 1;
                last = e.offset.to_string();
            }
            Err(err) => break err,
        }
    };
    assert!(got < 500);
    // Resuming from the offset it is given loses nothing: it is the last one it received.
    assert!(matches!(&err, BusError::Lagged { resume_from } if *resume_from == last), "{err} vs {last}");
    drop(slow);
    wait_until("every subscriber released", Duration::from_secs(5), || async { hub.subscriber_count() == 0 })
        .await;
}

#[tokio::test]
async fn trimmed_offset_is_out_of_range_and_lost_history_changes_epoch() {
    let redis = RedisServer::start();
    let retention = Retention { max_len: 10, max_age: Duration::from_secs(3600) };
    let (bus, _hub) = setup(&redis, retention).await;
    let first = bus.publish("h.t", "n", &json!({})).await.unwrap();
    // MAXLEN ~ trims whole stream nodes (100 entries); flood far past that.
    for _ in 0..500 {
        bus.publish("h.t", "n", &json!({})).await.unwrap();
    }
    let err = bus.history("h.t", Some(&first), 10).await.unwrap_err();
    assert!(matches!(err, BusError::OutOfRange { .. }), "{err}");
    let mut conn = redis.client();
    let () = redis::cmd("FLUSHALL").query(&mut conn).unwrap();
    bus.publish("h.t", "n", &json!({})).await.unwrap();
    let err = bus.history("h.t", Some(&first), 10).await.unwrap_err();
    assert!(matches!(err, BusError::EpochChanged { .. }), "{err}");
}

#[tokio::test]
async fn live_delivery_resumes_after_redis_restart_and_replay_closes_the_gap() {
    let mut redis = RedisServer::start_with(aura_testkit::Persistence::AofAlways, &[]);
    let (bus, hub) = setup(&redis, Retention::default()).await;
    let mut sub = hub.subscribe(patterns(&["r.x"]), Start::Beginning, 1024).unwrap();
    bus.publish("r.x", "n", &json!({"i": 0})).await.unwrap();
    assert_eq!(sub.recv().await.unwrap().unwrap().payload["i"], 0);
    redis.restart();
    // Publishing succeeds again once the connection manager reconnects.
    let mut i = 1;
    wait_until("publish after restart", Duration::from_secs(10), || {
        let bus = bus.clone();
        async move { bus.publish("r.x", "n", &json!({"i": 1})).await.is_ok() }
    })
    .await;
    for j in 2..10 {
        bus.publish("r.x", "n", &json!({"i": j})).await.unwrap();
    }
    while i < 10 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!(e.payload["i"], i);
        i += 1;
    }
}

#[tokio::test]
async fn bad_input_is_rejected() {
    let redis = RedisServer::start();
    let (bus, hub) = setup(&redis, Retention::default()).await;
    assert!(matches!(bus.publish("", "t", &json!({})).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.publish("a..b", "t", &json!({})).await, Err(BusError::Invalid(_))));
    assert!(Pattern::parse("a.>.c").is_err());
    assert!("garbage".parse::<Offset>().is_err());
    assert!(matches!(hub.subscribe(patterns(&["a.*"]), Start::Beginning, 1), Err(BusError::Invalid(_))));
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_stalled_subscriber_costs_bounded_memory() {
    let redis = RedisServer::start();
    let conn = connect(&redis.url()).await.unwrap();
    let bus = Bus::new(conn, "aura", Retention { max_len: 100, ..Retention::default() });
    let hub = Hub::start(bus.clone(), &redis.url(), 64, CancellationToken::new()).unwrap();
    // Never read: its buffers fill, then it is cut off.
    let mut stalled = hub.subscribe(patterns(&["m.x"]), Start::Live, 1).unwrap();
    wait_subscribed(&hub, &bus).await;
    let payload = json!({"blob": "x".repeat(4096)});
    for _ in 0..500 {
        bus.publish("m.x", "n", &payload).await.unwrap();
    }
    let before = rss_kib();
    // 20,000 more 4 KiB events (80 MiB in total) pass while the subscriber stalls.
    for chunk in 0..40 {
        let batch: Vec<_> = (0..500).map(|_| ("m.x".to_string(), "n".to_string(), payload.clone())).collect();
        bus.publish_batch(&batch).await.unwrap();
        let _ = chunk;
    }
    let grown_mib = rss_kib().saturating_sub(before) / 1024;
    assert!(grown_mib < 40, "memory grew by {grown_mib} MiB while a subscriber stalled");
    // The stalled subscriber was told it lagged, with a resume offset.
    let mut last = None;
    while let Some(item) = stalled.recv().await {
        last = Some(item);
    }
    assert!(matches!(last, Some(Err(BusError::Lagged { .. }))), "{last:?}");
}

#[tokio::test]
async fn a_batch_over_two_topics_arrives_live_and_in_history_with_contiguous_offsets() {
    let redis = RedisServer::start();
    let (bus, hub) = setup(&redis, Retention::default()).await;
    let mut live = hub.subscribe(patterns(&["batch.*"]), Start::Live, 256).unwrap();
    wait_subscribed(&hub, &bus).await;
    bus.publish("batch.a", "first", &json!({"i": 0})).await.unwrap();
    // Interleaved topics; payloads with the characters that delimit live records.
    let batch: Vec<(String, String, serde_json::Value)> = (1..=8)
        .map(|i| {
            let topic = if i % 3 == 0 { "batch.b" } else { "batch.a" };
            (topic.to_string(), format!("e{i}"), json!({"i": i, "text": "a|b\nc"}))
        })
        .collect();
    let offsets = bus.publish_batch(&batch).await.unwrap();
    let numbers: Vec<u64> = offsets.iter().map(|o| o.n).collect();
    // batch.a: 1 before the batch, then 2..=7 for its six events; batch.b: 1, 2.
    assert_eq!(numbers, vec![2, 3, 1, 4, 5, 2, 6, 7]);
    let mut got = Vec::new();
    for _ in 0..9 {
        let event =
            tokio::time::timeout(Duration::from_secs(5), live.recv()).await.unwrap().unwrap().unwrap();
        got.push((event.topic.clone(), event.offset.n, event.payload["i"].as_i64().unwrap()));
        if event.payload["i"] != 0 {
            assert_eq!(event.payload["text"], "a|b\nc", "payload intact");
        }
    }
    let per_topic =
        |t: &str| got.iter().filter(|(topic, ..)| topic == t).map(|(_, n, i)| (*n, *i)).collect::<Vec<_>>();
    assert_eq!(per_topic("batch.a"), vec![(1, 0), (2, 1), (3, 2), (4, 4), (5, 5), (6, 7), (7, 8)]);
    assert_eq!(per_topic("batch.b"), vec![(1, 3), (2, 6)]);
    let (history, _) = bus.history("batch.a", None, 100).await.unwrap();
    let history: Vec<u64> = history.iter().map(|e| e.offset.n).collect();
    assert_eq!(history, (1..=7).collect::<Vec<_>>());
    // History pages from any offset, also one inside a stored batch (2..=7 are one entry).
    let epoch = offsets[0].epoch.clone();
    for after in 0..=7u64 {
        for limit in 1..=3usize {
            let from = (after > 0).then(|| Offset { epoch: epoch.clone(), n: after });
            let (page, more) = bus.history("batch.a", from.as_ref(), limit).await.unwrap();
            let numbers: Vec<u64> = page.iter().map(|e| e.offset.n).collect();
            let want: Vec<u64> = (after + 1..=7).take(limit).collect();
            assert_eq!((numbers, more), (want, after + (limit as u64) < 7), "after {after}, limit {limit}");
            assert!(page.iter().filter(|e| e.payload["i"] != 0).all(|e| e.payload["text"] == "a|b\nc"));
        }
    }
    // Types may not hold the record delimiters.
    assert!(matches!(bus.publish("batch.a", "bad|type", &json!({})).await, Err(BusError::Invalid(_))));
    assert!(matches!(bus.publish("batch.a", "bad\ntype", &json!({})).await, Err(BusError::Invalid(_))));
}

/// Once `wait_subscribed` returns, the very next publish is delivered: no probing needed
/// (the Events service answers Subscribe only then).
#[tokio::test]
async fn a_confirmed_subscription_gets_the_very_next_event() {
    let redis = RedisServer::start();
    let (bus, hub) = setup(&redis, Retention::default()).await;
    for round in 0..20 {
        let pattern = patterns(&[&format!("fresh{round}.*")]);
        let mut sub = hub.subscribe(pattern.clone(), Start::Live, 16).unwrap();
        assert!(hub.wait_subscribed(&pattern, Duration::from_secs(5)).await, "round {round}: confirmed");
        bus.publish(&format!("fresh{round}.a"), "first", &json!({"round": round})).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), sub.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the first event never arrived"))
            .unwrap()
            .unwrap();
        assert_eq!((event.event_type.as_str(), event.payload["round"].as_i64()), ("first", Some(round)));
    }
}

/// History written one event per entry (fields t, p, ts), as versions before batched
/// entries did, is still read after an upgrade, and new events continue its numbers; live
/// messages in the older form (a whole record per line) still reach subscribers.
#[tokio::test]
async fn history_written_by_an_older_version_stays_readable() {
    let redis = RedisServer::start();
    let (bus, hub) = setup(&redis, Retention::default()).await;
    let mut conn = redis.client();
    let key = "aura:ev:{old.t}";
    for n in 1..=3 {
        let () = redis::cmd("XADD")
            .arg(key)
            .arg(format!("{n}-0"))
            .arg("t")
            .arg("old")
            .arg("p")
            .arg(format!("{{\"i\":{n}}}"))
            .arg("ts")
            .arg("1700000000000")
            .query(&mut conn)
            .map(|_: String| ())
            .unwrap();
    }
    let () = redis::cmd("MSET")
        .arg(format!("{key}:epoch"))
        .arg("e0")
        .arg(format!("{key}:n"))
        .arg(3)
        .query(&mut conn)
        .unwrap();
    let next = bus.publish("old.t", "new", &json!({"i": 4})).await.unwrap();
    assert_eq!((next.epoch.as_str(), next.n), ("e0", 4));
    let after = Offset { epoch: "e0".into(), n: 1 };
    let (events, more) = bus.history("old.t", Some(&after), 10).await.unwrap();
    let got: Vec<(String, u64, i64, String)> = events
        .iter()
        .map(|e| (e.event_type.clone(), e.offset.n, e.payload["i"].as_i64().unwrap(), e.offset.epoch.clone()))
        .collect();
    let want = [("old", 2, 2), ("old", 3, 3), ("new", 4, 4)]
        .map(|(t, n, i)| (t.to_string(), n, i, "e0".to_string()));
    assert_eq!((got, more), (want.to_vec(), false));
    assert_eq!(events[0].time_ms, 1_700_000_000_000);
    // Live messages of an older publisher (one line per whole record) are delivered too.
    let mut live = hub.subscribe(patterns(&["old.t"]), Start::Live, 16).unwrap();
    assert!(hub.wait_subscribed(&patterns(&["old.t"]), Duration::from_secs(5)).await);
    let body = "e0|5|1700000000000|old|{\"i\":5}\ne0|6|1700000000000|old|{\"i\":6}";
    let _: i64 = redis::cmd("PUBLISH").arg("aura:evc:old.t").arg(body).query(&mut conn).unwrap();
    for n in [5, 6] {
        let e = tokio::time::timeout(Duration::from_secs(5), live.recv()).await.unwrap().unwrap().unwrap();
        assert_eq!((e.event_type.as_str(), e.offset.n, e.payload["i"].as_u64()), ("old", n, Some(n)));
    }
}

/// Paging through entries that each hold many events (as the `workflows.<name>` copies do):
/// every page, from the start or from any offset, with a limit smaller or larger than an
/// entry, continues exactly where the previous ended.
#[tokio::test]
async fn history_pages_through_entries_of_many_events() {
    let redis = RedisServer::start();
    let (bus, _hub) = setup(&redis, Retention::default()).await;
    for call in 0..4 {
        let batch: Vec<_> =
            (0..50).map(|i| ("wide.t".to_string(), "e".to_string(), json!({"i": call * 50 + i}))).collect();
        bus.publish_batch(&batch).await.unwrap();
    }
    for limit in [1usize, 7, 49, 50, 51, 60, 250] {
        let (mut from, mut seen, mut pages) = (None::<Offset>, Vec::new(), 0);
        loop {
            let (page, more) = bus.history("wide.t", from.as_ref(), limit).await.unwrap();
            assert!(page.len() <= limit, "limit {limit}");
            seen.extend(page.iter().map(|e| e.payload["i"].as_u64().unwrap()));
            pages += 1;
            if !more {
                break;
            }
            assert_eq!(page.len(), limit, "a page with more to come is full (limit {limit})");
            from = page.last().map(|e| e.offset.clone());
        }
        assert_eq!(seen, (0..200).collect::<Vec<_>>(), "limit {limit}");
        assert_eq!(pages, 200usize.div_ceil(limit).max(1), "limit {limit}");
    }
    let epoch = bus.epoch("wide.t").await.unwrap();
    let (page, more) = bus.history("wide.t", Some(&Offset { epoch, n: 75 }), 30).await.unwrap();
    let numbers: Vec<u64> = page.iter().map(|e| e.offset.n).collect();
    assert_eq!((numbers, more), ((76..=105).collect::<Vec<_>>(), true));
}
