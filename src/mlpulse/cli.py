"""The `mlpulse` command: one subcommand per role, plus tools."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import click

from mlpulse.config import Settings, load_settings
from mlpulse.errors import ConfigError, MlpulseError

log = logging.getLogger("mlpulse")


def _settings(ctx: click.Context) -> Settings:
    settings = ctx.obj
    assert isinstance(settings, Settings)
    return settings


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mlpulse")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """mlpulse: watch how wrong a deployed model is, live."""
    ctx.obj = load_settings()


def _role(name: str, ctx: click.Context) -> None:
    from mlpulse.runtime import run_role

    settings = _settings(ctx)
    if name == "model":
        from mlpulse.pipeline.model import serve
    elif name == "metric":
        from mlpulse.pipeline.metric import serve
    elif name == "gateway":
        from mlpulse.gateway.server import serve
    elif name == "alerts":
        from mlpulse.alerts.role import serve
        from mlpulse.alerts.rules import load_rules

        load_rules(settings.alert_rules, settings.drift_keep)  # a bad file stops it here
    else:
        from mlpulse.pipeline.plotter import serve
    run_role(name, serve, settings)


@cli.command()
@click.pass_context
def model(ctx: click.Context) -> None:
    """Predict features in micro-batches and publish y_pred."""
    _role("model", ctx)


@cli.command()
@click.pass_context
def metric(ctx: click.Context) -> None:
    """Join y_true with y_pred, log errors to the CSV, keep live aggregates."""
    _role("metric", ctx)


@cli.command()
@click.pass_context
def alerts(ctx: click.Context) -> None:
    """Evaluate the alert rules (MLPULSE_ALERT_RULES) and send what fires and resolves."""
    _role("alerts", ctx)


@cli.command()
@click.pass_context
def gateway(ctx: click.Context) -> None:
    """Serve the live dashboard, the API and WebSockets on MLPULSE_HTTP_PORT."""
    _role("gateway", ctx)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.option("-c", "--concurrency", type=click.IntRange(min=1),
              help="Worker processes (default: one per core).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def worker(ctx: click.Context, concurrency: int | None, celery_args: tuple[str, ...]) -> None:
    """Run a Celery worker: batch scoring, retraining, reports, label collection.

    Extra arguments go to `celery worker` as they are."""
    import os
    import socket

    from mlpulse.runtime import configure_logging

    settings = _settings(ctx)
    configure_logging(settings, "worker")
    if settings.metrics_port:
        _serve_pool_metrics(settings.metrics_port, settings.http_host)
    from mlpulse.tasks import app

    # Workers share nothing a startup sync would bring (no revokes), so skip mingle/gossip.
    argv = ["worker", f"--loglevel={settings.log_level}", "--without-mingle",
            "--without-gossip", f"--hostname=mlpulse-{os.getpid()}@{socket.gethostname()}"]
    if concurrency:
        argv.append(f"--concurrency={concurrency}")
    from celery.signals import after_setup_logger

    from mlpulse.health import beat_in_thread
    from mlpulse.redact import RedactingFormatter

    def redact_celery_lines(logger: logging.Logger, **_: Any) -> None:
        # Celery replaces the root handler with its own: its lines pass the same redaction.
        for handler in logger.handlers:
            if not isinstance(handler.formatter, RedactingFormatter):
                handler.setFormatter(RedactingFormatter(handler.formatter or logging.Formatter()))

    after_setup_logger.connect(redact_celery_lines, weak=False)
    heartbeat = beat_in_thread(settings, "worker")
    try:
        app.worker_main([*argv, *celery_args])
    finally:
        heartbeat.set()
        log.info("worker stopped")


def _serve_pool_metrics(port: int, host: str) -> None:
    """Tasks run in pool processes: collect their metrics through prometheus_client's
    multiprocess mode, which must be switched on before the library is first imported."""
    import os
    import tempfile

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="mlpulse-metrics-")
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:  # the worker's tasks matter more than its metrics
        log.warning("metrics not served: port %d: %s", port, exc.strerror)


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def beat(ctx: click.Context, celery_args: tuple[str, ...]) -> None:
    """Run Celery Beat: label collection every MLPULSE_LABELS_INTERVAL seconds."""
    from mlpulse.runtime import configure_logging

    settings = _settings(ctx)
    configure_logging(settings, "beat")
    from mlpulse.tasks import app

    app.conf.update(worker_hijack_root_logger=False, worker_redirect_stdouts=False)
    from celery.signals import beat_init

    def ready(**_: Any) -> None:
        log.info("ready: %d periodic task(s)%s", len(app.conf.beat_schedule),
                 "" if settings.labels_url else " (MLPULSE_LABELS_URL is not set)")

    beat_init.connect(ready, weak=False)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    from mlpulse.health import beat_in_thread
    from mlpulse.telemetry import serve

    serve(settings.metrics_port, settings.http_host)
    heartbeat = beat_in_thread(settings, "beat")
    try:
        app.start(["beat", f"--loglevel={settings.log_level}",
                   f"--schedule={settings.data_dir / 'celerybeat-schedule'}", "--pidfile=",
                   *celery_args])
    finally:
        heartbeat.set()
        log.info("beat stopped")


@cli.command()
@click.option("--role", help="Only check that ROLE is alive on this host: the container "
                            "healthcheck. 'auto' takes the role PID 1 runs.")
@click.pass_context
def doctor(ctx: click.Context, role: str | None) -> None:
    """Check the environment (services, port, directories, model) and say what to fix."""
    from mlpulse.health import role_is_alive, role_of_pid1, run_checks

    settings = _settings(ctx)
    if role is not None:
        name = role_of_pid1() if role == "auto" else role
        if name is None:
            raise MlpulseError("--role auto: PID 1 is not an mlpulse role; name the role")
        ok, detail = role_is_alive(settings, name)
        click.echo(f"{name}: {'alive' if ok else 'NOT alive'}: {detail}")
        sys.exit(0 if ok else 1)
    failed = False
    for check in run_checks(settings):
        mark = "ok  " if check.ok else ("FAIL" if check.blocking else "warn")
        click.echo(f"{mark}  {check.name:<10} {check.detail}")
        if not check.ok:
            click.echo(f"      {'':<10} fix: {check.fix}")
            failed = failed or check.blocking
    sys.exit(1 if failed else 0)


@cli.command()
@click.option("--user", required=True, help="Who the token is for.")
@click.option("--admin", is_flag=True, help="Allow admin actions (retrain, deploy).")
@click.option("--ttl", default="7d", show_default=True, help="Lifetime: 90s, 30m, 12h, 7d.")
@click.pass_context
def token(ctx: click.Context, user: str, admin: bool, ttl: str) -> None:
    """Print a signed access token (and nothing else) on stdout."""
    from mlpulse.gateway.auth import issue_token, load_secret, parse_duration

    secret, _ = load_secret(_settings(ctx))
    click.echo(issue_token(secret, user, admin=admin, ttl=parse_duration(ttl)))


@cli.command("login-url")
@click.option("--user", default="admin", show_default=True, help="Who signs in.")
@click.option("--admin/--no-admin", default=True, show_default=True,
              help="Allow admin actions (retrain, deploy).")
@click.option("--ttl", default=None, help="Lifetime: 90s, 30m, 12h, 7d (default: "
              "MLPULSE_LOGIN_TTL).")
@click.pass_context
def login_url(ctx: click.Context, user: str, admin: bool, ttl: str | None) -> None:
    """Print a link that signs you in to the dashboard (like the one of the first start)."""
    from mlpulse.gateway.auth import issue_token, load_secret, parse_duration

    settings = _settings(ctx)
    secret, _ = load_secret(settings)
    lifetime = parse_duration(ttl) if ttl else settings.login_ttl
    click.echo(f"http://localhost:{settings.http_port}/?token="
               f"{issue_token(secret, user, admin=admin, ttl=lifetime)}")


@cli.command()
@click.option("--once", is_flag=True, help="Draw one picture and exit.")
@click.option("--from-csv", "from_csv", type=click.Path(exists=True, dir_okay=False,
              path_type=Path), help="Draw from a metric log CSV instead of Redis.")
@click.pass_context
def plot(ctx: click.Context, once: bool, from_csv: Path | None) -> None:
    """Redraw logs/error_distribution.png every 10 s when there is new data."""
    settings = _settings(ctx)
    if from_csv is not None or once:
        from mlpulse.pipeline import plotter
        from mlpulse.runtime import configure_logging

        configure_logging(settings, "plot")
        if from_csv is not None:
            width, counts, stats = plotter.histogram_from_csv(from_csv)
            plotter.render_histogram(settings.plot_path, width, counts, stats)
        else:
            asyncio.run(_plot_once(settings))
        click.echo(str(settings.plot_path))
        return
    _role("plot", ctx)


async def _plot_once(settings: Settings) -> None:
    from mlpulse.keys import PLOT_DRAWN
    from mlpulse.pipeline.plotter import draw_if_new
    from mlpulse.store import connect_redis

    redis = await connect_redis(settings)
    try:
        await redis.delete(PLOT_DRAWN)
        if not await draw_if_new(settings, redis):
            raise MlpulseError("nothing to draw yet: no prediction has been joined")
    finally:
        await redis.aclose()


@cli.command()
@click.option("--count", type=click.IntRange(min=1), help="Send N events, then exit.")
@click.option("--interval", type=click.FloatRange(min=0, min_open=True),
              help="Seconds between events (the seed's pace is 10).")
@click.option("--rate", type=click.FloatRange(min=0),
              help="Events per second; 0 sends as fast as the broker confirms. Above "
                   "200/s, what has come due is sent every 5 ms, not one event at a time.")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Events per message; 1 sends seed-style single events.")
@click.option("--no-labels", is_flag=True, help="Send features only (labels come later).")
@click.option("--source", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV of feature rows instead of the diabetes set.")
@click.option("--target-column", default="target", show_default=True,
              help="The label column of --source.")
@click.option("--seed", type=int, default=0, help="Shuffle seed for the row order.")
@click.option("--drift", "drifts", multiple=True, metavar="FEATURE=SHIFT[@EVENT]",
              help="Shift a feature by SHIFT standard deviations from event EVENT on, to "
                   "watch drift being caught (e.g. bmi=+2.0@5000). Repeatable.")
@click.pass_context
def produce(ctx: click.Context, count: int | None, interval: float | None, rate: float | None,
            batch: int, no_labels: bool, source: Path | None, target_column: str,
            seed: int, drifts: tuple[str, ...]) -> None:
    """Stream feature vectors to `features` and labels to `y_true` under shared ids."""
    from mlpulse.pipeline.producer import Plan, parse_drift
    from mlpulse.pipeline.producer import produce as run_producer
    from mlpulse.runtime import run_role

    if interval is not None and rate is not None:
        raise click.UsageError("give --interval or --rate, not both")
    pace = (1.0 / interval) if interval is not None else (1.0 if rate is None else rate)
    try:
        drift = [parse_drift(d) for d in drifts]
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--drift") from None
    plan = Plan(count=count, batch=batch, rate=pace or None, labels=not no_labels,
                source=source, target=target_column, seed=seed, drift=drift)

    async def body(settings: Settings, stop: asyncio.Event) -> None:
        await run_producer(settings, plan, stop)

    run_role("producer", body, _settings(ctx))


@cli.group()
def dead() -> None:
    """Inspect and replay messages that could not be processed."""


@dead.command("list")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.pass_context
def dead_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Show dead letters (reason, source queue, preview); the queue is left as it was."""
    from mlpulse.deadletters import list_dead

    letters = asyncio.run(list_dead(_settings(ctx.find_root()), limit))
    for d in letters:
        if as_json:
            click.echo(json.dumps(d.as_dict()))
        else:
            click.echo(f"{d.id}  {d.queue:<8} {d.code:<12} {d.reason}\n    {d.preview}")
    if not as_json:
        click.echo(f"{len(letters)} dead letter(s) shown", err=True)


