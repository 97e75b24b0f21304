//! Sessions in Redis.
//!
//! Keys (all under the configured prefix `P`):
//! - `P s:{hash}`: a Redis hash with the session's fields, where `hash = hex(SHA-256(token))`.
//!   Its TTL is the idle timeout, capped by what is left of the absolute lifetime, so Redis
//!   itself forgets expired sessions.
//! - `P u:{user_id}`: the user's index, a Redis hash `session_id -> token hash`. A hash rather
//!   than a plain set so that revoking by public id (with the owner check built in: the id is
//!   looked up in *that user's* index) is one O(1) lookup. Entries of sessions that expired on
//!   their own are pruned when the index is read (list) or grown (create).
//!
//! Every multi-step change is a Lua script, so it is atomic with respect to other clients.
//! The scripts build the index/session key names from the prefix they are given, which is
//! fine on a single Redis (or a primary with replicas); on Redis Cluster the two key families
//! would need a shared hash tag.

use std::{
    future::Future,
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use redis::{
    Client, ErrorKind, RedisError, RedisResult, Script, ServerErrorKind,
    aio::{ConnectionManager, ConnectionManagerConfig},
};

use tracing::{Instrument, field::Empty};

use crate::token;

/// Host, port and database of the Redis server, as the spans name them.
#[derive(Debug)]
struct RedisTarget {
    host: String,
    port: i64,
    db: i64,
}

impl RedisTarget {
    fn of(client: &Client) -> Self {
        let info = client.get_connection_info();
        let (host, port) = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) | redis::ConnectionAddr::TcpTls { host, port, .. } => {
                (host.clone(), i64::from(*port))
            }
            other => (other.to_string(), 0),
        };
        Self { host, port, db: info.redis_settings().db() }
    }
}

/// What a caller of the store may get wrong with the store itself (never with the request).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session store (Redis) unavailable: {0}")]
    Unavailable(String),
    #[error("session store (Redis) did not answer within {0:?}")]
    Timeout(Duration),
    #[error("session store (Redis) error: {0}")]
    Redis(RedisError),
    #[error("session store (Redis) holds a malformed session: {0}")]
    Corrupt(String),
    #[error("invalid Redis configuration: {0}")]
    Config(RedisError),
}

impl StoreError {
    /// A short, stable name of the failure, for `error.type` on spans.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
            Self::Timeout(_) => "timeout",
            Self::Redis(_) => "redis_error",
            Self::Corrupt(_) => "corrupt_session",
            Self::Config(_) => "config",
        }
    }
}

impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> Self {
        let transient = match error.kind() {
            ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => true,
            ErrorKind::Server(kind) => matches!(
                kind,
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            ),
            _ => false,
        };
        if transient { Self::Unavailable(error.to_string()) } else { Self::Redis(error) }
    }
}

/// A session as stored, without its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSession {
    pub session_id: String,
    pub user_id: u64,
    pub username: String,
    pub is_admin: bool,
    pub created_at_us: i64,
    pub last_seen_us: i64,
    pub idle_expires_at_us: i64,
    pub absolute_expires_at_us: i64,
    pub csrf_token: String,
    pub user_agent: String,
}

#[derive(Debug, Clone)]
pub struct NewSession {
    pub user_id: u64,
    pub username: String,
    pub is_admin: bool,
    pub user_agent: String,
}

/// Outcome of revoking by token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    Revoked,
    /// Unknown, expired or already revoked.
    NotFound,
    /// The session exists but belongs to someone else than the expected user; nothing was changed.
    WrongOwner,
}

const FIELDS: [&str; 8] =
    ["user_id", "username", "is_admin", "created_at", "last_seen", "absolute_expires_at", "csrf_token", "user_agent"];

// KEYS: session, index. ARGV: user_id, username, is_admin, now_us, absolute_expires_us,
// csrf, user_agent, session_ttl_ms, session_id, hash, session key prefix, index_ttl_ms.
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('HSET', KEYS[1], 'user_id', ARGV[1], 'username', ARGV[2], 'is_admin', ARGV[3],
  'created_at', ARGV[4], 'last_seen', ARGV[4], 'absolute_expires_at', ARGV[5],
  'csrf_token', ARGV[6], 'user_agent', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[8])
local entries = redis.call('HGETALL', KEYS[2])
for i = 1, #entries, 2 do
  if redis.call('EXISTS', ARGV[11] .. entries[i + 1]) == 0 then
    redis.call('HDEL', KEYS[2], entries[i])
  end
