"""Alerts: rules modelled on Prometheus alerting rules, read from YAML or the admin API."""
