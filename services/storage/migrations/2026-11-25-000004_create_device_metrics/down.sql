DROP TABLE device_metrics;
