-- Clustered on the range-scan key, so a (device, metric, time range) query reads one
-- contiguous stretch of the primary key, and the key itself makes re-writes idempotent.
-- ts_us is microseconds since the epoch as on the wire: no time-zone conversion, and
-- epoch-aligned buckets are plain integer arithmetic.
CREATE TABLE readings (
    device_pk BIGINT UNSIGNED NOT NULL,
    metric VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    ts_us BIGINT NOT NULL,
    value DOUBLE NOT NULL,
    PRIMARY KEY (device_pk, metric, ts_us),
    CONSTRAINT readings_device_fk FOREIGN KEY (device_pk) REFERENCES devices (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARACTER SET ascii COLLATE ascii_bin;
