//! Devices: the public `device_id` (MQTT topic segment) and the compact key readings use.

use chrono::NaiveDateTime;
use diesel::{OptionalExtension as _, prelude::*};
use diesel_async::{AsyncConnection as _, AsyncMysqlConnection, RunQueryDsl};

use crate::{
    error::{Result, StorageError},
    schema::devices,
    users::now,
};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = devices, check_for_backend(diesel::mysql::Mysql))]
pub struct DeviceRow {
    pub id: u64,
    pub device_id: String,
    pub owner_id: u64,
    pub name: String,
    pub attributes_json: String,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = devices)]
struct NewDevice<'a> {
    device_id: &'a str,
    owner_id: u64,
    name: &'a str,
    attributes_json: &'a str,
    created_at: NaiveDateTime,
    updated_at: NaiveDateTime,
}

#[derive(AsChangeset)]
#[diesel(table_name = devices)]
struct DeviceChanges<'a> {
    name: Option<&'a str>,
    attributes_json: Option<&'a str>,
    updated_at: NaiveDateTime,
}

pub async fn create(
    conn: &mut AsyncMysqlConnection,
    device_id: &str,
    owner_id: u64,
    name: &str,
    attributes_json: &str,
) -> Result<DeviceRow> {
    let at = now();
    let inserted = diesel::insert_into(devices::table)
        .values(&NewDevice {
            device_id,
            owner_id,
            name,
            attributes_json,
            created_at: at,
            updated_at: at,
        })
        .execute(&mut *conn)
        .await;
    match inserted {
        Ok(_) => {}
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => {
            return Err(StorageError::AlreadyExists(format!(
                "device {device_id:?} already exists"
            )));
        }
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::ForeignKeyViolation,
            _,
        )) => {
            return Err(StorageError::NotFound(format!(
                "owner user {owner_id} does not exist"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    by_device_id(conn, device_id).await?.ok_or_else(|| {
        StorageError::NotFound(format!("device {device_id:?} was deleted concurrently"))
    })
}

pub async fn by_device_id(
    conn: &mut AsyncMysqlConnection,
    device_id: &str,
) -> Result<Option<DeviceRow>> {
    Ok(devices::table
        .filter(devices::device_id.eq(device_id))
        .select(DeviceRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// One page ordered by device_id, starting after `after`; fetches one row more than the page
/// to know whether another page follows.
pub async fn list(
    conn: &mut AsyncMysqlConnection,
    owner_id: Option<u64>,
    after: Option<&str>,
    page_size: i64,
) -> Result<(Vec<DeviceRow>, bool)> {
    let mut query = devices::table.select(DeviceRow::as_select()).into_boxed();
    if let Some(owner_id) = owner_id {
        query = query.filter(devices::owner_id.eq(owner_id));
    }
    if let Some(after) = after {
        query = query.filter(devices::device_id.gt(after.to_string()));
    }
    let mut rows: Vec<DeviceRow> = query
        .order(devices::device_id.asc())
        .limit(page_size + 1)
        .load(conn)
        .await?;
    let more = rows.len() as i64 > page_size;
    rows.truncate(usize::try_from(page_size).unwrap_or(0));
    Ok((rows, more))
}

pub async fn update(
    conn: &mut AsyncMysqlConnection,
    device_id: &str,
    name: Option<&str>,
    attributes_json: Option<&str>,
) -> Result<DeviceRow> {
    let changes = DeviceChanges {
        name,
        attributes_json,
        updated_at: now(),
    };
    conn.transaction::<_, StorageError, _>(async |conn| {
        let matched = diesel::update(devices::table.filter(devices::device_id.eq(device_id)))
            .set(&changes)
            .execute(&mut *conn)
            .await?;
        if matched == 0 {
            return Err(StorageError::NotFound(format!(
                "device {device_id:?} not found"
            )));
        }
        by_device_id(conn, device_id)
            .await?
            .ok_or_else(|| StorageError::NotFound(format!("device {device_id:?} not found")))
    })
    .await
}

/// Deletes the device and, through ON DELETE CASCADE, its readings.
pub async fn delete(conn: &mut AsyncMysqlConnection, device_id: &str) -> Result<bool> {
    let deleted = diesel::delete(devices::table.filter(devices::device_id.eq(device_id)))
        .execute(conn)
        .await?;
    Ok(deleted > 0)
}

/// The internal key of a device, or NOT_FOUND.
pub async fn pk(conn: &mut AsyncMysqlConnection, device_id: &str) -> Result<u64> {
    devices::table
        .filter(devices::device_id.eq(device_id))
        .select(devices::id)
        .first::<u64>(conn)
        .await
        .optional()?
        .ok_or_else(|| StorageError::NotFound(format!("device {device_id:?} not found")))
}

/// The internal key of a device that exists and, with `owner`, belongs to that owner;
/// NOT_FOUND otherwise (another owner's device looks exactly like a missing one).
pub async fn pk_of_owner(
    conn: &mut AsyncMysqlConnection,
    device_id: &str,
    owner: Option<u64>,
) -> Result<u64> {
    devices::table
        .filter(devices::device_id.eq(device_id))
        .select((devices::id, devices::owner_id))
        .first::<(u64, u64)>(conn)
        .await
        .optional()?
        .filter(|&(_, owner_id)| owner.is_none_or(|owner| owner == owner_id))
        .map(|(pk, _)| pk)
        .ok_or_else(|| StorageError::NotFound(format!("device {device_id:?} not found")))
}

/// Ids per lookup query: one query for any realistic batch, and far below the server's limit
/// of 65 535 placeholders for the largest one.
const LOOKUP_CHUNK: usize = 5_000;

/// Resolves many public ids, in one query unless the batch names thousands of devices.
pub async fn pks(
    conn: &mut AsyncMysqlConnection,
    device_ids: &[&str],
) -> Result<Vec<(u64, String)>> {
    let mut found = Vec::with_capacity(device_ids.len());
    for chunk in device_ids.chunks(LOOKUP_CHUNK) {
        let rows: Vec<(u64, String)> = devices::table
            .filter(devices::device_id.eq_any(chunk))
            .select((devices::id, devices::device_id))
            .load(&mut *conn)
            .await?;
        found.extend(rows);
    }
    Ok(found)
}
