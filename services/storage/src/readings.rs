//! Readings: idempotent batched writes and range reads on the (device, metric, ts) key.

use std::collections::{BTreeSet, HashMap};

use base64::Engine as _;
use diesel::{
    ExpressionMethods as _, Insertable, QueryDsl as _, QueryableByName,
    sql_types::{BigInt, Double, Varchar},
};
use diesel_async::{AsyncConnection as _, AsyncMysqlConnection, RunQueryDsl};
use iot_proto::storage::v1::Reading;

use crate::{
    bounded_map::BoundedMap,
    cached_sql::{Bind, CachedSql, MAX_CACHED_PARTS},
    devices,
    error::{Result, StorageError},
    schema::{device_metrics, devices as devices_table, readings},
    validate,
};

/// Rows per INSERT: one statement carries a whole typical batch while its JSON argument stays
/// far below the server's packet limit (`max_allowed_packet`, 16 MiB by default).
const INSERT_CHUNK_ROWS: usize = 1000;

/// Upper bound on readings in one WriteReadings call.
pub const MAX_WRITE_BATCH: usize = 100_000;

/// Upper bound on buckets one AggregateReadings call returns.
const MAX_BUCKETS: i64 = 100_000;

/// The readings of one write as a single JSON argument: `[[device_pk, metric, ts_us, value],
/// ...]`. One statement text for every batch size means one prepared statement per connection,
/// kept by diesel, so a batch costs one round trip instead of a prepare and an execute of a
/// statement with 4 placeholders per row. Conversion errors are errors (`ERROR ON ERROR`), and
/// the rows come out in array order, which keeps the batch's sorted lock order and lets the
/// first reading of a key in a batch be the one stored. Needs JSON_TABLE: MariaDB 10.6+ or
/// MySQL 8.0+.
const INSERT_READINGS_SQL: &str = "INSERT IGNORE INTO readings (device_pk, metric, ts_us, value) \
     SELECT r.device_pk, r.metric, r.ts_us, r.value FROM JSON_TABLE(?, '$[*]' COLUMNS (\
     device_pk BIGINT UNSIGNED PATH '$[0]' ERROR ON EMPTY ERROR ON ERROR, \
     metric VARCHAR(64) CHARACTER SET ascii PATH '$[1]' ERROR ON EMPTY ERROR ON ERROR, \
     ts_us BIGINT PATH '$[2]' ERROR ON EMPTY ERROR ON ERROR, \
     value DOUBLE PATH '$[3]' ERROR ON EMPTY ERROR ON ERROR)) AS r";

#[derive(Clone, Copy)]
struct NewReading<'a> {
    device_pk: u64,
    metric: &'a str,
    ts_us: i64,
    value: f64,
}

