//! Client spans for the statements storage sends to MySQL/MariaDB (OpenTelemetry database
//! conventions), fed by diesel's connection instrumentation: every statement a connection runs
//! inside a traced request gets a span, without any change to the query code.
//!
//! A span is named by a summary of its statement (`SELECT readings`, `INSERT readings`,
//! `COMMIT`) and carries `db.system.name`, `db.operation.name`, `db.collection.name`,
//! `db.query.summary`, `db.namespace`, `server.address` and `server.port`, never the statement's
//! values: diesel binds every value as a parameter, and only the SQL text before the bind list is
//! read. The full text is not attached either (a batch insert is a thousand `(?, ?, ?, ?)` groups).
//!
//! Statements outside a request (readiness pings, migrations) get no span: the span is only
//! created when there is a current span to be the child of. With tracing off nothing is created.

use std::{fmt::Write as _, sync::Arc};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use tracing::{Span, field::Empty};

/// The database server a connection talks to; the same for every statement of the connection.
#[derive(Debug)]
pub struct Target {
    pub system: &'static str,
    pub namespace: String,
    pub address: String,
    pub port: u16,
}

impl Target {
    /// Read from an open connection, so that the system is what the server said it is and the
    /// URL (with its password) is never looked at.
    pub fn of(conn: &mysql_async::Conn) -> Self {
        let opts = conn.opts();
        // mysql_async knows whether the handshake came from MariaDB but does not say so; a
        // MariaDB server reports its own version (10.x, 11.x, ...) and MySQL has no release
        // past 9, so the major version tells them apart.
        let system = if conn.server_version().0 >= 10 {
            iot_runtime::telemetry::semconv::DB_SYSTEM_MARIADB
        } else {
            iot_runtime::telemetry::semconv::DB_SYSTEM_MYSQL
        };
        Self {
            system,
            namespace: opts.db_name().unwrap_or_default().to_string(),
            address: opts.ip_or_hostname().to_string(),
            port: opts.tcp_port(),
        }
    }
}

/// diesel instrumentation of one connection: opens a span when a statement starts and ends it
/// when the statement finishes. A connection runs one statement at a time.
pub struct QueryTracing {
    target: Arc<Target>,
    current: Option<Span>,
}

impl QueryTracing {
    pub fn new(target: Target) -> Self {
        Self {
            target: Arc::new(target),
            current: None,
        }
    }

    fn start(&mut self) {
        self.current = None;
        if !iot_runtime::telemetry::is_enabled() {
            return;
        }
        let parent = Span::current();
        if parent.is_none() {
            return;
        }
        let target = &self.target;
        self.current = Some(tracing::info_span!(
            parent: &parent,
            "db",
            otel.name = Empty,
            otel.kind = "client",
            otel.status_code = Empty,
            db.system = target.system,
            db.system.name = target.system,
            db.operation = Empty,
            db.operation.name = Empty,
            db.collection.name = Empty,
            db.query.summary = Empty,
            db.namespace = target.namespace.as_str(),
            server.address = target.address.as_str(),
            server.port = target.port,
            error.type = Empty,
        ));
    }

    fn finish(&mut self, sql: &dyn std::fmt::Display, error: Option<&diesel::result::Error>) {
        let Some(span) = self.current.take() else {
            return;
        };
        let summary = Summary::of(&head(sql));
        span.record("otel.name", summary.text.as_str());
        span.record("db.query.summary", summary.text.as_str());
        if let Some(operation) = &summary.operation {
            span.record("db.operation", operation.as_str());
            span.record("db.operation.name", operation.as_str());
        }
        if let Some(collection) = &summary.collection {
            span.record("db.collection.name", collection.as_str());
        }
        if let Some(error) = error {
            span.record("otel.status_code", "error");
            span.record("error.type", error_type(error));
        }
    }
}

impl Instrumentation for QueryTracing {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            // Not formatted here: diesel's text of a starting statement includes its bind values.
            InstrumentationEvent::StartQuery { .. } => self.start(),
            InstrumentationEvent::FinishQuery { query, error, .. } => self.finish(query, error),
            _ => {}
        }
    }
}

/// At most this much of a statement is read: enough for the keyword and the first table.
const HEAD_BYTES: usize = 2048;

/// The start of a statement's SQL text, without anything from ` -- binds:` on (diesel appends
/// the bind values there in some of its renderings).
fn head(sql: &dyn std::fmt::Display) -> String {
    struct Bounded(String);
    impl std::fmt::Write for Bounded {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            let room = HEAD_BYTES.saturating_sub(self.0.len());
            if s.len() <= room {
                self.0.push_str(s);
                return Ok(());
            }
            let mut end = room;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            self.0.push_str(&s[..end]);
            Err(std::fmt::Error) // stop formatting: the rest is not needed
        }
    }
    let mut out = Bounded(String::with_capacity(256));
    let _ = write!(out, "{sql}");
    let mut text = out.0;
    if let Some(at) = text.find(" -- binds:") {
        text.truncate(at);
    }
    text
}

/// `{operation} {table}` of a statement, as `db.query.summary` asks for.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    pub operation: Option<String>,
    pub collection: Option<String>,
    pub text: String,
}

