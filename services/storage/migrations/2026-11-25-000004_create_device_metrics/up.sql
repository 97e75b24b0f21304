-- The metrics each device has reported. "Every metric of a device" is then a short primary-key
-- range, instead of depending on the optimiser picking a loose index scan over readings, which
-- it does only when the table's statistics happen to be fresh.
CREATE TABLE device_metrics (
    device_pk BIGINT UNSIGNED NOT NULL,
    metric VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    PRIMARY KEY (device_pk, metric),
    CONSTRAINT device_metrics_device_fk FOREIGN KEY (device_pk) REFERENCES devices (id) ON DELETE CASCADE
) ENGINE = InnoDB DEFAULT CHARACTER SET ascii COLLATE ascii_bin;