/// `[[device_pk,"metric",ts_us,value],...]`. Metrics are validated to `[A-Za-z0-9_.:/-]` and
/// values to finite numbers before this; serde_json still escapes and writes the shortest
/// decimal that reads back as the same double.
fn readings_json(rows: &[NewReading<'_>]) -> Result<String> {
    let tuples: Vec<(u64, &str, i64, f64)> = rows
        .iter()
        .map(|r| (r.device_pk, r.metric, r.ts_us, r.value))
        .collect();
    serde_json::to_string(&tuples)
        .map_err(|e| StorageError::Unexpected(anyhow::anyhow!("readings as JSON: {e}")))
}

#[derive(Insertable, Clone, PartialEq, Eq, Hash)]
#[diesel(table_name = device_metrics)]
struct DeviceMetric {
    device_pk: u64,
    metric: String,
}

/// (device, metric) pairs this process has already recorded in `device_metrics`, so that a
/// steady stream of known metrics costs no extra statement. Only ever a shortcut: forgetting
/// just means recording a pair again, which is idempotent. Keyed by the device's internal key,
/// so a device created again under the same public id is a new device here too.
pub struct KnownMetrics(BoundedMap<DeviceMetric, ()>);

impl Default for KnownMetrics {
    fn default() -> Self {
        Self(BoundedMap::new(100_000))
    }
}

impl KnownMetrics {
    fn unknown(&self, pairs: impl Iterator<Item = DeviceMetric>) -> Vec<DeviceMetric> {
        let pairs: Vec<DeviceMetric> = pairs.collect();
        let mut fresh: Vec<DeviceMetric> = self.0.missing(&pairs).into_iter().cloned().collect();
        fresh.sort_by(|a, b| (a.device_pk, &a.metric).cmp(&(b.device_pk, &b.metric)));
        fresh.dedup();
        fresh
    }

    fn remember(&self, pairs: Vec<DeviceMetric>) {
        self.0.extend(pairs.into_iter().map(|pair| (pair, ())));
    }
}

/// Devices' internal keys by public id, as this process last read them, so that a batch from
/// known devices is written without looking them up. An entry goes stale when its device is
/// deleted (and perhaps created again under a new key) through this or another replica. Keys
/// are never reused, so a row written under a stale key fails the foreign key, which `INSERT
/// IGNORE` skips as it skips a duplicate: whenever a write stores fewer rows than it sent,
/// [`write`] reads the keys it took from here again and writes the rows of changed devices anew.
pub struct DevicePks(BoundedMap<String, u64>);

impl Default for DevicePks {
    fn default() -> Self {
        Self(BoundedMap::new(100_000))
    }
}

#[derive(Debug, Default, PartialEq)]
pub struct WriteOutcome {
    pub inserted: u64,
    pub duplicates: u64,
    /// Sorted.
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

/// Writes the readings of registered devices with `INSERT IGNORE`: a key already present is
/// skipped, which is what makes a redelivered batch harmless. Affected rows count what was new;
/// the rest were duplicates. Device keys come from `device_pks` where known, else from one
/// lookup; with every key known (the steady state) the batch is one statement.
pub async fn write(
    conn: &mut AsyncMysqlConnection,
    batch: &[Reading],
    known_metrics: &KnownMetrics,
    device_pks: &DevicePks,
) -> Result<WriteOutcome> {
    if batch.is_empty() {
        return Ok(WriteOutcome::default());
    }
    let wanted: BTreeSet<&str> = batch.iter().map(|r| r.device_id.as_str()).collect();
    let mut pks: HashMap<&str, u64> = HashMap::with_capacity(wanted.len());
    device_pks.0.get_each(wanted.iter().copied(), |id, pk| {
        pks.insert(id, pk);
    });
    let cached: Vec<&str> = pks.keys().copied().collect();
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|id| !pks.contains_key(id))
        .collect();
    if !missing.is_empty() {
        let found = devices::pks(conn, &missing).await?;
        for (pk, id) in &found {
            if let Some(&id) = wanted.get(id.as_str()) {
                pks.insert(id, *pk);
            }
        }
        device_pks
            .0
            .extend(found.into_iter().map(|(pk, id)| (id, pk)));
    }
    let mut unknown_devices: Vec<String> = wanted
        .iter()
        .filter(|id| !pks.contains_key(**id))
        .map(|id| id.to_string())
        .collect();
    let (mut total, mut inserted) = insert_rows(conn, batch, &pks, known_metrics).await?;

    if inserted < total && !cached.is_empty() {
        // Duplicates, or rows under a stale cached key that the foreign key turned away.
        let current: HashMap<String, u64> = devices::pks(conn, &cached)
            .await?
            .into_iter()
            .map(|(pk, id)| (id, pk))
            .collect();
        let mut renewed: HashMap<&str, u64> = HashMap::new();
        for &id in &cached {
            match current.get(id) {
                Some(&pk) if pks.get(id) == Some(&pk) => {}
                Some(&pk) => {
                    device_pks.0.insert(id.to_string(), pk);
                    renewed.insert(id, pk);
                }
                None => {
                    device_pks.0.remove(id);
                    total -= batch.iter().filter(|r| r.device_id == id).count() as u64;
                    unknown_devices.push(id.to_string());
                }
            }
        }
        if !renewed.is_empty() {
            tracing::info!(
                devices = renewed.len(),
                "devices were created again under new keys; writing their readings again"
            );
            // Their rows were counted in `total` already; only what is stored now is added.
            inserted += insert_rows(conn, batch, &renewed, known_metrics).await?.1;
        }
        unknown_devices.sort();
    }
    Ok(WriteOutcome {
        inserted,
        duplicates: total.saturating_sub(inserted),
        unknown_devices,
    })
}

/// Inserts the readings of the devices in `pks` (the others are skipped), recording new
/// (device, metric) pairs first. Returns (rows sent, rows inserted).
async fn insert_rows(
    conn: &mut AsyncMysqlConnection,
    batch: &[Reading],
    pks: &HashMap<&str, u64>,
    known_metrics: &KnownMetrics,
) -> Result<(u64, u64)> {
    let mut rows: Vec<NewReading<'_>> = batch
        .iter()
        .filter_map(|r| {
            pks.get(r.device_id.as_str()).map(|&device_pk| NewReading {
                device_pk,
                metric: &r.metric,
                ts_us: r.ts_us,
                value: r.value,
            })
        })
        .collect();
    if rows.is_empty() {
        return Ok((0, 0));
    }
    // Every writer takes row locks in key order, so two replicas writing overlapping batches
    // (a redelivery) wait for each other instead of deadlocking.
    // Stable, so that within a batch the first reading of a key is still the one stored.
    rows.sort_by(|a, b| (a.device_pk, a.metric, a.ts_us).cmp(&(b.device_pk, b.metric, b.ts_us)));
    // Recorded before the readings: a reader may briefly see a metric without rows, never rows
    // without their metric.
    let new_metrics = known_metrics.unknown(rows.iter().map(|r| DeviceMetric {
        device_pk: r.device_pk,
        metric: r.metric.to_string(),
    }));
    for chunk in new_metrics.chunks(INSERT_CHUNK_ROWS) {
        diesel::insert_or_ignore_into(device_metrics::table)
            .values(chunk)
            .execute(&mut *conn)
            .await?;
    }
    known_metrics.remember(new_metrics);
    let insert = |chunk: &[NewReading<'_>]| -> Result<CachedSql> {
        Ok(CachedSql::new(
            INSERT_READINGS_SQL.to_string(),
            vec![Bind::Text(readings_json(chunk)?)],
            true,
        ))
    };
    let inserted = if rows.len() <= INSERT_CHUNK_ROWS {
        // One statement is atomic on its own: no transaction round trips needed.
        insert(&rows)?.execute(conn).await? as u64
    } else {
        conn.transaction::<_, StorageError, _>(async |conn| {
            let mut inserted = 0u64;
            for chunk in rows.chunks(INSERT_CHUNK_ROWS) {
                inserted += insert(chunk)?.execute(&mut *conn).await? as u64;
            }
            Ok(inserted)
        })
        .await?
    };
    Ok((rows.len() as u64, inserted))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub metric: String,
    pub ts_us: i64,
    pub value: f64,
}

/// SQL type of a `SELECT metric, ts_us, value` row, loaded by position.
type PointRow = (Varchar, BigInt, Double);

impl From<(String, i64, f64)> for Point {
    fn from((metric, ts_us, value): (String, i64, f64)) -> Self {
        Self {
            metric,
            ts_us,
            value,
        }
    }
}

/// Position after which the next page starts, in the page's order: (ts_us, metric).
#[derive(Debug, Clone, PartialEq)]
pub struct Cursor {
    pub ts_us: i64,
    pub metric: String,
}

impl Cursor {
    pub fn encode(&self) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(format!("r1:{}:{}", self.ts_us, self.metric))
    }

    pub fn decode(token: &str) -> Result<Self> {
        let invalid = || StorageError::invalid("cursor: not a cursor returned by this service");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| invalid())?;
        let text = String::from_utf8(bytes).map_err(|_| invalid())?;
        let rest = text.strip_prefix("r1:").ok_or_else(invalid)?;
        let (ts, metric) = rest.split_once(':').ok_or_else(invalid)?;
        let ts_us = ts.parse().map_err(|_| invalid())?;
        validate::metric("cursor", metric).map_err(|_| invalid())?;
        Ok(Self {
            ts_us,
            metric: metric.to_string(),
        })
    }
}

