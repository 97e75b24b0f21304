#![allow(clippy::unwrap_used)]
use super::*;

const OFFERED: &[&str] = &["application/json", "text/csv", "image/png", "text/html"];

#[test]
fn times_are_rfc3339_or_epoch_ms() {
    assert_eq!(
        parse_time("from", "1700000000000").unwrap(),
        1_700_000_000_000_000
    );
    assert_eq!(
        parse_time("from", "2023-11-14T22:13:20Z").unwrap(),
        1_700_000_000_000_000
    );
    assert_eq!(
        parse_time("from", "2023-11-14T23:13:20.5+01:00").unwrap(),
        1_700_000_000_500_000
    );
    assert!(matches!(
        parse_time("from", "yesterday"),
        Err(QueryError::Malformed(_))
    ));
    assert_eq!(
        format_time(1_700_000_000_500_000),
        "2023-11-14T22:13:20.500Z"
    );
}

/// Regressions found by fuzz/ query_values and query_params.
#[test]
fn times_stay_within_what_rfc3339_can_write() {
    // Year 223791: accepted before, and formatted as "+223791-03-23T06:36:40.001Z".
    assert!(matches!(parse_time("from", "7000001707000001"), Err(QueryError::Invalid(_))));
    assert!(matches!(parse_time("from", "-1"), Err(QueryError::Invalid(_))));
    assert!(matches!(parse_time("from", "1969-12-31T23:59:59Z"), Err(QueryError::Invalid(_))));
    assert!(matches!(parse_time("from", "0000-01-01T00:00:00+01:00"), Err(QueryError::Invalid(_))));
    assert!(matches!(parse_time("from", "9223372036854775807"), Err(QueryError::Invalid(_))));
    let last = parse_time("to", "9999-12-31T23:59:59.999999Z").unwrap();
    assert_eq!(last, time::MAX_TIME_US);
    assert_eq!(parse_time("to", &format_time(last)), Ok(last));
    assert_eq!(parse_time("from", "0"), Ok(0));
    // `to=00` after `from` used to pass (0 was "unset") and reached storage as "no upper bound".
    let found = "metmp&from=1700000000000&%3;c(d&x=%Z\u{10}\0tometric=000000000000000&to=00&%3;c(d&x=0800000&to52023-11-14T22)=%02:";
    assert!(matches!(ReadingsParams::parse(found), Err(QueryError::Invalid(_))));
    for query in ["to=0", "from=1700000000000&to=00", "to=1970-01-01T00:00:00Z"] {
        assert!(matches!(ReadingsParams::parse(query), Err(QueryError::Invalid(_))), "{query}");
        assert!(matches!(DeleteParams::parse(query), Err(QueryError::Invalid(_))), "{query}");
    }
    let range = ReadingsParams::parse("to=1").unwrap().range;
    assert_eq!(range.to_storage(), (String::new(), 0, 1000));
}

#[test]
fn buckets() {
    assert_eq!(parse_bucket("bucket", "5m").unwrap(), 300_000_000);
    assert_eq!(parse_bucket("bucket", "60").unwrap(), 60_000_000);
    assert_eq!(parse_bucket("bucket", "250ms").unwrap(), 250_000);
    assert!(matches!(
        parse_bucket("bucket", "0s"),
        Err(QueryError::Malformed(_))
    ));
    assert!(matches!(
        parse_bucket("bucket", "5y"),
        Err(QueryError::Malformed(_))
    ));
    assert!(matches!(
        parse_bucket("bucket", "9223372036854775807d"),
        Err(QueryError::Invalid(_))
    ));
    assert_eq!(
        parse_bucket("bucket", &time::format_bucket(300_000_000)).unwrap(),
        300_000_000
    );
}

#[test]
fn accept_picks_by_q_then_server_preference() {
    assert_eq!(negotiate(None, OFFERED), Some("application/json"));
    assert_eq!(negotiate(Some("*/*"), OFFERED), Some("application/json"));
    assert_eq!(negotiate(Some("text/csv"), OFFERED), Some("text/csv"));
    assert_eq!(
        negotiate(Some("text/csv;q=0.5, image/png"), OFFERED),
        Some("image/png")
    );
    assert_eq!(negotiate(Some("image/*"), OFFERED), Some("image/png"));
    assert_eq!(
        negotiate(Some("application/json;q=0, */*;q=0.1"), OFFERED),
        Some("text/csv")
    );
    let browser =
        "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8";
    assert_eq!(negotiate(Some(browser), OFFERED), Some("text/html"));
    let img = "image/avif,image/webp,image/apng,image/svg+xml,image/*,*/*;q=0.8";
    assert_eq!(negotiate(Some(img), OFFERED), Some("image/png"));
}

