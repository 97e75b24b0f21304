//! Readings: idempotent batched writes and range reads on the (device, metric, ts) key.

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use diesel::{
    ExpressionMethods as _, Insertable, QueryDsl as _, QueryableByName,
    mysql::Mysql,
    query_builder::BoxedSqlQuery,
    sql_types::{BigInt, Double, Unsigned, Varchar},
};
use diesel_async::{AsyncConnection as _, AsyncMysqlConnection, RunQueryDsl};
use iot_proto::storage::v1::Reading;

use crate::{
    devices,
    error::{Result, StorageError},
    schema::readings,
    validate,
};

/// Rows per INSERT: 4 placeholders each keeps a statement far below MySQL's 65 535
/// placeholders and its packet limit, while one statement still carries a whole typical batch.
const INSERT_CHUNK_ROWS: usize = 1000;

/// Upper bound on readings in one WriteReadings call.
pub const MAX_WRITE_BATCH: usize = 100_000;

/// Upper bound on buckets one AggregateReadings call returns.
const MAX_BUCKETS: i64 = 100_000;

#[derive(Insertable)]
#[diesel(table_name = readings)]
struct NewReading<'a> {
    device_pk: u64,
    metric: &'a str,
    ts_us: i64,
    value: f64,
}

#[derive(Debug, Default, PartialEq)]
pub struct WriteOutcome {
    pub inserted: u64,
    pub duplicates: u64,
    pub unknown_devices: Vec<String>,
}

/// Checks every reading; the whole batch is refused when one is malformed, with its index.
pub fn validate_batch(batch: &[Reading]) -> Result<()> {
    if batch.len() > MAX_WRITE_BATCH {
        return Err(StorageError::invalid(format!(
            "readings: {} readings in one call, at most {MAX_WRITE_BATCH}",
            batch.len()
        )));
    }
    for (i, reading) in batch.iter().enumerate() {
        validate::device_id(&format!("readings[{i}].device_id"), &reading.device_id)?;
        validate::metric(&format!("readings[{i}].metric"), &reading.metric)?;
        validate::reading_ts(&format!("readings[{i}].ts_us"), reading.ts_us)?;
        validate::value(&format!("readings[{i}].value"), reading.value)?;
    }
    Ok(())
}

/// Resolves the batch's device ids in one query, then inserts the readings of known devices
/// with multi-row `INSERT IGNORE`: a key already present is skipped, which is what makes a
/// redelivered batch harmless. Affected rows count what was new; the rest were duplicates.
pub async fn write(conn: &mut AsyncMysqlConnection, batch: &[Reading]) -> Result<WriteOutcome> {
    if batch.is_empty() {
        return Ok(WriteOutcome::default());
    }
    let wanted: BTreeSet<&str> = batch.iter().map(|r| r.device_id.as_str()).collect();
    let wanted: Vec<&str> = wanted.into_iter().collect();
    let known: HashMap<String, u64> =
        devices::pks(conn, &wanted).await?.into_iter().map(|(pk, id)| (id, pk)).collect();
    let unknown_devices: Vec<String> =
        wanted.iter().filter(|id| !known.contains_key(**id)).map(|id| id.to_string()).collect();
    let rows: Vec<NewReading<'_>> = batch
        .iter()
        .filter_map(|r| {
            known.get(&r.device_id).map(|&device_pk| NewReading {
                device_pk,
                metric: &r.metric,
                ts_us: r.ts_us,
                value: r.value,
            })
        })
        .collect();
    let total = rows.len() as u64;
    let inserted = if rows.is_empty() {
        0
    } else if rows.len() <= INSERT_CHUNK_ROWS {
        // One statement is atomic on its own: no transaction round trips needed.
        diesel::insert_or_ignore_into(readings::table).values(&rows).execute(conn).await? as u64
    } else {
        conn.transaction::<_, StorageError, _>(async |conn| {
            let mut inserted = 0u64;
            for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
                inserted +=
                    diesel::insert_or_ignore_into(readings::table).values(chunk).execute(&mut *conn).await? as u64;
            }
            Ok(inserted)
        })
        .await?
    };
    Ok(WriteOutcome { inserted, duplicates: total.saturating_sub(inserted), unknown_devices })
}