/// How a query names its device: by internal key once known, else by public id through a
/// scalar subquery, which the optimiser evaluates first and then treats as a constant (so the
/// primary key is still range-scanned) and which saves a separate lookup round trip.
#[derive(Debug, Clone)]
pub enum DeviceKey {
    Pk(u64),
    Id(String),
}

impl DeviceKey {
    fn condition(&self) -> &'static str {
        match self {
            Self::Pk(_) => "device_pk = ?",
            Self::Id(_) => "device_pk = (SELECT id FROM devices WHERE device_id = ?)",
        }
    }

    fn bind(&self) -> Bind {
        match self {
            Self::Pk(pk) => Bind::U64(*pk),
            Self::Id(id) => Bind::Text(id.clone()),
        }
    }
}

/// What a range read selects.
#[derive(Debug, Clone)]
pub struct Selection {
    pub device: DeviceKey,
    pub metrics: Vec<String>,
    pub from_us: i64,
    /// Exclusive.
    pub to_us: i64,
    pub descending: bool,
}

/// The device's key and the metrics it has reported (sorted), in one statement (see
/// [`device_with_owner`]). NOT_FOUND when the device does not exist or, with `owner`, belongs to
/// another owner: the same answer for both, so a caller learns nothing about other owners'
/// devices. The owner is compared here rather than in SQL so that every caller shares one
/// prepared statement.
pub async fn readable_device(
    conn: &mut AsyncMysqlConnection,
    device_id: &str,
    owner: Option<u64>,
) -> Result<(u64, Vec<String>)> {
    let device = device_with_owner(conn, device_id).await?;
    readable(device_id, device, owner).map(|device| (device.pk, device.metrics))
}