#[test]
fn accept_refuses_what_it_cannot_make() {
    assert_eq!(negotiate(Some("application/xml"), OFFERED), None);
    assert_eq!(negotiate(Some("text/csv;q=0"), &["text/csv"]), None);
    assert_eq!(negotiate(None, &[]), None);
}

#[test]
fn readings_defaults() {
    let p = ReadingsParams::parse("").unwrap();
    assert_eq!(p.range, Range::default());
    assert_eq!(
        (p.limit, p.order, p.width, p.height, p.format),
        (DEFAULT_LIMIT, Order::Asc, 800, 400, None)
    );
    assert_eq!(p.cursor, None);
    // Empty values mean "not given" where that is harmless.
    let p = ReadingsParams::parse("metric=&from=&to=&cursor=").unwrap();
    assert_eq!(p.range, Range::default());
    assert_eq!(p.cursor, None);
}

#[test]
fn readings_values_and_errors() {
    let p = ReadingsParams::parse(
        "metric=temp&from=1700000000000&to=2023-11-14T22:14:20Z&limit=5&cursor=abc&order=desc&width=640&height=360&format=csv&unknown=1",
    )
    .unwrap();
    assert_eq!(p.range.metric.as_deref(), Some("temp"));
    assert_eq!(p.range.from_us, Some(1_700_000_000_000_000));
    assert_eq!(p.range.to_us, Some(1_700_000_060_000_000));
    assert_eq!(
        (p.limit, p.order, p.width, p.height, p.format),
        (5, Order::Desc, 640, 360, Some(Format::Csv))
    );
    assert_eq!(p.cursor.as_deref(), Some("abc"));
    assert_eq!(ReadingsParams::parse(&p.to_query_string()).unwrap(), p);

    for (query, malformed) in [
        ("from=yesterday", true),
        ("limit=many", true),
        ("limit=-1", true),
        ("limit=1&limit=2", true),
        ("order=sideways", true),
        ("format=xml", true),
        ("limit=0", false),
        ("limit=10001", false),
        ("metric=a%20b", false),
        ("metric=%3Cscript%3E", false),
        ("from=1700000000000&to=1700000000000", false),
        ("width=10", false),
        ("height=100000", false),
    ] {
        match ReadingsParams::parse(query) {
            Err(QueryError::Malformed(_)) if malformed => {}
            Err(QueryError::Invalid(_)) if !malformed => {}
            other => panic!("{query}: {other:?}"),
        }
    }
}

#[test]
fn aggregate_delete_and_device_list() {
    let a = AggregateParams::parse("metric=t&bucket=5m").unwrap();
    assert_eq!((a.metric.as_str(), a.bucket_us), ("t", 300_000_000));
    assert_eq!(AggregateParams::parse(&a.to_query_string()).unwrap(), a);
    assert_eq!(
        AggregateParams::parse("metric=t").unwrap().bucket_us,
        DEFAULT_BUCKET_US
    );
    assert!(matches!(
        AggregateParams::parse("bucket=5m"),
        Err(QueryError::Invalid(_))
    ));

    let d = DeleteParams::parse("metric=t&from=1700000000000").unwrap();
    assert_eq!(d.range.to_us, None);
    assert_eq!(DeleteParams::parse(&d.to_query_string()).unwrap(), d);

    let l = DeviceListParams::parse("page_size=10&page_token=xyz").unwrap();
    assert_eq!((l.page_size, l.page_token.as_deref()), (10, Some("xyz")));
    assert_eq!(DeviceListParams::parse(&l.to_query_string()).unwrap(), l);
    assert!(matches!(
        DeviceListParams::parse("page_size=-3"),
        Err(QueryError::Malformed(_))
    ));
    assert!(matches!(
        DeviceListParams::parse("page_size=0"),
        Err(QueryError::Invalid(_))
    ));
    assert_eq!(
        DeviceListParams::parse("").unwrap(),
        DeviceListParams {
            page_size: 100,
            page_token: None
        }
    );
}