@dead.command("replay")
@click.argument("ids", nargs=-1)
@click.option("--all", "replay_all", is_flag=True, help="Replay every dead letter.")
@click.option("--to", type=click.Choice(["features", "y_true", "y_pred"]),
              help="Send to this queue instead of the one it came from.")
@click.pass_context
def dead_replay(ctx: click.Context, ids: tuple[str, ...], replay_all: bool, to: str | None) -> None:
    """Send chosen dead letters (by id) back to their queue, after a fix."""
    from mlpulse.deadletters import replay

    if not ids and not replay_all:
        raise click.UsageError("name dead-letter ids (see `mlpulse dead list`) or give --all")
    done = asyncio.run(replay(_settings(ctx.find_root()), None if replay_all else ids, to))
    for d in done:
        click.echo(f"replayed {d.id} to {to or d.queue}")
    click.echo(f"{len(done)} replayed", err=True)


@dead.command("purge")
@click.confirmation_option(prompt="Drop every dead letter?")
@click.pass_context
def dead_purge(ctx: click.Context) -> None:
    """Drop every dead letter."""
    from mlpulse.deadletters import purge

    click.echo(f"{asyncio.run(purge(_settings(ctx.find_root())))} dropped")


PIPELINE_ROLES = ("model", "metric", "plot", "gateway", "worker", "beat", "alerts")
# Several gateways would share one port (scale those behind a load balancer instead), and
# several Beats would run every schedule twice. A second alerts process is a standby.
SCALABLE_ROLES = ("model", "metric", "plot", "worker", "alerts")


