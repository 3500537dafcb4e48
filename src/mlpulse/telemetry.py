"""Prometheus metrics of the pipeline roles, each served by its own process.

A role started with `MLPULSE_METRICS_PORT` serves them at `http://HOST:PORT/metrics`;
Prometheus tells the roles apart by its own `job` and `instance` labels. The gateway
serves its own (and the live aggregates) on its HTTP port at `/metrics`.
"""

from __future__ import annotations

import logging

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

MESSAGES_IN = Counter("mlpulse_messages_in_total", "Messages consumed", ["queue"])
MESSAGES_OUT = Counter("mlpulse_messages_out_total", "Messages published and confirmed",
                       ["queue"])
BATCH_MESSAGES = Histogram("mlpulse_batch_messages", "Messages per micro-batch",
                           buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000))
BATCH_SECONDS = Histogram("mlpulse_batch_seconds", "Time to handle one micro-batch",
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                   1, 2.5, 5, 10))
DEAD_LETTERED = Counter("mlpulse_dead_lettered_total", "Messages sent to mlpulse.dead",
                        ["queue", "reason"])
RECONNECTS = Counter("mlpulse_reconnects_total", "Reconnections to RabbitMQ")
# The series below belong to the metric role: they are registered only by it (`claim_for_
# metric_role`), so no other process exports them as zeros. A process that never claims
# them still updates them harmlessly (the in-process tests do).
JOIN_PENDING = Gauge("mlpulse_join_pending", "Halves waiting in Redis for their partner",
                     ["half"], registry=None)
JOINED = Gauge("mlpulse_joined", "Pairs joined and logged (from Redis, all processes)",
               registry=None)
UNMATCHED = Gauge("mlpulse_unmatched", "Halves expired without a partner (all processes)",
                  registry=None)
DUPLICATES = Gauge("mlpulse_duplicates", "Repeated halves counted, not written (all processes)",
                   registry=None)
REJECTED = Gauge("mlpulse_rejected", "Bad messages refused (all processes)", registry=None)
MAE = Gauge("mlpulse_mae", "Mean absolute error of everything joined so far", registry=None)
RMSE = Gauge("mlpulse_rmse", "Root mean squared error of everything joined so far",
             registry=None)
ERROR_CHANGES = Counter("mlpulse_error_changes", "Changes of the error level detected",
                        ["model_version"], registry=None)
HISTORY_ROWS = Counter("mlpulse_history_rows", "Joined rows written to the Parquet history",
                       registry=None)
HISTORY_FLUSH_SECONDS = Histogram("mlpulse_history_flush_seconds",
                                  "Time to put one flush of log rows into the history",
                                  buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                  registry=None)
HISTORY_BEHIND_BYTES = Gauge("mlpulse_history_behind_bytes",
                             "Bytes of the live log not yet in the history", registry=None)
LOG_ROTATIONS = Counter("mlpulse_log_rotations", "Rotations of the metric log", registry=None)
METRIC_ROLE_SERIES = (JOIN_PENDING, JOINED, UNMATCHED, DUPLICATES, REJECTED, MAE, RMSE,
                      ERROR_CHANGES, HISTORY_ROWS, HISTORY_FLUSH_SECONDS, HISTORY_BEHIND_BYTES,
                      LOG_ROTATIONS)
_claimed = False


def claim_for_metric_role() -> None:
    """Export the metric role's series from this process (once)."""
    global _claimed
    if not _claimed:
        for collector in METRIC_ROLE_SERIES:
            REGISTRY.register(collector)
        _claimed = True

def serve(port: int | None, host: str) -> None:
    """Serve this process's metrics on `port`, when one is set."""
    if not port:
        return
    try:
        start_http_server(port, addr=host)
    except OSError as exc:  # the role's work matters more than its metrics
        log.warning("metrics not served: port %d: %s", port, exc.strerror)
        return
    log.info("metrics on http://%s:%d/metrics", host, port)