impl Summary {
    /// Only keywords and identifiers are taken from the text, so no literal can end up in an
    /// attribute even for a statement built with one.
    pub fn of(sql: &str) -> Self {
        let mut words = sql
            .split(|c: char| c.is_whitespace() || c == '(' || c == ')' || c == ',')
            .filter(|w| !w.is_empty());
        let operation = words
            .next()
            .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
            .map(str::to_ascii_uppercase);
        let collection = operation.as_deref().and_then(|op| {
            let after = match op {
                "SELECT" | "DELETE" => "FROM",
                "INSERT" | "REPLACE" => "INTO",
                "UPDATE" => {
                    return words
                        .find(|w| {
                            !matches!(w.to_ascii_uppercase().as_str(), "LOW_PRIORITY" | "IGNORE")
                        })
                        .and_then(identifier);
                }
                _ => return None,
            };
            let mut words = words.skip_while(|w| !w.eq_ignore_ascii_case(after));
            words.next();
            words.next().and_then(identifier)
        });
        let text = match (&operation, &collection) {
            (Some(op), Some(table)) => format!("{op} {table}"),
            (Some(op), None) => op.clone(),
            (None, _) => "query".to_string(),
        };
        Self {
            operation,
            collection,
            text,
        }
    }
}

/// A table name: the last part of `` `db`.`table` ``, without quotes; `None` unless it is a plain
/// identifier.
fn identifier(word: &str) -> Option<String> {
    let name = word.rsplit('.').next()?.trim_matches('`');
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
    plain.then(|| name.to_string())
}

/// A short, low-cardinality class of a failed statement for `error.type`.
fn error_type(error: &diesel::result::Error) -> &'static str {
    use diesel::result::{DatabaseErrorKind as Kind, Error};
    match error {
        Error::DatabaseError(kind, _) => match kind {
            Kind::UniqueViolation => "unique_violation",
            Kind::ForeignKeyViolation => "foreign_key_violation",
            Kind::NotNullViolation => "not_null_violation",
            Kind::CheckViolation => "check_violation",
            Kind::SerializationFailure => "serialization_failure",
            Kind::ReadOnlyTransaction => "read_only_transaction",
            Kind::ClosedConnection => "closed_connection",
            _ => "database_error",
        },
        Error::NotFound => "not_found",
        Error::QueryBuilderError(_) => "query_builder_error",
        Error::DeserializationError(_) => "deserialization_error",
        Error::SerializationError(_) => "serialization_error",
        Error::RollbackTransaction | Error::RollbackErrorOnCommit { .. } => "rollback",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(sql: &str) -> String {
        Summary::of(sql).text
    }

    #[test]
    fn summaries_name_the_operation_and_the_first_table() {
        assert_eq!(
            summary(
                "SELECT `readings`.`metric`, `readings`.`ts_us` FROM `readings` WHERE `readings`.`device_pk` = ?"
            ),
            "SELECT readings"
        );
        assert_eq!(
            summary(
                "(SELECT metric, ts_us, value FROM readings WHERE device_pk = ? LIMIT 1) UNION ALL (SELECT 1)"
            ),
            "SELECT readings"
        );
        assert_eq!(
            summary("SELECT ... FROM (`devices` INNER JOIN `users` ON x)"),
            "SELECT devices"
        );
        assert_eq!(
            summary("INSERT IGNORE INTO `readings` (`device_pk`, `metric`) VALUES (?, ?), (?, ?)"),
            "INSERT readings"
        );
        assert_eq!(
            summary("insert into iot.device_metrics (a) values (?)"),
            "INSERT device_metrics"
        );
        assert_eq!(
            summary("UPDATE `devices` SET `name` = ? WHERE `devices`.`device_id` = ?"),
            "UPDATE devices"
        );
        assert_eq!(
            summary("DELETE FROM `users` WHERE `users`.`id` = ?"),
            "DELETE users"
        );
        assert_eq!(summary("SELECT 1"), "SELECT");
        assert_eq!(summary("BEGIN"), "BEGIN");
        assert_eq!(summary("COMMIT"), "COMMIT");
        assert_eq!(summary(""), "query");
    }

    #[test]
    fn literals_never_reach_the_summary() {
        // Whatever follows FROM/INTO that is not a plain identifier is dropped, not quoted.
        let s = Summary::of("SELECT x FROM 'secret value' WHERE a = 'b'");
        assert_eq!(
            (s.operation.as_deref(), s.collection.as_deref()),
            (Some("SELECT"), None)
        );
        assert_eq!(Summary::of("'; DROP TABLE users").text, "query");
    }

    #[test]
    fn the_head_stops_at_the_bind_list_and_at_its_bound() {
        assert_eq!(
            head(&"SELECT a FROM t WHERE b = ? -- binds: [\"secret\"]"),
            "SELECT a FROM t WHERE b = ?"
        );
        let long = format!(
            "INSERT INTO readings VALUES {}",
            "(?, ?, ?, ?), ".repeat(2000)
        );
        let h = head(&long);
        assert!(h.len() <= HEAD_BYTES && h.starts_with("INSERT INTO readings"));
    }
}