def _parse_scale(text: str) -> dict[str, int]:
    scale: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        role, _, n = part.partition("=")
        if role not in SCALABLE_ROLES or not n.isdigit() or int(n) < 1:
            raise click.BadParameter(f"{part!r}: expected ROLE=N with ROLE in "
                                     f"{', '.join(SCALABLE_ROLES)}", param_hint="--scale")
        scale[role] = int(n)
    return scale


@cli.command()
@click.option("--scale", default="", help="Several of a role, e.g. model=2,metric=2.")
@click.option("--no-producer", is_flag=True, help="Do not start the demo producer.")
@click.option("--rate", type=float, default=1.0, show_default=True,
              help="The demo producer's events per second.")
@click.pass_context
def up(ctx: click.Context, scale: str, no_producer: bool, rate: float) -> None:
    """Run every role as a supervised child process; Ctrl-C stops them all cleanly."""
    from mlpulse.runtime import configure_logging
    from mlpulse.supervisor import Supervisor, plan_children

    settings = _settings(ctx)
    configure_logging(settings, "up")
    asyncio.run(_check_services(settings))
    roles: list[tuple[str, list[str]]] = [(r, []) for r in PIPELINE_ROLES]
    if not no_producer:
        roles.append(("produce", ["--rate", str(rate)]))
    children = plan_children(roles, _parse_scale(scale), finite={"produce"},
                             metrics_port=settings.metrics_port)
    for child in children:
        if "MLPULSE_METRICS_PORT" in child.env:
            log.info("%s serves metrics on :%s", child.name, child.env["MLPULSE_METRICS_PORT"])
    sys.exit(asyncio.run(Supervisor(children, settings.stop_timeout).run()))


