"""Settings: one class, read from `MLPULSE_*` environment variables and `.env`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AmqpDsn, Field, RedisDsn, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from mlpulse.errors import ConfigError

MiB = 1024 * 1024


class Settings(BaseSettings):
    """Everything a role can be told from outside."""

    model_config = SettingsConfigDict(
        env_prefix="MLPULSE_",
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
    )

    amqp_url: AmqpDsn = AmqpDsn("amqp://guest:guest@localhost:5672/")
    redis_url: RedisDsn = RedisDsn("redis://localhost:6379/0")
    log_dir: Path = Path("./logs")
    data_dir: Path = Path("./data")
    models_dir: Path = Path("./models")
    http_port: int = Field(8080, ge=1, le=65535)
    secret: SecretStr | None = None
    allowed_origins: list[str] = Field(default_factory=list)
    metrics_public: bool = False
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    # Join state: a half waits this long for its partner, then counts as unmatched.
    join_ttl: float = Field(3600.0, gt=0)
    # A joined id is remembered this long, so a late duplicate is caught, not written.
    done_ttl: float = Field(3600.0, gt=0)
    max_message_bytes: int = Field(MiB, gt=0)
    max_upload_bytes: int = Field(256 * MiB, gt=0)

    # Task service: third-party labels pulled by Beat, and the bounds on every task.
    labels_url: str | None = None
    labels_interval: float = Field(30.0, gt=0)
    labels_timeout: float = Field(10.0, gt=0)
    task_soft_limit: float = Field(600.0, gt=0)
    task_hard_limit: float = Field(660.0, gt=0)
    score_chunk_rows: int = Field(100_000, ge=1)

    # Micro-batching: how many events a role gathers before one vectorised step,
    # and how long it waits for more once the first has arrived.
    prefetch: int = Field(2000, ge=1, le=65535)
    batch_events: int = Field(5000, ge=1)
    batch_linger_ms: float = Field(5.0, ge=0)
    # Batches a role works on at once (their acks still go out in order).
    pipeline_depth: int = Field(3, ge=1, le=64)

    # Live histogram of absolute errors: fixed-width bins plus one overflow bin.
    hist_bin_width: float = Field(5.0, gt=0)
    hist_bins: int = Field(80, ge=1, le=10_000)
    plot_interval: float = Field(10.0, gt=0)

    # Gateway: how long a login lasts, and the bounds on every WebSocket.
    login_ttl: int = Field(7 * 86400, gt=0)
    ws_max_per_user: int = Field(20, ge=1)
    ws_outbox: int = Field(256, ge=1)
    ws_max_frame_bytes: int = Field(64 * 1024, ge=128)
    ws_rate: float = Field(10.0, gt=0)
    ws_burst: int = Field(20, ge=1)
    http_host: str = "0.0.0.0"  # noqa: S104 - a server, meant to be reached
    # Where a role other than the gateway serves its Prometheus metrics (unset: nowhere).
    metrics_port: int | None = Field(None, ge=1, le=65535)

    # HTTP bounds: what one request may make the gateway buffer, and for how long.
    http_max_header_bytes: int = Field(16 * 1024, ge=1024)
    http_max_request_line: int = Field(8 * 1024, ge=256)
    http_header_timeout: float = Field(10.0, gt=0)
    http_keepalive: float = Field(5.0, gt=0)

    # Tasks: what one user may have running and submit, and how long files are kept.
    tasks_max_running: int = Field(10, ge=1)
    tasks_per_minute: int = Field(60, ge=1)
    retention_days: float = Field(7.0, gt=0)

    # Early warning: the drift windows shown and exported (seconds; the longest, and at
    # least an hour, sets how long counts are kept), the warning and drift thresholds of
    # PSI and of the Wasserstein distance in reference standard deviations, and the
    # fewest events in a window that get a verdict.
    # Off: the model role neither estimates errors nor counts bins (a baseline to measure).
    drift_enabled: bool = True
    drift_windows: list[int] = Field(default_factory=lambda: [300, 3600], min_length=1)
    drift_psi_warn: float = Field(0.1, gt=0)
    drift_psi_drift: float = Field(0.25, gt=0)
    drift_wasserstein_warn: float = Field(0.15, gt=0)
    drift_wasserstein_drift: float = Field(0.25, gt=0)
    drift_min_events: int = Field(1000, ge=1)

    # Alerts: the rules file (unset: the shipped defaults), how often the rules are
    # evaluated, and how long an evaluator's lease lasts before a standby takes over.
    alert_rules: Path | None = None
    alert_interval: float = Field(5.0, gt=0)
    alert_lease: float = Field(15.0, gt=0)
    # Where a webhook's generatorURL points: the dashboard as people reach it.
    public_url: str = "http://localhost:8080"

    # The metric log: the live file rotates at this size (bytes; 0: never) and when a new
    # period of this many seconds begins (UTC days; 0: never); rotated files are gzipped
    # and kept this many days.
    log_rotate_bytes: int = Field(1 << 30, ge=0)
    log_rotate_interval: float = Field(86400.0, ge=0)
    log_compress: bool = True
    log_retention_days: float = Field(7.0, gt=0)
    # The history: joined rows as Parquet (unset: <log dir>/history), at most this many
    # seconds behind the log; rows are kept this many days, per-minute rollups this many.
    # Off: the sink writes no history (a baseline to measure).
    history_enabled: bool = True
    history_dir: Path | None = None
    history_flush_seconds: float = Field(30.0, gt=0)
    history_retention_days: float = Field(35.0, gt=0)
    rollup_retention_days: float = Field(400.0, gt=0)

    # Failure paths: a stop finishes within this bound whatever the backends do, and a
    # lost broker or Redis is tried again at least this often.
    stop_timeout: float = Field(10.0, gt=0)
    reconnect_max_delay: float = Field(5.0, gt=0)

    @field_validator("drift_windows")
    @classmethod
    def _windows(cls, value: list[int]) -> list[int]:
        if any(w < 1 for w in value):
            raise ValueError("every window is a positive number of seconds")
        return sorted(set(value))

    @property
    def drift_keep(self) -> int:
        """The longest window the drift counts cover: the longest shown, at least an hour."""
        return max(3600, *self.drift_windows)

    def origins(self) -> set[str]:
        """Origins allowed to open a WebSocket: the setting, or this host on the HTTP port."""
        if self.allowed_origins:
            return {o.rstrip("/") for o in self.allowed_origins}
        return {f"http://{h}:{self.http_port}" for h in ("localhost", "127.0.0.1", "[::1]")}

    @property
    def metric_log(self) -> Path:
        """The append-only CSV of joined predictions."""
        return self.log_dir / "metric_log.csv"

    @property
    def history_path(self) -> Path:
        """The Parquet history of joined rows, in Hive layout."""
        return self.history_dir or self.log_dir / "history"

    @property
    def uploads_dir(self) -> Path:
        """Where uploaded CSVs wait for their task."""
        return self.data_dir / "uploads"

    @property
    def results_dir(self) -> Path:
        """Where tasks leave what they made, one entry per task id."""
        return self.data_dir / "results"

    @property
    def plot_path(self) -> Path:
        """The error-distribution PNG the plot role keeps fresh."""
        return self.log_dir / "error_distribution.png"


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad variable and what is wrong with it."""
    err = exc.errors()[0]
    name = "MLPULSE_" + "_".join(str(p) for p in err["loc"][:1]).upper()
    value = err.get("input")
    shown = "" if value is None or "secret" in name.lower() else f" (got {value!r})"
    return f"{name}: {err['msg']}{shown}"


def load_settings() -> Settings:
    """Build the settings once, turning a bad value into a one-line `ConfigError`."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None