/// `device` if it exists and `owner` (if any) owns it, else the NOT_FOUND of a missing device.
pub fn readable(
    device_id: &str,
    device: Option<KnownDevice>,
    owner: Option<u64>,
) -> Result<KnownDevice> {
    device
        .filter(|device| owner.is_none_or(|owner| owner == device.owner_id))
        .ok_or_else(|| StorageError::not_found(format!("device {device_id:?} not found")))
}

/// What a range read last found out about a device: its key, its owner and its metrics
/// (sorted), so that the next read of it can be one statement (see [`checked_page`]).
#[derive(Debug, Clone, PartialEq)]
pub struct KnownDevice {
    pub pk: u64,
    pub owner_id: u64,
    pub metrics: Vec<String>,
}

/// Devices by public id, as range reads last found them. Only ever a guess: every read that
/// uses an entry checks it against the database in the same statement, so a device deleted,
/// recreated or given a new metric (by this or another replica) is never read from a stale
/// entry. Bounded: the map is cleared when full, which only costs a lookup again.
pub struct KnownDevices(BoundedMap<String, std::sync::Arc<KnownDevice>>);

impl Default for KnownDevices {
    fn default() -> Self {
        Self(BoundedMap::new(100_000))
    }
}

impl KnownDevices {
    pub fn get(&self, device_id: &str) -> Option<std::sync::Arc<KnownDevice>> {
        self.0.get(device_id)
    }

    pub fn remember(&self, device_id: &str, device: KnownDevice) {
        self.0
            .insert(device_id.to_string(), std::sync::Arc::new(device));
    }

    pub fn forget(&self, device_id: &str) {
        self.0.remove(device_id);
    }
}