end
redis.call('HSET', KEYS[2], ARGV[9], ARGV[10])
local index_ttl = tonumber(ARGV[12])
if redis.call('PTTL', KEYS[2]) < index_ttl then
  redis.call('PEXPIRE', KEYS[2], index_ttl)
end
return 1
",
    )
});

// KEYS: session. ARGV: now_us, idle_ms. Returns the fields (last_seen updated) plus the new
// TTL in ms, or nil when there is no live session.
static VALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('HMGET', KEYS[1], 'user_id', 'username', 'is_admin', 'created_at', 'last_seen',
  'absolute_expires_at', 'csrf_token', 'user_agent')
if not v[1] or not v[6] then return false end
local remaining_ms = math.floor((tonumber(v[6]) - tonumber(ARGV[1])) / 1000)
if remaining_ms <= 0 then
  redis.call('DEL', KEYS[1])
  return false
end
local ttl = math.min(tonumber(ARGV[2]), remaining_ms)
for j = 1, 8 do if not v[j] then v[j] = '' end end
redis.call('HSET', KEYS[1], 'last_seen', ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl)
v[5] = ARGV[1]
v[9] = tostring(ttl)
return v
",
    )
});

// KEYS: index. ARGV: session key prefix. Returns, per live session, its fields plus the
// remaining TTL in ms and the session id; drops index entries of sessions that are gone.
static LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local out = {}
local entries = redis.call('HGETALL', KEYS[1])
for i = 1, #entries, 2 do
  local key = ARGV[1] .. entries[i + 1]
  local v = redis.call('HMGET', key, 'user_id', 'username', 'is_admin', 'created_at', 'last_seen',
    'absolute_expires_at', 'csrf_token', 'user_agent')
  local ttl = redis.call('PTTL', key)
  if v[1] and ttl ~= -2 then
    for j = 1, 8 do if not v[j] then v[j] = '' end end
    v[9] = tostring(ttl)
    v[10] = entries[i]
    out[#out + 1] = v
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
return out
",
    )
});

// KEYS: session. ARGV: expected user id ('' = anyone), index key prefix, session id.
// Returns 1 revoked, 0 not found, -1 owned by someone else.
static REVOKE_TOKEN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local uid = redis.call('HGET', KEYS[1], 'user_id')
if not uid then return 0 end
if ARGV[1] ~= '' and ARGV[1] ~= uid then return -1 end
redis.call('DEL', KEYS[1])
redis.call('HDEL', ARGV[2] .. uid, ARGV[3])
return 1
",
    )
});

// KEYS: index. ARGV: session id, session key prefix. Returns 1 revoked, 0 not found.
static REVOKE_ID: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local hash = redis.call('HGET', KEYS[1], ARGV[1])
if not hash then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return redis.call('DEL', ARGV[2] .. hash)
",
    )
});

// KEYS: index. ARGV: session key prefix. Returns how many live sessions were deleted.
static REVOKE_ALL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local n = 0
for _, hash in ipairs(redis.call('HVALS', KEYS[1])) do
  n = n + redis.call('DEL', ARGV[1] .. hash)
end
redis.call('DEL', KEYS[1])
return n
",
    )
});

#[derive(Clone)]
pub struct SessionStore {
    conn: ConnectionManager,
    /// Where Redis is, for the attributes of the Redis spans.
    target: Arc<RedisTarget>,
    prefix: String,
    idle: Duration,
    absolute: Duration,
    op_timeout: Duration,
}

impl std::fmt::Debug for SessionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionStore").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