async def _check_services(settings: Settings) -> None:
    from mlpulse.broker import connect
    from mlpulse.store import connect_redis

    connection = await connect(settings, "up")
    await connection.close()
    redis = await connect_redis(settings)
    await redis.aclose()


@cli.command(context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def bench(args: tuple[str, ...]) -> None:
    """Run the benchmarks in bench/ (from a source checkout)."""
    script = Path("bench/pipeline.py")
    if not script.exists():
        raise MlpulseError("bench/ is not here: run `mlpulse bench` from a source checkout")
    sys.exit(subprocess.call([sys.executable, str(script), *args]))


@cli.group()
def history() -> None:
    """The Parquet history of joined rows (MLPULSE_HISTORY_DIR)."""


@history.command("export")
@click.option("--since", required=True, help="Start: Unix seconds or ISO 8601 (UTC if no zone).")
@click.option("--until", help="End, not included: Unix seconds or ISO 8601 (default: now).")
@click.option("--model-version", help="Only this model version.")
@click.pass_context
def history_export(ctx: click.Context, since: str, until: str | None,
                   model_version: str | None) -> None:
    """Write the rows joined in a range to stdout as CSV, with the metric log's header.

    \b
    mlpulse history export --since 2026-11-24T00:00Z --until 2026-11-25T00:00Z > rows.csv
    """
    import time

    from mlpulse.history.export import export, parse_time

    try:
        start = parse_time(since)
        end = time.time() if until is None else parse_time(until)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if end <= start:
        raise click.BadParameter("--until must be after --since")
    root = _settings(ctx).history_path
    rows, skipped = export(root, start, end, model_version, sys.stdout.buffer)
    log.info("exported %d rows from %s", rows, root)
    if skipped:
        raise MlpulseError(f"{skipped} history file(s) could not be read and were skipped; "
                           "the export is incomplete (see the warnings above)")


def main(argv: list[str] | None = None) -> Any:
    """Entry point: errors meant for people are one line, not a traceback."""
    try:
        return cli.main(args=argv, prog_name="mlpulse", standalone_mode=True)
    except ConfigError as exc:
        click.echo(f"mlpulse: bad setting: {exc}", err=True)
        sys.exit(2)
    except MlpulseError as exc:
        click.echo(f"mlpulse: {exc}", err=True)
        sys.exit(1)