/// The device's key, owner and metrics (sorted), in one statement: the device row left-joined
/// to its short primary-key range of `device_metrics`. `None` when the device does not exist.
pub async fn device_with_owner(
    conn: &mut AsyncMysqlConnection,
    device_id: &str,
) -> Result<Option<KnownDevice>> {
    use diesel::NullableExpressionMethods as _;
    // Query builder rather than SQL text, so the prepared statement is reused per connection.
    let rows: Vec<(u64, u64, Option<String>)> = devices_table::table
        .left_join(device_metrics::table)
        .filter(devices_table::device_id.eq(device_id))
        .select((
            devices_table::id,
            devices_table::owner_id,
            device_metrics::metric.nullable(),
        ))
        .order(device_metrics::metric.nullable().asc())
        .load(conn)
        .await?;
    let Some(&(pk, owner_id, _)) = <[(u64, u64, Option<String>)]>::first(&rows) else {
        return Ok(None);
    };
    Ok(Some(KnownDevice {
        pk,
        owner_id,
        metrics: rows.into_iter().filter_map(|r| r.2).collect(),
    }))
}

/// SQL type of a [`checked_page`] row: a reading, or the check row (metric NULL).
type CheckedRow = (diesel::sql_types::Nullable<Varchar>, BigInt, Double);

/// A page read on the strength of a [`KnownDevice`], checked in the same statement.
#[derive(Debug, PartialEq)]
pub enum Checked {
    /// The device is still `known` (same key, owner and, when the selection lists them, the
    /// same metrics): the page is what `page` would have returned.
    Page(Vec<Point>, bool),
    /// The device changed or is gone: nothing was read that can be used.
    Stale,
}

/// [`page`] for a device named by a [`KnownDevice`] (`selection.device` is its key), in one
/// statement that also checks the guess: a last UNION ALL branch returns one row (metric NULL,
/// sorted first) only while the device row with that key still has the public id and the
/// owner, and, with `check_metrics`, exactly `known.metrics`. Reading the device and its
/// readings in one statement also reads them from one snapshot.
pub async fn checked_page(
    conn: &mut AsyncMysqlConnection,
    device_id: &str,
    known: &KnownDevice,
    check_metrics: bool,
    selection: &Selection,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<Checked> {
    let parts = metric_ranges(selection, after);
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 2) + 1;
    let order = if selection.descending { "DESC" } else { "ASC" };
    let part = format!(
        "(SELECT metric, ts_us, value FROM readings WHERE device_pk = ? AND metric = ? AND ts_us >= ? \
         AND ts_us < ? ORDER BY ts_us {order} LIMIT ?)"
    );
    // Metric names never hold a space (validate::metric), so the joined list is unambiguous.
    let metrics_check = if check_metrics {
        " AND (SELECT COALESCE(GROUP_CONCAT(metric ORDER BY metric SEPARATOR ' '), '') \
         FROM device_metrics WHERE device_pk = ?) = ?"
    } else {
        ""
    };
    let check = format!(
        "(SELECT NULL AS metric, CAST(owner_id AS SIGNED) AS ts_us, 0e0 AS value FROM devices \
         WHERE id = ? AND device_id = ? AND owner_id = ?{metrics_check})"
    );
    let mut branches = vec![part.as_str(); parts.len()];
    branches.push(&check);
    let sql = format!(
        "{} ORDER BY metric IS NULL DESC, ts_us {order}, metric {order} LIMIT ?",
        branches.join(" UNION ALL ")
    );
    let mut binds = Vec::with_capacity(parts.len() * 5 + 6);
    for (metric, lo, hi) in &parts {
        binds.extend([
            Bind::U64(known.pk),
            Bind::Text(metric.to_string()),
            Bind::I64(*lo),
            Bind::I64(*hi),
            Bind::I64(fetch),
        ]);
    }
    binds.extend([
        Bind::U64(known.pk),
        Bind::Text(device_id.to_string()),
        Bind::U64(known.owner_id),
    ]);
    if check_metrics {
        binds.extend([Bind::U64(known.pk), Bind::Text(known.metrics.join(" "))]);
    }
    // The check row comes on top of a full page.
    binds.push(Bind::I64(fetch + 1));
    let query = CachedSql::<CheckedRow>::new(sql, binds, parts.len() <= MAX_CACHED_PARTS);
    let rows: Vec<(Option<String>, i64, f64)> = query.load(conn).await?;
    let mut rows = rows.into_iter();
    if !matches!(rows.next(), Some((None, _, _))) {
        return Ok(Checked::Stale);
    }
    let mut points: Vec<Point> = rows
        .map(|(metric, ts_us, value)| Point {
            metric: metric.unwrap_or_default(),
            ts_us,
            value,
        })
        .collect();
    let more = points.len() > limit;
    points.truncate(limit);
    Ok(Checked::Page(points, more))
}

