//! Users: accounts with Argon2id password hashes. The hash never leaves this module.

use std::sync::Arc;

use argon2::{
    Argon2, PasswordHash, PasswordVerifier,
    password_hash::{PasswordHasher as _, SaltString},
};
use chrono::NaiveDateTime;
use diesel::{OptionalExtension as _, prelude::*, sql_types::BigInt};
use diesel_async::{AsyncMysqlConnection, RunQueryDsl};
use rand::RngCore as _;
use tokio::sync::Semaphore;

use crate::{
    error::{Result, StorageError},
    schema::users,
};

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = users, check_for_backend(diesel::mysql::Mysql))]
pub struct UserRow {
    pub id: u64,
    pub username: String,
    pub password_hash: String,
    pub is_admin: bool,
    pub created_at: NaiveDateTime,
}

#[derive(Insertable)]
#[diesel(table_name = users)]
struct NewUser<'a> {
    username: &'a str,
    password_hash: &'a str,
    is_admin: bool,
    created_at: NaiveDateTime,
}

#[derive(QueryableByName)]
struct InsertId {
    #[diesel(sql_type = diesel::sql_types::Unsigned<BigInt>)]
    id: u64,
}

#[derive(QueryableByName)]
struct Flag {
    #[diesel(sql_type = diesel::sql_types::Nullable<BigInt>)]
    flag: Option<i64>,
}

/// The current time as the database stores it (microseconds).
pub fn now() -> NaiveDateTime {
    let micros = chrono::Utc::now().timestamp_micros();
    chrono::DateTime::from_timestamp_micros(micros)
        .unwrap_or_default()
        .naive_utc()
}

pub fn micros(at: NaiveDateTime) -> i64 {
    at.and_utc().timestamp_micros()
}

/// Argon2id hashing off the async threads, with a bound on how many run at once: each one
/// takes ~19 MiB and real CPU time, and a burst of logins must not exhaust the host.
pub struct Passwords {
    permits: Semaphore,
    /// Verified against when the user does not exist, so that "no such user" costs the same
    /// time as "wrong password" and timing does not reveal which usernames exist.
    dummy_hash: String,
}

impl Passwords {
    pub async fn new() -> anyhow::Result<Arc<Self>> {
        let parallel = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2);
        let dummy_hash =
            tokio::task::spawn_blocking(|| hash_blocking("not a password of anyone")).await??;
        Ok(Arc::new(Self {
            permits: Semaphore::new(parallel.max(2)),
            dummy_hash,
        }))
    }

    pub async fn hash(&self, password: String) -> Result<String> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(tokio::task::spawn_blocking(move || hash_blocking(&password)).await??)
    }

    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.clone());
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let matches = tokio::task::spawn_blocking(move || match PasswordHash::new(&hash) {
            Ok(parsed) => Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        })
        .await?;
        Ok(known && matches)
    }
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    // Argon2::default() is Argon2id v19 with the OWASP-recommended m=19 MiB, t=2, p=1.
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("argon2: {e}"))?;
    Ok(hash.to_string())
}

async fn insert(
    conn: &mut AsyncMysqlConnection,
    username: &str,
    hash: &str,
    is_admin: bool,
) -> Result<UserRow> {
    let created_at = now();
    let inserted = diesel::insert_into(users::table)
        .values(&NewUser {
            username,
            password_hash: hash,
            is_admin,
            created_at,
        })
        .execute(conn)
        .await;
    match inserted {
        Ok(_) => {}
        Err(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            _,
        )) => {
            return Err(StorageError::AlreadyExists(format!(
                "username {username:?} is taken"
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let InsertId { id } = diesel::sql_query("SELECT LAST_INSERT_ID() AS id")
        .get_result(conn)
        .await?;
    Ok(UserRow {
        id,
        username: username.to_string(),
        password_hash: hash.to_string(),
        is_admin,
        created_at,
    })
}

pub async fn create(
    conn: &mut AsyncMysqlConnection,
    username: &str,
    hash: &str,
    is_admin: bool,
) -> Result<UserRow> {
    insert(conn, username, hash, is_admin).await
}

/// Creates the first user as admin, or fails with FAILED_PRECONDITION when any user exists.
/// A named lock makes check-and-insert atomic: plain `INSERT ... WHERE NOT EXISTS` under
/// InnoDB lets two empty-table transactions deadlock instead of one of them losing cleanly.
pub async fn create_first(
    conn: &mut AsyncMysqlConnection,
    username: &str,
    hash: &str,
) -> Result<UserRow> {
    let Flag { flag } = diesel::sql_query(
        "SELECT GET_LOCK(CONCAT('iot_storage_first_user.', MD5(DATABASE())), 10) AS flag",
    )
    .get_result(conn)
    .await?;
    if flag != Some(1) {
        return Err(StorageError::Unavailable(
            "another first-user registration is in progress".into(),
        ));
    }
    let result = async {
        let Flag { flag: exists } = diesel::sql_query("SELECT EXISTS(SELECT 1 FROM users) AS flag")
            .get_result(&mut *conn)
            .await?;
        if exists == Some(1) {
            return Err(StorageError::FailedPrecondition(
                "a user already exists".into(),
            ));
        }
        insert(&mut *conn, username, hash, true).await
    }
    .await;
    let _ = diesel::sql_query(
        "SELECT RELEASE_LOCK(CONCAT('iot_storage_first_user.', MD5(DATABASE())))",
    )
    .execute(conn)
    .await;
    result
}

pub async fn by_id(conn: &mut AsyncMysqlConnection, id: u64) -> Result<Option<UserRow>> {
    Ok(users::table
        .find(id)
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

pub async fn by_username(
    conn: &mut AsyncMysqlConnection,
    username: &str,
) -> Result<Option<UserRow>> {
    Ok(users::table
        .filter(users::username.eq(username))
        .select(UserRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// Deletes the user; its devices and their readings go with it (ON DELETE CASCADE).
pub async fn delete(conn: &mut AsyncMysqlConnection, id: u64) -> Result<bool> {
    let deleted = diesel::delete(users::table.find(id)).execute(conn).await?;
    Ok(deleted > 0)
}

pub async fn count(conn: &mut AsyncMysqlConnection) -> Result<u64> {
    let n: i64 = users::table.count().get_result(conn).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
