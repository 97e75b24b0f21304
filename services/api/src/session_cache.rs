//! A short-lived, bounded, in-process cache of validated sessions.
//!
//! Without it every authenticated request costs a `ValidateSession` call (gRPC to the session
//! service, then a Lua script in Redis) before any work: under load that was a third of the
//! api's gRPC traffic. A hit skips the call; a miss validates as before and caches the answer
//! for at most `ttl` (default 1 s, `API_SESSION_CACHE_TTL`; 0 turns the cache off).
//!
//! What a cached answer may miss, and for how long:
//! - A logout through this api process (`DELETE /api/v1/sessions/current`, `POST /logout`)
//!   evicts the session at once, and a validation that was in flight while any revocation
//!   happened is not cached (see [`SessionCache::epoch`]): the revoked cookie is refused by
//!   the very next request.
//! - A revocation anywhere else (another api replica's logout, a call to the session service
//!   directly, an operator deleting keys in Redis) is seen by this process within `ttl`.
//! - Expiry: an entry never outlives the session's own idle or absolute expiry. A hit does not
//!   reach Redis, so it does not slide the idle expiry; the next miss (at most `ttl` later)
//!   does. With an idle timeout of minutes to hours that difference is invisible.
//!
//! Only valid sessions are cached (unknown or malformed cookies always go to the session
//! service), so the entries are bounded by live sessions in use; `capacity` bounds them anyway.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use iot_proto::session::v1::Session;

pub struct SessionCache {
    ttl: Duration,
    capacity: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    /// Bumped by every eviction: a validation that started under an older epoch is not cached.
    epoch: u64,
    /// When expired entries were last swept (at most once per `ttl` when the map is full).
    swept: Option<Instant>,
}

struct Entry {
    session: Arc<Session>,
    expires: Instant,
}

impl SessionCache {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { ttl, capacity, inner: Mutex::new(Inner::default()) }
    }

    pub fn enabled(&self) -> bool {
        !self.ttl.is_zero() && self.capacity > 0
    }

    /// The cached session of `token`, if it was validated less than `ttl` ago.
    pub fn get(&self, token: &str) -> Option<Arc<Session>> {
        if !self.enabled() {
            return None;
        }
        // A poisoned lock only means another request panicked while holding it; the map is
        // still consistent (every critical section is a single map operation).
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inner.entries.get(token)?;
        (entry.expires > Instant::now()).then(|| entry.session.clone())
    }

    /// Read before validating; pass to [`insert`](Self::insert) with the answer.
    pub fn epoch(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).epoch
    }

    /// Caches `session` for `token` unless an eviction happened since `epoch` was read (the
    /// answer may predate a logout), the session expires sooner than the cache would forget it
    /// (then only until its expiry), or the cache is full of live entries.
    pub fn insert(&self, token: &str, session: Arc<Session>, epoch: u64) {
        if !self.enabled() {
            return;
        }
        let now = Instant::now();
        let now_us = chrono::Utc::now().timestamp_micros();
        let session_left_us = session.idle_expires_at_us.min(session.absolute_expires_at_us).saturating_sub(now_us);
        let Ok(session_left_us) = u64::try_from(session_left_us) else { return };
        let lifetime = self.ttl.min(Duration::from_micros(session_left_us));
        if lifetime.is_zero() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if inner.epoch != epoch {
            return;
        }
        if inner.entries.len() >= self.capacity && !inner.entries.contains_key(token) {
            if inner.swept.is_some_and(|at| now.duration_since(at) < self.ttl) {
                return;
            }
            inner.swept = Some(now);
            inner.entries.retain(|_, entry| entry.expires > now);
            if inner.entries.len() >= self.capacity {
                return;
            }
        }
        inner.entries.insert(token.to_string(), Entry { session, expires: now + lifetime });
    }

    /// Forgets `token` and keeps validations in flight from caching it again.
    pub fn evict(&self, token: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.epoch = inner.epoch.wrapping_add(1);
        inner.entries.remove(token);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn session(expires_in: Duration) -> Arc<Session> {
        let at = chrono::Utc::now().timestamp_micros() + expires_in.as_micros() as i64;
        Arc::new(Session {
            session_id: "s".into(),
            user_id: 7,
            idle_expires_at_us: at,
            absolute_expires_at_us: at + 3_600_000_000,
            ..Session::default()
        })
    }

    #[test]
    fn hit_until_ttl_then_miss() {
        let cache = SessionCache::new(Duration::from_millis(50), 10);
        assert!(cache.get("t").is_none());
        cache.insert("t", session(Duration::from_secs(60)), cache.epoch());
        assert_eq!(cache.get("t").unwrap().user_id, 7);
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get("t").is_none());
    }

    #[test]
    fn never_outlives_the_session() {
        let cache = SessionCache::new(Duration::from_secs(60), 10);
        cache.insert("t", session(Duration::from_millis(50)), cache.epoch());
        assert!(cache.get("t").is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert!(cache.get("t").is_none());
        cache.insert("expired", session(Duration::ZERO), cache.epoch());
        assert!(cache.get("expired").is_none());
    }

    #[test]
    fn eviction_wins_over_a_validation_in_flight() {
        let cache = SessionCache::new(Duration::from_secs(60), 10);
        cache.insert("t", session(Duration::from_secs(60)), cache.epoch());
        let before_logout = cache.epoch();
        cache.evict("t");
        assert!(cache.get("t").is_none());
        // An answer obtained before the logout arrives late: not cached.
        cache.insert("t", session(Duration::from_secs(60)), before_logout);
        assert!(cache.get("t").is_none());
        cache.insert("t", session(Duration::from_secs(60)), cache.epoch());
        assert!(cache.get("t").is_some());
    }

    #[test]
    fn bounded_and_off_when_ttl_is_zero() {
        let cache = SessionCache::new(Duration::from_secs(60), 2);
        for token in ["a", "b", "c"] {
            cache.insert(token, session(Duration::from_secs(60)), cache.epoch());
        }
        assert!(cache.get("a").is_some() && cache.get("b").is_some());
        assert!(cache.get("c").is_none(), "full of live entries: not cached");
        let off = SessionCache::new(Duration::ZERO, 10);
        off.insert("a", session(Duration::from_secs(60)), off.epoch());
        assert!(off.get("a").is_none());
    }
}