/// The `[lo, hi)` time bounds of one metric's part of a page that starts after `after`.
/// Order is (ts_us, metric): a metric sorting after the cursor's may still have a row at the
/// cursor's timestamp, one sorting before (or equal) may not — so equal timestamps across
/// metrics are neither skipped nor repeated.
fn bounds(selection: &Selection, metric: &str, after: Option<&Cursor>) -> (i64, i64) {
    let (mut lo, mut hi) = (selection.from_us, selection.to_us);
    if let Some(cursor) = after {
        if selection.descending {
            let end = if metric < cursor.metric.as_str() {
                cursor.ts_us.saturating_add(1)
            } else {
                cursor.ts_us
            };
            hi = hi.min(end);
        } else {
            let start = if metric > cursor.metric.as_str() {
                cursor.ts_us
            } else {
                cursor.ts_us.saturating_add(1)
            };
            lo = lo.max(start);
        }
    }
    (lo, hi)
}

/// Each selected metric with the time range still to read for it (after `after`); metrics
/// with nothing left are left out.
fn metric_ranges<'a>(selection: &'a Selection, after: Option<&Cursor>) -> Vec<(&'a str, i64, i64)> {
    selection
        .metrics
        .iter()
        .map(|metric| {
            let (lo, hi) = bounds(selection, metric, after);
            (metric.as_str(), lo, hi)
        })
        .filter(|(_, lo, hi)| lo < hi)
        .collect()
}