#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct Point {
    #[diesel(sql_type = Varchar)]
    pub metric: String,
    #[diesel(sql_type = BigInt)]
    pub ts_us: i64,
    #[diesel(sql_type = Double)]
    pub value: f64,
}

#[derive(QueryableByName)]
struct MetricName {
    #[diesel(sql_type = Varchar)]
    metric: String,
}

/// Position after which the next page starts, in the page's order: (ts_us, metric).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub ts_us: i64,
    pub metric: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("r1:{}:{}", self.ts_us, self.metric))
    }

    pub fn decode(token: &str) -> Result<Self> {
        let invalid = || StorageError::invalid("cursor: not a cursor returned by this service");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let rest = text.strip_prefix("r1:").ok_or_else(invalid)?;
        let (ts, metric) = rest.split_once(':').ok_or_else(invalid)?;
        let ts_us = ts.parse().map_err(|_| invalid())?;
        validate::metric("cursor", metric).map_err(|_| invalid())?;
        Ok(Self { ts_us, metric: metric.to_string() })
    }
}

/// What a range read selects. `metrics` empty means every metric of the device.
#[derive(Debug, Clone)]
pub struct Selection {
    pub device_id: String,
    pub metrics: Vec<String>,
    pub from_us: i64,
    /// Exclusive.
    pub to_us: i64,
    pub descending: bool,
}

/// The device's distinct metrics. The primary key starts with (device_pk, metric), so this is
/// a loose index scan that touches one entry per metric, not every reading. The devices row is
/// a constant table (unique key = constant), so the join costs nothing extra.
pub async fn metrics_of(conn: &mut AsyncMysqlConnection, device_id: &str) -> Result<Vec<String>> {
    let rows: Vec<MetricName> = diesel::sql_query(
        "SELECT DISTINCT r.metric AS metric FROM devices d JOIN readings r ON r.device_pk = d.id \
         WHERE d.device_id = ? ORDER BY r.metric",
    )
    .bind::<Varchar, _>(device_id)
    .load(conn)
    .await?;
    Ok(rows.into_iter().map(|r| r.metric).collect())
}

