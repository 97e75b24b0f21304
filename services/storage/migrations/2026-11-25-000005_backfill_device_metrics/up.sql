-- Readings stored before device_metrics existed.
INSERT IGNORE INTO device_metrics (device_pk, metric) SELECT DISTINCT device_pk, metric FROM readings;