/// One page of at most `limit` points after `after`, plus whether more follow, in one query.
/// Each metric is its own primary-key range scan that stops after `limit + 1` rows; the
/// UNION ALL of those is merged in (ts_us, metric) order. A plain `metric IN (...)` would
/// instead read and sort every row of the range for each page.
pub async fn page(
    conn: &mut AsyncMysqlConnection,
    selection: &Selection,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<(Vec<Point>, bool)> {
    let parts = metric_ranges(selection, after);
    if parts.is_empty() {
        return Ok((Vec::new(), false));
    }
    let fetch = i64::try_from(limit).unwrap_or(i64::MAX - 1) + 1;
    if let [(metric, lo, hi)] = parts[..] {
        let mut rows = single_metric_page(conn, selection, metric, lo, hi, fetch).await?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        return Ok((rows, more));
    }
    let order = if selection.descending { "DESC" } else { "ASC" };
    let part = format!(
        "SELECT metric, ts_us, value FROM readings WHERE {} AND metric = ? AND ts_us >= ? AND ts_us < ? \
         ORDER BY ts_us {order} LIMIT ?",
        selection.device.condition()
    );
    // One part was handled above, so this is a union of two or more.
    let union = vec![format!("({part})"); parts.len()].join(" UNION ALL ");
    let sql = format!("{union} ORDER BY ts_us {order}, metric {order} LIMIT ?");
    let mut binds = Vec::with_capacity(parts.len() * 5 + 1);
    for (metric, lo, hi) in &parts {
        binds.push(selection.device.bind());
        binds.extend([
            Bind::Text(metric.to_string()),
            Bind::I64(*lo),
            Bind::I64(*hi),
            Bind::I64(fetch),
        ]);
    }
    binds.push(Bind::I64(fetch));
    let query = CachedSql::<PointRow>::new(sql, binds, parts.len() <= MAX_CACHED_PARTS);
    let mut rows: Vec<Point> = query
        .load::<(String, i64, f64)>(conn)
        .await?
        .into_iter()
        .map(Point::from)
        .collect();
    let more = rows.len() > limit;
    rows.truncate(limit);
    Ok((rows, more))
}

/// The common case of one metric, built with the query builder rather than as SQL text: its
/// statement is prepared once per connection and then reused, one round trip per page.
async fn single_metric_page(
    conn: &mut AsyncMysqlConnection,
    selection: &Selection,
    metric: &str,
    lo: i64,
    hi: i64,
    fetch: i64,
) -> Result<Vec<Point>> {
    use diesel::{BoolExpressionMethods as _, NullableExpressionMethods as _};
    let mut query = readings::table
        .select((readings::metric, readings::ts_us, readings::value))
        .filter(
            readings::metric
                .eq(metric.to_string())
                .and(readings::ts_us.ge(lo))
                .and(readings::ts_us.lt(hi)),
        )
        .limit(fetch)
        .into_boxed();
    query = match &selection.device {
        DeviceKey::Pk(pk) => query.filter(readings::device_pk.eq(*pk)),
        DeviceKey::Id(id) => query.filter(
            readings::device_pk.nullable().eq(devices_table::table
                .filter(devices_table::device_id.eq(id.clone()))
                .select(devices_table::id)
                .single_value()),
        ),
    };
    query = if selection.descending {
        query.order(readings::ts_us.desc())
    } else {
        query.order(readings::ts_us.asc())
    };
    let rows: Vec<(String, i64, f64)> = query.load(conn).await?;
    Ok(rows.into_iter().map(Point::from).collect())
}

/// The newest reading of each of `metrics`: per metric, one step backwards from the end of its
/// primary-key range, all in one UNION ALL.
pub async fn latest(
    conn: &mut AsyncMysqlConnection,
    device_pk: u64,
    metrics: &[String],
) -> Result<Vec<Point>> {
    if metrics.is_empty() {
        return Ok(Vec::new());
    }
    let part = "(SELECT metric, ts_us, value FROM readings WHERE device_pk = ? AND metric = ? ORDER BY ts_us DESC LIMIT 1)";
    let sql = format!(
        "{} ORDER BY metric",
        vec![part; metrics.len()].join(" UNION ALL ")
    );
    let binds = metrics
        .iter()
        .flat_map(|metric| [Bind::U64(device_pk), Bind::Text(metric.clone())])
        .collect();
    Ok(
        CachedSql::<PointRow>::new(sql, binds, metrics.len() <= MAX_CACHED_PARTS)
            .load::<(String, i64, f64)>(conn)
            .await?
            .into_iter()
            .map(Point::from)
            .collect(),
    )
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
    let sql = "SELECT CAST((ts_us DIV ?) * ? AS SIGNED) AS start_us, COUNT(*) AS count, \
               MIN(value) AS min, MAX(value) AS max, AVG(value) AS avg \
               FROM readings WHERE device_pk = ? AND metric = ? AND ts_us >= ? AND ts_us < ? \
               GROUP BY start_us ORDER BY start_us LIMIT ?";
    let binds = vec![
        Bind::I64(bucket_us),
        Bind::I64(bucket_us),
        Bind::U64(device_pk),
        Bind::Text(metric.to_string()),
        Bind::I64(from_us),
        Bind::I64(to_us),
        Bind::I64(MAX_BUCKETS + 1),
    ];
    let rows: Vec<BucketRow> =
        CachedSql::<diesel::sql_types::Untyped>::new(sql.to_string(), binds, true)
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
        Some(metric) => {
            diesel::delete(range.filter(readings::metric.eq(metric)))
                .execute(conn)
                .await?
        }
        None => diesel::delete(range).execute(conn).await?,
    };
    Ok(deleted as u64)
}