/// One page of at most `limit` points after `after`, plus whether more follow. Ordered by
/// (ts_us, metric), reversed when descending; the cursor condition uses the same pair, so rows
/// with equal timestamps across metrics are neither skipped nor repeated. With several
/// metrics, `metric IN (...)` lets every metric be a range scan of the primary key.
pub async fn page(
    conn: &mut AsyncMysqlConnection,
    selection: &Selection,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<(Vec<Point>, bool)> {
    if selection.metrics.is_empty() {
        return Ok((Vec::new(), false));
    }
    let placeholders = vec!["?"; selection.metrics.len()].join(", ");
    let mut sql = format!(
        "SELECT r.metric AS metric, r.ts_us AS ts_us, r.value AS value \
         FROM devices d JOIN readings r ON r.device_pk = d.id \
         WHERE d.device_id = ? AND r.metric IN ({placeholders}) AND r.ts_us >= ? AND r.ts_us < ?"
    );
    if after.is_some() {
        // The first conjunct narrows every per-metric range scan; the second breaks timestamp ties.
        sql.push_str(if selection.descending {
            " AND r.ts_us <= ? AND (r.ts_us < ? OR r.metric < ?)"
        } else {
            " AND r.ts_us >= ? AND (r.ts_us > ? OR r.metric > ?)"
        });
    }
    sql.push_str(if selection.descending {
        " ORDER BY r.ts_us DESC, r.metric DESC LIMIT ?"
    } else {
        " ORDER BY r.ts_us ASC, r.metric ASC LIMIT ?"
    });
    let mut query: BoxedSqlQuery<'_, Mysql, _> =
        diesel::sql_query(sql).into_boxed().bind::<Varchar, _>(selection.device_id.clone());
    for metric in &selection.metrics {
        query = query.bind::<Varchar, _>(metric.clone());
    }
    query = query.bind::<BigInt, _>(selection.from_us).bind::<BigInt, _>(selection.to_us);
    if let Some(cursor) = after {
        query = query
            .bind::<BigInt, _>(cursor.ts_us)
            .bind::<BigInt, _>(cursor.ts_us)
            .bind::<Varchar, _>(cursor.metric.clone());
    }
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
    query = query.bind::<BigInt, _>(fetch);
    let mut rows: Vec<Point> = query.load(conn).await?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    Ok((rows, more))
}

/// The newest reading of each metric: the inner MAX per metric is a loose index scan, the
/// join back is a primary-key lookup per metric.
pub async fn latest(conn: &mut AsyncMysqlConnection, device_pk: u64) -> Result<Vec<Point>> {
    Ok(diesel::sql_query(
        "SELECT r.metric AS metric, r.ts_us AS ts_us, r.value AS value \
         FROM (SELECT metric, MAX(ts_us) AS ts_us FROM readings WHERE device_pk = ? GROUP BY metric) m \
         JOIN readings r ON r.device_pk = ? AND r.metric = m.metric AND r.ts_us = m.ts_us \
         ORDER BY r.metric",
    )
    .bind::<Unsigned<BigInt>, _>(device_pk)
    .bind::<Unsigned<BigInt>, _>(device_pk)
    .load(conn)
    .await?)
}

#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct BucketRow {
    #[diesel(sql_type = BigInt)]
    pub start_us: i64,
    #[diesel(sql_type = BigInt)]
    pub count: i64,
    #[diesel(sql_type = Double)]
    pub min: f64,
    #[diesel(sql_type = Double)]
    pub max: f64,
    #[diesel(sql_type = Double)]
    pub avg: f64,
}

/// count/min/max/avg per bucket of `bucket_us`, buckets aligned to the epoch; only buckets
/// that hold readings are returned. Stored timestamps are never negative, so integer DIV
/// (which truncates toward zero) is the floor.
pub async fn aggregate(
    conn: &mut AsyncMysqlConnection,
    device_pk: u64,
    metric: &str,
    from_us: i64,
    to_us: i64,
    bucket_us: i64,
) -> Result<Vec<BucketRow>> {
    let rows: Vec<BucketRow> = diesel::sql_query(
        "SELECT CAST((ts_us DIV ?) * ? AS SIGNED) AS start_us, COUNT(*) AS count, \
         MIN(value) AS min, MAX(value) AS max, AVG(value) AS avg \
         FROM readings WHERE device_pk = ? AND metric = ? AND ts_us >= ? AND ts_us < ? \
         GROUP BY start_us ORDER BY start_us LIMIT ?",
    )
    .bind::<BigInt, _>(bucket_us)
    .bind::<BigInt, _>(bucket_us)
    .bind::<Unsigned<BigInt>, _>(device_pk)
    .bind::<Varchar, _>(metric)
    .bind::<BigInt, _>(from_us)
    .bind::<BigInt, _>(to_us)
    .bind::<BigInt, _>(MAX_BUCKETS + 1)
    .load(conn)
    .await?;
    if rows.len() as i64 > MAX_BUCKETS {
        return Err(StorageError::invalid(format!(
            "bucket_us: more than {MAX_BUCKETS} buckets in the range; use wider buckets or a shorter range"
        )));
    }
    Ok(rows)
}

pub async fn delete(
    conn: &mut AsyncMysqlConnection,
    device_pk: u64,
    metric: Option<&str>,
    from_us: i64,
    to_us: i64,
) -> Result<u64> {
    let range = readings::table
        .filter(readings::device_pk.eq(device_pk))
        .filter(readings::ts_us.ge(from_us))
        .filter(readings::ts_us.lt(to_us));
    let deleted = match metric {
        Some(metric) => diesel::delete(range.filter(readings::metric.eq(metric))).execute(conn).await?,
        None => diesel::delete(range).execute(conn).await?,
    };
    Ok(deleted as u64)
}