impl SessionStore {
    /// Prepares the connection without connecting: the service starts (and reports not
    /// ready) while Redis is down, and connects as soon as Redis answers.
    pub fn new(
        redis_url: &str,
        prefix: &str,
        idle: Duration,
        absolute: Duration,
        op_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = Client::open(redis_url).map_err(StoreError::Config)?;
        let target = Arc::new(RedisTarget::of(&client));
        // Few, quick reconnect attempts: each RPC is bounded by `op_timeout` anyway, and a
        // failed attempt is simply started again by the next command.
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_config).map_err(StoreError::Config)?;
        Ok(Self { conn, target, prefix: prefix.to_string(), idle, absolute, op_timeout })
    }

    fn session_prefix(&self) -> String {
        format!("{}s:", self.prefix)
    }

    fn session_key(&self, hash: &str) -> String {
        format!("{}s:{hash}", self.prefix)
    }

    fn index_prefix(&self) -> String {
        format!("{}u:", self.prefix)
    }

    fn index_key(&self, user_id: u64) -> String {
        format!("{}u:{user_id}", self.prefix)
    }

    /// Runs one Redis operation within `op_timeout`, in a client span (`db.system` redis,
    /// `db.operation` the command, `db.query.summary` command and script). A command that
    /// failed because the connection broke (Redis restarted) is tried once more: the
    /// connection manager has begun reconnecting by then, and every operation here is idempotent.
    async fn run<T, F, Fut>(&self, command: &'static str, summary: &'static str, op: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let span = tracing::info_span!(
            "redis",
            otel.name = summary,
            otel.kind = "client",
            otel.status_code = Empty,
            db.system = "redis",
            db.system.name = "redis",
            db.operation = command,
            db.operation.name = command,
            db.query.summary = summary,
            db.namespace = %self.target.db,
            server.address = self.target.host.as_str(),
            server.port = self.target.port,
            error.type = Empty,
        );
        let result = self.bounded(op).instrument(span.clone()).await;
        if let Err(error) = &result {
            span.record("otel.status_code", "error");
            span.record("error.type", error.kind());
        }
        result
    }

    /// [`Self::run`] without a span.
    async fn bounded<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempt = async {
            match op(self.conn.clone()).await {
                Err(error) if error.is_unrecoverable_error() || error.is_connection_dropped() => {
                    tracing::debug!(%error, "Redis connection lost; retrying once on a new connection");
                    op(self.conn.clone()).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.op_timeout, attempt).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::Timeout(self.op_timeout)),
        }
    }

    /// Untraced: readiness probes call it every few seconds, and a trace each time would
    /// bury the ones that matter.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.bounded(|mut conn| async move { redis::cmd("PING").query_async(&mut conn).await }).await?;
        if pong == "PONG" { Ok(()) } else { Err(StoreError::Corrupt(format!("PING answered {pong:?}"))) }
    }

    /// Creates a session; returns its token (the only time it exists outside the client) and the session.
    pub async fn create(&self, new: NewSession) -> Result<(String, StoredSession), StoreError> {
        let token = token::new_token();
        let hash = token::token_hash(&token);
        let session_id = token::session_id(&hash);
        let csrf_token = token::new_csrf_token();
        let now = now_us();
        let absolute_expires_at_us = now.saturating_add(duration_us(self.absolute));
        let ttl = self.idle.min(self.absolute);
        let session_key = self.session_key(&hash);
        let index_key = self.index_key(new.user_id);
        let session_prefix = self.session_prefix();
        let is_admin = if new.is_admin { "1" } else { "0" };
        let _: i64 = self
            .run("EVALSHA", "EVALSHA create", |mut conn| {
                let mut invocation = CREATE.key(&session_key);
                invocation
                    .key(&index_key)
                    .arg(new.user_id)
                    .arg(&new.username)
                    .arg(is_admin)
                    .arg(now)
                    .arg(absolute_expires_at_us)
                    .arg(&csrf_token)
                    .arg(&new.user_agent)
                    .arg(duration_ms(ttl))
                    .arg(&session_id)
                    .arg(&hash)
                    .arg(&session_prefix)
                    .arg(duration_ms(self.absolute));
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let session = StoredSession {
            session_id,
            user_id: new.user_id,
            username: new.username,
            is_admin: new.is_admin,
            created_at_us: now,
            last_seen_us: now,
            idle_expires_at_us: now.saturating_add(duration_us(ttl)),
            absolute_expires_at_us,
            csrf_token,
            user_agent: new.user_agent,
        };
        Ok((token, session))
    }

    /// The live session of `token`, its idle expiry slid forward; `None` when there is none.
    /// `token` must be well formed (see [`token::is_well_formed`]).
    pub async fn validate(&self, token: &str) -> Result<Option<StoredSession>, StoreError> {
        let hash = token::token_hash(token);
        let key = self.session_key(&hash);
        let now = now_us();
        let fields: Option<Vec<String>> = self
            .run("EVALSHA", "EVALSHA validate", |mut conn| {
                let mut invocation = VALIDATE.key(&key);
                invocation.arg(now).arg(duration_ms(self.idle));
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let Some(fields) = fields else { return Ok(None) };
        parse_session(&fields, token::session_id(&hash), now).map(Some)
    }

    /// The user's live sessions, newest first.
    pub async fn list(&self, user_id: u64) -> Result<Vec<StoredSession>, StoreError> {
        let key = self.index_key(user_id);
        let session_prefix = self.session_prefix();
        let now = now_us();
        let rows: Vec<Vec<String>> = self
            .run("EVALSHA", "EVALSHA list", |mut conn| {
                let mut invocation = LIST.key(&key);
                invocation.arg(&session_prefix);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        let mut sessions = rows
            .into_iter()
            .map(|mut row| {
                let session_id = row.pop().unwrap_or_default();
                parse_session(&row, session_id, now)
            })
            .collect::<Result<Vec<_>, _>>()?;
        // A stale index entry cannot point at another user's session (hashes are unique), but
        // a corrupted one could; never show it.
        sessions.retain(|session| session.user_id == user_id);
        sessions.sort_by(|a, b| b.created_at_us.cmp(&a.created_at_us).then_with(|| a.session_id.cmp(&b.session_id)));
        Ok(sessions)
    }

    /// Revokes the session of `token`; with `owner`, only if it belongs to that user.
    pub async fn revoke_token(&self, token: &str, owner: Option<u64>) -> Result<RevokeOutcome, StoreError> {
        let hash = token::token_hash(token);
        let key = self.session_key(&hash);
        let session_id = token::session_id(&hash);
        let index_prefix = self.index_prefix();
        let owner = owner.map(|id| id.to_string()).unwrap_or_default();
        let outcome: i64 = self
            .run("EVALSHA", "EVALSHA revoke_token", |mut conn| {
                let mut invocation = REVOKE_TOKEN.key(&key);
                invocation.arg(&owner).arg(&index_prefix).arg(&session_id);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(match outcome {
            1 => RevokeOutcome::Revoked,
            -1 => RevokeOutcome::WrongOwner,
            _ => RevokeOutcome::NotFound,
        })
    }

    /// Revokes `user_id`'s session with the public id `session_id`; false when that user has no such live session.
    pub async fn revoke_id(&self, user_id: u64, session_id: &str) -> Result<bool, StoreError> {
        let key = self.index_key(user_id);
        let session_prefix = self.session_prefix();
        let deleted: i64 = self
            .run("EVALSHA", "EVALSHA revoke_id", |mut conn| {
                let mut invocation = REVOKE_ID.key(&key);
                invocation.arg(session_id).arg(&session_prefix);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(deleted > 0)
    }

    /// Revokes every session of `user_id`; returns how many live ones there were.
    pub async fn revoke_user(&self, user_id: u64) -> Result<u64, StoreError> {
        let key = self.index_key(user_id);
        let session_prefix = self.session_prefix();
        let deleted: u64 = self
            .run("EVALSHA", "EVALSHA revoke_all", |mut conn| {
                let mut invocation = REVOKE_ALL.key(&key);
                invocation.arg(&session_prefix);
                async move { invocation.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(deleted)
    }
}

/// Fields in [`FIELDS`] order, then the remaining TTL in milliseconds.
fn parse_session(fields: &[String], session_id: String, now: i64) -> Result<StoredSession, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("session {session_id}: {what}"));
    if fields.len() < FIELDS.len() + 1 {
        return Err(corrupt("missing fields"));
    }
    let int = |i: usize| fields[i].parse::<i64>().map_err(|_| corrupt(FIELDS[i]));
    let user_id = fields[0].parse::<u64>().map_err(|_| corrupt("user_id"))?;
    let absolute_expires_at_us = int(5)?;
    let ttl_ms = fields[8].parse::<i64>().map_err(|_| corrupt("ttl"))?;
    // A key without TTL (someone PERSISTed it) still ends at the absolute lifetime.
    let idle_expires_at_us = if ttl_ms >= 0 {
        now.saturating_add(ttl_ms.saturating_mul(1000)).min(absolute_expires_at_us)
    } else {
        absolute_expires_at_us
    };
    Ok(StoredSession {
        user_id,
        username: fields[1].clone(),
        is_admin: fields[2] == "1",
        created_at_us: int(3)?,
        last_seen_us: int(4)?,
        idle_expires_at_us,
        absolute_expires_at_us,
        csrf_token: fields[6].clone(),
        user_agent: fields[7].clone(),
        session_id,
    })
}

fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(duration_us).unwrap_or(0)
}

fn duration_us(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}
