use std::collections::BTreeMap;

use iot_proto::storage::v1 as pb;
use tonic::Code;

use crate::helpers::{TestApp, code, connect, query, reading, spawn_app, spawn_app_with, start};

async fn app_with_device(device_id: &str) -> TestApp {
    let mut app = spawn_app().await;
    let owner = app.user("owner").await;
    app.device(owner.id, device_id).await;
    app
}

fn points(readings: &[pb::Reading]) -> Vec<(i64, String, f64)> {
    readings
        .iter()
        .map(|r| (r.ts_us, r.metric.clone(), r.value))
        .collect()
}

fn got(points: &[pb::ReadingPoint]) -> Vec<(i64, String, f64)> {
    points
        .iter()
        .map(|p| (p.ts_us, p.metric.clone(), p.value))
        .collect()
}

#[tokio::test]
async fn written_readings_read_back_in_order() {
    let mut app = app_with_device("dev").await;
    let batch = vec![
        reading("dev", "temperature", 2_000_000, 21.5),
        reading("dev", "humidity", 1_000_000, 40.0),
        reading("dev", "temperature", 1_000_000, 21.0),
        reading("dev", "humidity", 2_000_001, -3.25e-7),
    ];
    let written = app.write(batch).await;
    assert_eq!((written.inserted, written.duplicates), (4, 0));
    assert!(written.unknown_devices.is_empty());

    let all = app
        .client
        .query_readings(query("dev", "", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got(&all.readings),
        vec![
            (1_000_000, "humidity".into(), 40.0),
            (1_000_000, "temperature".into(), 21.0),
            (2_000_000, "temperature".into(), 21.5),
            (2_000_001, "humidity".into(), -3.25e-7),
        ]
    );
    assert!(all.next_cursor.is_empty());

    // from inclusive, to exclusive, one metric.
    let temp = app
        .client
        .query_readings(query("dev", "temperature", 1_000_000, 2_000_000, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got(&temp.readings),
        vec![(1_000_000, "temperature".into(), 21.0)]
    );
    let none = app
        .client
        .query_readings(query("dev", "pressure", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert!(none.readings.is_empty());
    let mut desc = query("dev", "", 0, 0, 0);
    desc.descending = true;
    let desc = app.client.query_readings(desc).await.unwrap().into_inner();
    let mut expected = got(&all.readings);
    expected.reverse();
    assert_eq!(got(&desc.readings), expected);
}

#[tokio::test]
async fn unknown_devices_are_reported_and_skipped() {
    let mut app = app_with_device("known").await;
    let written = app
        .write(vec![
            reading("known", "m", 1, 1.0),
            reading("ghost-b", "m", 1, 1.0),
            reading("ghost-a", "m", 1, 1.0),
            reading("ghost-b", "m", 2, 1.0),
        ])
        .await;
    assert_eq!(written.inserted, 1);
    assert_eq!(written.duplicates, 0);
    assert_eq!(
        written.unknown_devices,
        vec!["ghost-a".to_string(), "ghost-b".to_string()]
    );
    assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 1);
    let empty = app.write(vec![]).await;
    assert_eq!(
        (
            empty.inserted,
            empty.duplicates,
            empty.unknown_devices.len()
        ),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn rewriting_a_batch_stores_nothing_twice() {
    let mut app = app_with_device("dev").await;
    let batch: Vec<_> = (0..300)
        .map(|i| {
            reading(
                "dev",
                ["a", "b", "c"][i % 3],
                (i / 3) as i64 * 1_000,
                i as f64,
            )
        })
        .collect();
    let first = app.write(batch.clone()).await;
    assert_eq!((first.inserted, first.duplicates), (300, 0));
    let second = app.write(batch.clone()).await;
    assert_eq!((second.inserted, second.duplicates), (0, 300));
    assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 300);

    // A batch that overlaps half and repeats a key inside itself.
    let mut mixed: Vec<_> = batch[150..].to_vec();
    mixed.push(reading("dev", "new", 5, 1.0));
    mixed.push(reading("dev", "new", 5, 2.0));
    let third = app.write(mixed).await;
    assert_eq!((third.inserted, third.duplicates), (1, 151));
    assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 301);
    // The first write of a key wins; a redelivery never changes the stored value.
    let new = app
        .client
        .query_readings(query("dev", "new", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got(&new.readings), vec![(5, "new".into(), 1.0)]);
}

#[tokio::test]
async fn large_batches_are_chunked_and_still_idempotent() {
    let mut app = app_with_device("bulk").await;
    let batch: Vec<_> = (0..2_500)
        .map(|i| reading("bulk", "m", i * 10, i as f64 / 7.0))
        .collect();
    let first = app.write(batch.clone()).await;
    assert_eq!((first.inserted, first.duplicates), (2_500, 0));
    let second = app.write(batch).await;
    assert_eq!((second.inserted, second.duplicates), (0, 2_500));
    assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 2_500);
}

/// Equal timestamps across several metrics, a page size that divides nothing: every page
/// boundary falls inside a group of equal timestamps at some point.
#[tokio::test]
async fn pagination_neither_skips_nor_repeats() {
    let mut app = app_with_device("dev").await;
    let metrics = ["m.a", "m:b", "m/c", "z"];
    let mut batch = Vec::new();
    for t in 0..60i64 {
        for (i, metric) in metrics.iter().enumerate() {
            // Some metrics skip some timestamps so groups have different sizes.
            if (t + i as i64) % 5 != 0 {
                batch.push(reading(
                    "dev",
                    metric,
                    1_700_000_000_000_000 + (t / 2) * 1_000,
                    (t * 10 + i as i64) as f64,
                ));
            }
        }
    }
    // Duplicated (ts, metric) keys collapse; the stored set is what the reads must return.
    let written = app.write(batch.clone()).await;
    let mut expected: BTreeMap<(i64, String), f64> = BTreeMap::new();
    for (ts, metric, value) in points(&batch) {
        expected.entry((ts, metric)).or_insert(value);
    }
    assert_eq!(written.inserted as usize, expected.len());
    let expected: Vec<(i64, String, f64)> =
        expected.into_iter().map(|((t, m), v)| (t, m, v)).collect();

    for descending in [false, true] {
        for limit in [1u32, 3, 7, 50] {
            let mut seen = Vec::new();
            let mut cursor = String::new();
            let mut pages = 0;
            loop {
                let mut request = query("dev", "", 0, 0, limit);
                request.cursor = cursor;
                request.descending = descending;
                let page = app
                    .client
                    .query_readings(request)
                    .await
                    .unwrap()
                    .into_inner();
                assert!(page.readings.len() <= limit as usize);
                seen.extend(got(&page.readings));
                pages += 1;
                cursor = page.next_cursor;
                if cursor.is_empty() {
                    break;
                }
                assert!(pages <= expected.len() + 1, "pagination does not end");
            }
            let mut want = expected.clone();
            if descending {
                want.reverse();
            }
            assert_eq!(seen, want, "limit {limit}, descending {descending}");
        }
    }

    // One metric, paged, within a range.
    let from = 1_700_000_000_000_000 + 5_000;
    let to = 1_700_000_000_000_000 + 20_000;
    let want: Vec<_> = expected
        .iter()
        .filter(|(t, m, _)| m == "z" && *t >= from && *t < to)
        .cloned()
        .collect();
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let mut request = query("dev", "z", from, to, 4);
        request.cursor = cursor;
        let page = app
            .client
            .query_readings(request)
            .await
            .unwrap()
            .into_inner();
        seen.extend(got(&page.readings));
        cursor = page.next_cursor;
        if cursor.is_empty() {
            break;
        }
    }
    assert_eq!(seen, want);
}

#[tokio::test]
async fn stream_returns_the_same_rows_in_chunks() {
    let mut app = app_with_device("dev").await;
    let batch: Vec<_> = (0..1_000)
        .map(|i| reading("dev", ["x", "y"][i % 2], (i / 2) as i64, i as f64))
        .collect();
    app.write(batch).await;
    let full = app
        .client
        .query_readings(query("dev", "", 0, 0, 10_000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(full.readings.len(), 1_000);

    let mut stream = app
        .client
        .stream_readings(query("dev", "", 0, 0, 128))
        .await
        .unwrap()
        .into_inner();
    let mut streamed = Vec::new();
    let mut chunks = 0;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.readings.len() <= 128);
        chunks += 1;
        streamed.extend(chunk.readings);
    }
    assert_eq!(chunks, 8);
    assert_eq!(streamed, full.readings);

    assert_eq!(
        code(app.client.stream_readings(query("nope", "", 0, 0, 0)).await),
        Code::NotFound
    );
    assert_eq!(
        code(app.client.stream_readings(query("dev", "", 10, 5, 0)).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn latest_gives_the_newest_reading_per_metric() {
    let mut app = app_with_device("dev").await;
    let empty = app
        .client
        .latest_readings(pb::LatestReadingsRequest {
            device_id: "dev".into(),
            owner_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(empty.readings.is_empty());
    app.write(vec![
        reading("dev", "a", 10, 1.0),
        reading("dev", "a", 30, 3.0),
        reading("dev", "a", 20, 2.0),
        reading("dev", "b", 5, 50.0),
    ])
    .await;
    let latest = app
        .client
        .latest_readings(pb::LatestReadingsRequest {
            device_id: "dev".into(),
            owner_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got(&latest.readings),
        vec![(30, "a".into(), 3.0), (5, "b".into(), 50.0)]
    );
    assert_eq!(
        code(
            app.client
                .latest_readings(pb::LatestReadingsRequest {
                    device_id: "other".into(),
                    owner_id: 0,
                })
                .await
        ),
        Code::NotFound
    );
}

#[tokio::test]
async fn aggregates_match_values_computed_here() {
    let mut app = app_with_device("dev").await;
    let bucket_us = 60_000_000i64; // one minute
    let start = 1_700_000_000_000_000i64;
    // Deterministic, uneven values and gaps: a few buckets are empty.
    let mut batch = Vec::new();
    for i in 0..500i64 {
        if (i / 37) % 4 == 3 {
            continue;
        }
        let ts = start + i * 7_777_777;
        let value = ((i * 7919) % 1000) as f64 / 10.0 - 20.0;
        batch.push(reading("dev", "t", ts, value));
        batch.push(reading("dev", "other", ts, 1e6)); // must not leak into "t"
    }
    app.write(batch.clone()).await;

    let from = start + 3 * bucket_us + 123; // not aligned: the first bucket is partial
    let to = start + 50 * bucket_us;
    let mut expected: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
    for r in batch
        .iter()
        .filter(|r| r.metric == "t" && r.ts_us >= from && r.ts_us < to)
    {
        expected
            .entry(r.ts_us.div_euclid(bucket_us) * bucket_us)
            .or_default()
            .push(r.value);
    }
    let answer = app
        .client
        .aggregate_readings(pb::AggregateReadingsRequest {
            device_id: "dev".into(),
            metric: "t".into(),
            from_us: from,
            to_us: to,
            bucket_us,
            owner_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.buckets.len(), expected.len());
    for (bucket, (start_us, values)) in answer.buckets.iter().zip(&expected) {
        assert_eq!(bucket.start_us, *start_us);
        assert_eq!(bucket.start_us % bucket_us, 0, "epoch aligned");
        assert_eq!(bucket.count, values.len() as u64);
        let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let avg = values.iter().sum::<f64>() / values.len() as f64;
        assert_eq!(bucket.min, min);
        assert_eq!(bucket.max, max);
        assert!(
            (bucket.avg - avg).abs() < 1e-9,
            "avg {} vs {avg}",
            bucket.avg
        );
    }

    let aggregate = |metric: &str, bucket_us, from_us, to_us| pb::AggregateReadingsRequest {
        device_id: "dev".into(),
        metric: metric.into(),
        from_us,
        to_us,
        bucket_us,
        owner_id: 0,
    };
    assert_eq!(
        code(app.client.aggregate_readings(aggregate("", 1, 0, 0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(app.client.aggregate_readings(aggregate("t", 0, 0, 0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            app.client
                .aggregate_readings(aggregate("t", -5, 0, 0))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            app.client
                .aggregate_readings(aggregate("t", 5, 10, 10))
                .await
        ),
        Code::InvalidArgument
    );
    let mut missing = aggregate("t", 5, 0, 0);
    missing.device_id = "missing".into();
    assert_eq!(
        code(app.client.aggregate_readings(missing).await),
        Code::NotFound
    );
}

#[tokio::test]
async fn delete_readings_removes_a_range() {
    let mut app = app_with_device("dev").await;
    let batch: Vec<_> = (0..100)
        .flat_map(|i| [reading("dev", "a", i, 1.0), reading("dev", "b", i, 2.0)])
        .collect();
    app.write(batch).await;
    let delete = |metric: &str, from_us, to_us| pb::DeleteReadingsRequest {
        device_id: "dev".into(),
        metric: metric.into(),
        from_us,
        to_us,
    };
    let one_metric = app
        .client
        .delete_readings(delete("a", 10, 20))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(one_metric.deleted, 10);
    let both = app
        .client
        .delete_readings(delete("", 90, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(both.deleted, 20);
    assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 170);
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM readings WHERE metric = 'a' AND ts_us >= 10 AND ts_us < 20"
        )
        .await,
        0
    );
    assert_eq!(
        app.count(
            "SELECT COUNT(*) FROM readings WHERE metric = 'b' AND ts_us >= 10 AND ts_us < 20"
        )
        .await,
        10
    );
    let again = app
        .client
        .delete_readings(delete("a", 10, 20))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.deleted, 0);
    let mut missing = delete("", 0, 0);
    missing.device_id = "missing".into();
    assert_eq!(
        code(app.client.delete_readings(missing).await),
        Code::NotFound
    );
    // A metric whose readings are all gone no longer shows up in reads.
    app.client.delete_readings(delete("a", 0, 0)).await.unwrap();
    let latest = app
        .client
        .latest_readings(pb::LatestReadingsRequest {
            device_id: "dev".into(),
            owner_id: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got(&latest.readings), vec![(89, "b".into(), 2.0)]);
    let rest = app
        .client
        .query_readings(query("dev", "", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.readings.len(), 90);
    assert!(rest.readings.iter().all(|p| p.metric == "b"));
    assert_eq!(
        code(app.client.delete_readings(delete("a", 20, 10)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(app.client.delete_readings(delete("bad metric", 0, 0)).await),
        Code::InvalidArgument
    );
}

#[tokio::test]
async fn bad_readings_are_refused_whole() {
    let mut app = app_with_device("dev").await;
    let bad = [
        reading("dev", "m", 1, f64::NAN),
        reading("dev", "m", 1, f64::INFINITY),
        reading("dev", "m", 1, f64::NEG_INFINITY),
        reading("dev", "m", -1, 1.0),
        reading("dev", "m", 253_402_300_800_000_000, 1.0),
        reading("dev", "", 1, 1.0),
        reading("dev", "bad metric", 1, 1.0),
        reading("dev", &"m".repeat(65), 1, 1.0),
        reading("", "m", 1, 1.0),
        reading("dev/1", "m", 1, 1.0),
    ];
    for r in bad {
        let described = format!("{r:?}");
        let result = app
            .client
            .write_readings(pb::WriteReadingsRequest {
                readings: vec![reading("dev", "ok", 1, 1.0), r],
            })
            .await;
        let status = result.expect_err(&described);
        assert_eq!(status.code(), Code::InvalidArgument, "{described}");
        assert!(
            status.message().contains("readings[1]"),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        app.count("SELECT COUNT(*) FROM readings").await,
        0,
        "nothing of a refused batch is stored"
    );

    // Query argument checks.
    assert_eq!(
        code(app.client.query_readings(query("", "", 0, 0, 0)).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            app.client
                .query_readings(query("dev", "bad metric", 0, 0, 0))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            app.client
                .query_readings(query("dev", "", 100, 50, 0))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            app.client
                .query_readings(query("missing", "", 0, 0, 0))
                .await
        ),
        Code::NotFound
    );
    assert_eq!(
        code(
            app.client
                .query_readings(query("missing", "m", 0, 0, 0))
                .await
        ),
        Code::NotFound
    );
    for cursor in ["not base64 !", "aGVsbG8", ""] {
        if cursor.is_empty() {
            continue;
        }
        let mut request = query("dev", "", 0, 0, 0);
        request.cursor = cursor.into();
        assert_eq!(
            code(app.client.query_readings(request).await),
            Code::InvalidArgument,
            "{cursor}"
        );
    }
    assert_eq!(
        code(
            app.client
                .latest_readings(pb::LatestReadingsRequest {
                    device_id: "a b".into(),
                    owner_id: 0,
                })
                .await
        ),
        Code::InvalidArgument
    );
}

/// Replicas writing overlapping batches at once (a redelivery racing the original): every key
/// is stored once, and the inserted counts add up to exactly the distinct keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_overlapping_writes_store_each_key_once() {
    let mut app = app_with_device("a").await;
    let owner = app.user("other").await;
    app.device(owner.id, "b").await;
    let keys: Vec<pb::Reading> = (0..2_000)
        .map(|i| {
            reading(
                ["a", "b"][i % 2],
                ["x", "y", "z"][i % 3],
                (i / 6) as i64,
                i as f64,
            )
        })
        .collect();
    let mut calls = Vec::new();
    for writer in 0..4usize {
        // Each writer sends the keys in a different order, and in batches of different sizes.
        let mut mine = keys.clone();
        mine.rotate_left(writer * 500);
        if writer % 2 == 1 {
            mine.reverse();
        }
        let client = app.client.clone();
        calls.push(tokio::spawn(async move {
            let mut inserted = 0;
            for batch in mine.chunks(300 + writer * 200) {
                loop {
                    let mut client = client.clone();
                    match client
                        .write_readings(pb::WriteReadingsRequest {
                            readings: batch.to_vec(),
                        })
                        .await
                    {
                        Ok(answer) => {
                            let answer = answer.into_inner();
                            assert_eq!(answer.inserted + answer.duplicates, batch.len() as u64);
                            inserted += answer.inserted;
                            break;
                        }
                        // A transient lock conflict is reported as retryable.
                        Err(status) if status.code() == Code::Unavailable => continue,
                        Err(status) => panic!("{status:?}"),
                    }
                }
            }
            inserted
        }));
    }
    let mut total = 0;
    for call in calls {
        total += call.await.unwrap();
    }
    assert_eq!(total, 2_000);
    assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 2_000);
}

#[tokio::test]
async fn reads_with_an_owner_see_only_that_owners_devices() {
    let mut app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    app.device(alice.id, "alices").await;
    app.device(alice.id, "quiet").await;
    app.write(vec![
        reading("alices", "t", 1_000_000, 1.0),
        reading("alices", "h", 1_000_000, 2.0),
    ])
    .await;
    let owned = |device_id: &str, metric: &str, owner_id| pb::QueryReadingsRequest {
        owner_id,
        ..query(device_id, metric, 0, 0, 0)
    };

    // The owner (and owner 0, any owner) reads; with or without a metric.
    for owner_id in [alice.id, 0] {
        let all = app
            .client
            .query_readings(owned("alices", "", owner_id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.readings.len(), 2, "owner {owner_id}");
        let one = app
            .client
            .query_readings(owned("alices", "t", owner_id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got(&one.readings), vec![(1_000_000, "t".into(), 1.0)]);
    }
    // A device without readings is empty for its owner, not NOT_FOUND.
    let quiet = app
        .client
        .query_readings(owned("quiet", "", alice.id))
        .await
        .unwrap()
        .into_inner();
    assert!(quiet.readings.is_empty());

    // Another owner's device and a missing one give the same NOT_FOUND, on every read.
    for device_id in ["alices", "quiet", "missing"] {
        for metric in ["", "t"] {
            assert_eq!(
                code(
                    app.client
                        .query_readings(owned(device_id, metric, bob.id))
                        .await
                ),
                Code::NotFound
            );
            // The stream is refused before it starts.
            match app
                .client
                .stream_readings(owned(device_id, metric, bob.id))
                .await
            {
                Ok(_) => panic!("{device_id}/{metric}: a stream of another owner's device"),
                Err(status) => assert_eq!(status.code(), Code::NotFound),
            }
        }
        let latest = pb::LatestReadingsRequest {
            device_id: device_id.into(),
            owner_id: bob.id,
        };
        assert_eq!(
            code(app.client.latest_readings(latest).await),
            Code::NotFound
        );
        let aggregate = pb::AggregateReadingsRequest {
            device_id: device_id.into(),
            metric: "t".into(),
            from_us: 0,
            to_us: 0,
            bucket_us: 1_000_000,
            owner_id: bob.id,
        };
        assert_eq!(
            code(app.client.aggregate_readings(aggregate).await),
            Code::NotFound
        );
    }
    let latest = pb::LatestReadingsRequest {
        device_id: "alices".into(),
        owner_id: alice.id,
    };
    assert_eq!(
        app.client
            .latest_readings(latest)
            .await
            .unwrap()
            .into_inner()
            .readings
            .len(),
        2
    );
    let aggregate = pb::AggregateReadingsRequest {
        device_id: "alices".into(),
        metric: "t".into(),
        from_us: 0,
        to_us: 0,
        bucket_us: 1_000_000,
        owner_id: alice.id,
    };
    assert_eq!(
        app.client
            .aggregate_readings(aggregate)
            .await
            .unwrap()
            .into_inner()
            .buckets
            .len(),
        1
    );
}

/// A range read of a device read before is one statement built from what the first read found
/// (its key, owner and metrics), checked in that statement. Changes made through another
/// replica, which this one never hears of, must show at once.
#[tokio::test]
async fn a_device_read_before_is_read_as_it_is_now() {
    let mut app = spawn_app().await;
    let alice = app.user("alice").await;
    let bob = app.user("bob").await;
    let other = start(iot_storage::Config::for_tests(&app.db.url)).await;
    let mut replica = connect(other.grpc_addr).await;
    app.device(alice.id, "d").await;
    app.write(vec![reading("d", "t", 1_000_000, 1.0)]).await;
    let owned = |owner_id, metric: &str| pb::QueryReadingsRequest {
        owner_id,
        ..query("d", metric, 0, 0, 0)
    };
    let read = async |client: &mut crate::helpers::Client, owner_id, metric: &str| {
        client
            .query_readings(owned(owner_id, metric))
            .await
            .map(|r| got(&r.into_inner().readings))
    };
    for _ in 0..2 {
        for owner_id in [alice.id, 0] {
            assert_eq!(
                read(&mut app.client, owner_id, "").await.unwrap(),
                vec![(1_000_000, "t".into(), 1.0)]
            );
        }
    }

    // A new metric, written through the other replica, is part of the next page.
    replica
        .write_readings(pb::WriteReadingsRequest {
            readings: vec![reading("d", "h", 1_000_000, 2.0)],
        })
        .await
        .unwrap();
    for owner_id in [alice.id, 0] {
        assert_eq!(
            read(&mut app.client, owner_id, "").await.unwrap(),
            vec![(1_000_000, "h".into(), 2.0), (1_000_000, "t".into(), 1.0)]
        );
    }

    // Deleted there: not found here, with or without an owner or a metric.
    let delete = pb::DeleteDeviceRequest {
        device_id: "d".into(),
    };
    replica.delete_device(delete.clone()).await.unwrap();
    for owner_id in [alice.id, 0] {
        for metric in ["", "t"] {
            let status = read(&mut app.client, owner_id, metric).await.unwrap_err();
            assert_eq!(
                status.code(),
                Code::NotFound,
                "owner {owner_id}, metric {metric:?}"
            );
        }
    }

    // Recreated there for another owner: the old owner no longer reads it, the new one does.
    replica
        .create_device(pb::CreateDeviceRequest {
            device_id: "d".into(),
            owner_id: bob.id,
            name: "Bob's".into(),
            attributes_json: String::new(),
        })
        .await
        .unwrap();
    replica
        .write_readings(pb::WriteReadingsRequest {
            readings: vec![reading("d", "x", 2_000_000, 3.0)],
        })
        .await
        .unwrap();
    for metric in ["", "x"] {
        let status = read(&mut app.client, alice.id, metric).await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound, "metric {metric:?}");
        for owner_id in [bob.id, 0] {
            assert_eq!(
                read(&mut app.client, owner_id, metric).await.unwrap(),
                vec![(2_000_000, "x".into(), 3.0)]
            );
        }
    }

    // Recreated once more, without readings: empty for its owner, not found for the last one.
    replica.delete_device(delete).await.unwrap();
    app.device(alice.id, "d").await;
    for _ in 0..2 {
        assert_eq!(read(&mut app.client, alice.id, "").await.unwrap(), vec![]);
        let status = read(&mut app.client, bob.id, "").await.unwrap_err();
        assert_eq!(status.code(), Code::NotFound);
    }
    other.shutdown.cancel();
    let _ = other.task.await;
}

/// Writes look a device's key up once and then reuse it. A device deleted and created again
/// through another replica has a new key: readings sent to this replica afterwards must land
/// under the new device (not be skipped as duplicates of the old key), and readings of a device
/// deleted there must be reported as from an unknown device.
#[tokio::test]
async fn writes_follow_a_device_deleted_or_created_again_elsewhere() {
    let mut app = spawn_app().await;
    let alice = app.user("alice").await;
    let other = start(iot_storage::Config::for_tests(&app.db.url)).await;
    let mut replica = connect(other.grpc_addr).await;
    app.device(alice.id, "d").await;
    app.device(alice.id, "e").await;
    let first = app
        .write(vec![
            reading("d", "t", 1_000_000, 1.0),
            reading("e", "t", 1_000_000, 1.0),
        ])
        .await;
    assert_eq!((first.inserted, first.duplicates), (2, 0));
    let delete = |id: &str| pb::DeleteDeviceRequest {
        device_id: id.into(),
    };

    // Created again there: same public id, new key.
    replica.delete_device(delete("d")).await.unwrap();
    replica
        .create_device(pb::CreateDeviceRequest {
            device_id: "d".into(),
            owner_id: alice.id,
            name: "again".into(),
            attributes_json: String::new(),
        })
        .await
        .unwrap();
    let again = app
        .write(vec![
            reading("d", "t", 2_000_000, 2.0),
            reading("d", "h", 2_000_000, 3.0),
            reading("e", "t", 2_000_000, 2.0),
        ])
        .await;
    assert_eq!((again.inserted, again.duplicates), (3, 0));
    assert!(
        again.unknown_devices.is_empty(),
        "{:?}",
        again.unknown_devices
    );
    let d = app
        .client
        .query_readings(query("d", "", 0, 0, 0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        got(&d.readings),
        vec![(2_000_000, "h".into(), 3.0), (2_000_000, "t".into(), 2.0)]
    );
    // Its metrics were recorded for the new key too (a read by metric list finds both).
    assert_eq!(
        app.count("SELECT COUNT(*) FROM device_metrics m JOIN devices d ON d.id = m.device_pk WHERE d.device_id = 'd'").await,
        2
    );

    // The same batch again: all duplicates, nothing unknown.
    let repeat = app
        .write(vec![
            reading("d", "t", 2_000_000, 9.0),
            reading("e", "t", 2_000_000, 9.0),
        ])
        .await;
    assert_eq!((repeat.inserted, repeat.duplicates), (0, 2));
    assert!(repeat.unknown_devices.is_empty());

    // Deleted there for good: unknown here, and the other device's reading is still stored.
    replica.delete_device(delete("d")).await.unwrap();
    let gone = app
        .write(vec![
            reading("d", "t", 3_000_000, 4.0),
            reading("e", "t", 3_000_000, 4.0),
        ])
        .await;
    assert_eq!((gone.inserted, gone.duplicates), (1, 0));
    assert_eq!(gone.unknown_devices, vec!["d".to_string()]);
    assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 3);
    other.shutdown.cancel();
    let _ = other.task.await;
}

/// Readings travel to the database as one JSON argument: every finite double must come back
/// bit for bit, including the extremes of the range and values with no short decimal form.
#[tokio::test]
async fn values_are_stored_exactly() {
    let mut app = app_with_device("dev").await;
    let mut values = vec![
        0.1,
        -0.3,
        1.0 / 3.0,
        21.5,
        1e300,
        -1e-300,
        f64::MAX,
        f64::MIN,
        f64::MIN_POSITIVE,
        5e-324,
        -5e-324,
        2f64.powi(53) + 2.0,
        123_456_789.123_456_78,
        0.0,
    ];
    // Spread over the exponent range with full mantissas.
    let mut bits: u64 = 0x9E37_79B9_7F4A_7C15;
    while values.len() < 500 {
        bits ^= bits << 13;
        bits ^= bits >> 7;
        bits ^= bits << 17;
        let value = f64::from_bits(bits);
        if value.is_finite() {
            values.push(value);
        }
    }
    let batch: Vec<_> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| reading("dev", "v", i as i64, v))
        .collect();
    assert_eq!(app.write(batch).await.inserted, values.len() as u64);
    let back = app
        .client
        .query_readings(query("dev", "v", 0, 0, 1000))
        .await
        .unwrap()
        .into_inner();
    let stored: Vec<u64> = back.readings.iter().map(|p| p.value.to_bits()).collect();
    let sent: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
    assert_eq!(stored.len(), sent.len());
    for (i, (s, w)) in stored.iter().zip(&sent).enumerate() {
        assert_eq!(
            s,
            w,
            "value {i}: sent {:e}, stored {:e}",
            f64::from_bits(*w),
            f64::from_bits(*s)
        );
    }
}

/// A write for a device whose row another transaction holds waits inside MariaDB (its
/// foreign-key check) and keeps its turn meanwhile. With one turn, a write for another device
/// waits behind it; with two, it goes through at once. Afterwards both are stored.
#[tokio::test]
async fn writes_beyond_max_concurrent_writes_wait_for_a_turn() {
    use mysql_async::prelude::Queryable as _;
    use std::time::Duration;

    for (turns, second_waits) in [(1, true), (2, false)] {
        let mut app = spawn_app_with(|config| config.max_concurrent_writes = turns).await;
        let owner = app.user("owner").await;
        app.device(owner.id, "locked").await;
        app.device(owner.id, "free").await;
        let mut lock = app.db.connect().await;
        lock.query_drop("START TRANSACTION").await.unwrap();
        lock.query_drop("SELECT id FROM devices WHERE device_id = 'locked' FOR UPDATE")
            .await
            .unwrap();

        let mut client = app.client.clone();
        let held = tokio::spawn(async move {
            client
                .write_readings(pb::WriteReadingsRequest {
                    readings: vec![reading("locked", "temperature", 1_000_000, 1.0)],
                })
                .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !held.is_finished(),
            "the write for the locked device did not wait for the lock: the test tests nothing"
        );
        let free = vec![reading("free", "temperature", 1_000_000, 2.0)];
        let mut client = app.client.clone();
        let second = tokio::time::timeout(
            Duration::from_secs(2),
            client.write_readings(pb::WriteReadingsRequest {
                readings: free.clone(),
            }),
        )
        .await;
        assert_eq!(
            second.is_err(),
            second_waits,
            "with {turns} turn(s), a second write {} while the first held its turn",
            if second_waits { "went through" } else { "waited" }
        );

        lock.query_drop("COMMIT").await.unwrap();
        let first = held.await.unwrap().unwrap().into_inner();
        assert_eq!(first.inserted, 1);
        // The cut-short call may or may not have been carried out; written again, it is
        // stored exactly once either way.
        let again = app.write(free).await;
        assert_eq!(again.inserted + again.duplicates, 1);
        assert_eq!(app.count("SELECT COUNT(*) FROM readings").await, 2);
    }
}
