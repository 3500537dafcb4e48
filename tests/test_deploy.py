"""The container setup agrees with the code, and every compose command runs here.

There is no Docker engine on the test machines, so the compose file is checked by
Debian's `docker-compose config` and against the CLI and settings, and each service's
command and healthcheck run outside a container against the local RabbitMQ and Redis.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mlpulse.cli import cli
from mlpulse.config import Settings
from mlpulse.task_queue import make_celery
from tests.conftest import Env, Role, free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
# Variables only compose reads, for its own ${...} values.
COMPOSE_ONLY = {"MLPULSE_DEMO_RATE", "RABBITMQ_USER", "RABBITMQ_PASSWORD",
                "MLPULSE_HOST_HTTP_PORT", "RABBITMQ_HOST_PORT", "RABBITMQ_HOST_MANAGEMENT_PORT"}
READY = {"worker": r"ready\.", "beat": r"ready:", "produce": r"producing endless events"}
_DEFAULT = re.compile(r"\$\{[A-Z_]+:-([^}]*)\}")


def _compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def _ours() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _compose()["services"].items()
            if svc.get("image") == "mlpulse:latest"}


def _resolve(word: str) -> str:
    """A compose value with each ${VAR:-default} replaced by its default."""
    return _DEFAULT.sub(lambda m: m.group(1), word)


def _fields() -> set[str]:
    return {f"MLPULSE_{name.upper()}" for name in Settings.model_fields}


def test_compose_file_passes_docker_compose_config() -> None:
    tool = shutil.which("docker-compose")
    if tool is None:
        if os.environ.get("MLPULSE_REQUIRE_COMPOSE"):
            pytest.fail("docker-compose is not installed (apt-get install docker-compose)")
        pytest.skip("needs Debian's docker-compose package")
    done = subprocess.run([tool, "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                          text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr


def test_compose_agrees_with_the_cli_settings_and_image() -> None:
    doc = _compose()
    services = _ours()
    assert set(services) == {"model", "metric", "plot", "gateway", "worker", "beat",
                             "alerts", "producer"}
    assert doc["services"]["rabbitmq"]["image"] == "rabbitmq:3-management"
    assert "15672:15672" in [_resolve(p) for p in doc["services"]["rabbitmq"]["ports"]]
    assert "--appendonly" in doc["services"]["redis"]["command"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    image_dirs = dict(re.findall(r"(MLPULSE_\w+_DIR)=(\S+)", dockerfile))
    assert set(image_dirs) == {"MLPULSE_LOG_DIR", "MLPULSE_DATA_DIR", "MLPULSE_MODELS_DIR"}
    for name, svc in services.items():
        command = [_resolve(w) for w in svc["command"]]
        sub = cli.commands.get(command[0])
        assert sub is not None, f"{name}: no `mlpulse {command[0]}`"
        sub.make_context(command[0], command[1:])  # the arguments parse
        health = svc["healthcheck"]["test"]
        assert health[:4] == ["CMD", "mlpulse", "doctor", "--role"], name
        assert health[4] == command[0], f"{name} checks the wrong role"
        assert svc["restart"] == "on-failure"
        for key in svc["environment"]:
            assert key in _fields(), f"{name}: {key} is not a setting"
        targets = {v.split(":", 1)[1] for v in svc["volumes"]}
        assert targets == set(image_dirs.values()), name
        assert all(dep["condition"] == "service_healthy" for dep in svc["depends_on"].values())
    gateway = services["gateway"]
    port = gateway["environment"]["MLPULSE_HTTP_PORT"]
    assert [_resolve(p) for p in gateway["ports"]] == [f"{port}:{port}"]
    assert f"EXPOSE {port}" in dockerfile
    assert "USER mlpulse" in dockerfile
    assert "HEALTHCHECK" in dockerfile


def test_env_example_lists_every_setting() -> None:
    text = (ROOT / ".env.example").read_text()
    named = set(re.findall(r"^# ?([A-Z][A-Z_]+)=", text, re.MULTILINE))
    assert _fields() <= named, f"missing: {sorted(_fields() - named)}"
    assert named - _fields() <= COMPOSE_ONLY, f"unknown: {sorted(named - _fields())}"


def test_readme_settings_table_lists_every_setting() -> None:
    text = (ROOT / "README.md").read_text()
    table = text[text.index("\n## Settings"):]
    table = table[:table.index("\n## ", 1)]
    first_cells = re.findall(r"^\| (`MLPULSE_[^|]+)\|", table, re.MULTILINE)
    named = {name for cell in first_cells for name in re.findall(r"`(MLPULSE_[A-Z_]+)`", cell)}
    assert _fields() <= named, f"missing from the README: {sorted(_fields() - named)}"


def test_every_compose_command_runs_here_and_its_healthcheck_follows_it(
        env: Env, spawn: Callable[..., Role]) -> None:
    env.vars["MLPULSE_SECRET"] = "deploy-test-secret-0123456789-abcdefghijklmnop"
    running: dict[str, tuple[Role, dict[str, str]]] = {}
    for name in ("model", "metric", "plot", "gateway", "worker", "beat", "producer"):
        svc = _ours()[name]
        command = [_resolve(w) for w in svc["command"]]
        extra = {"MLPULSE_METRICS_PORT": str(free_port()), "MLPULSE_HTTP_PORT": str(free_port())}
        role = spawn(*command, extra=extra, ready=READY.get(command[0], r"ready"))
        running[name] = role, extra
    for name, (_, extra) in running.items():
        health = _ours()[name]["healthcheck"]["test"][1:]
        assert _run(env, health[1:], extra) == 0, f"{name}'s healthcheck failed"
    # Every role other than the gateway serves its metrics on MLPULSE_METRICS_PORT.
    for name in ("model", "metric"):
        port = running[name][1]["MLPULSE_METRICS_PORT"]
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert "mlpulse_batch_seconds" in text
        assert "mlpulse_messages_in_total" in text
    # The worker's tasks run in pool processes; their counts still reach its endpoint.
    celery = make_celery(Settings(amqp_url=env.amqp_url, redis_url=env.redis_url))
    try:
        assert "count" in celery.send_task("mlpulse.report").get(timeout=60)["summary"]
    finally:
        celery.close()
    port = running["worker"][1]["MLPULSE_METRICS_PORT"]
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'mlpulse_tasks_total{state="SUCCESS",task="mlpulse.report"} 1.0' in text
    for name, (role, _) in running.items():
        assert role.stop() == 0, f"{name} did not stop cleanly"
    # With the role gone, its healthcheck fails.
    assert _run(env, ["doctor", "--role", "model"], running["model"][1]) == 1


def _run(env: Env, args: list[str], extra: dict[str, str]) -> int:
    full = {**os.environ, **env.vars, **extra}
    done = subprocess.run([sys.executable, "-m", "mlpulse", *args], env=full, cwd=env.root,
                          capture_output=True, text=True, timeout=60, check=False)
    return done.returncode


def test_doctor_says_what_to_fix(env: Env) -> None:
    full = {**os.environ, **env.vars}
    ok = subprocess.run([sys.executable, "-m", "mlpulse", "doctor"], env=full, cwd=env.root,
                        capture_output=True, text=True, timeout=60, check=False)
    assert ok.returncode == 0, ok.stdout
    assert "ok    RabbitMQ" in ok.stdout
    assert "ok    Redis" in ok.stdout
    assert "warn  model" in ok.stdout  # none trained yet: a warning, not a failure
    bad = {**full, "MLPULSE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    broken = subprocess.run([sys.executable, "-m", "mlpulse", "doctor"], env=bad,
                            cwd=env.root, capture_output=True, text=True, timeout=60,
                            check=False)
    assert broken.returncode == 1
    assert "FAIL  Redis" in broken.stdout
    assert "redis-server" in broken.stdout


@pytest.mark.parametrize(("url", "said", "fix"), [
    ("amqp://guest:wrong@127.0.0.1:5672/", "refused the user name or password",
     "credentials"),
    ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", "refused to open the virtual host",
     "add_vhost"),
    ("amqp://guest:guest@127.0.0.1:{port}/", "is not reachable", "rabbitmq-server"),
])
def test_doctor_tells_bad_credentials_from_a_missing_vhost_or_broker_and_says_the_fix_once(
        env: Env, url: str, said: str, fix: str) -> None:
    full = {**os.environ, **env.vars, "MLPULSE_AMQP_URL": url.format(port=free_port())}
    done = subprocess.run([sys.executable, "-m", "mlpulse", "doctor"], env=full,
                          cwd=env.root, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("FAIL  RabbitMQ"))
    assert said in lines[at]
    assert fix in lines[at + 1]
    assert done.stdout.count(fix) == 1, done.stdout


def test_doctor_sees_its_own_gateway_on_the_port(
        env: Env, spawn: Callable[..., Role]) -> None:
    port = free_port()
    spawn("gateway", extra={"MLPULSE_HTTP_PORT": str(port)}, ready=r"ready: http")
    full = {**os.environ, **env.vars, "MLPULSE_HTTP_PORT": str(port)}
    done = subprocess.run([sys.executable, "-m", "mlpulse", "doctor"], env=full,
                          cwd=env.root, capture_output=True, text=True, timeout=60,
                          check=False)
    assert f"ok    HTTP port  {port} serves a running mlpulse gateway" in done.stdout


def test_the_package_ships_every_file_the_roles_read() -> None:
    """An installed (not editable) mlpulse, as in the image, needs its data files."""
    import fnmatch
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["mlpulse"]
    package = ROOT / "src" / "mlpulse"
    data = [p.relative_to(package).as_posix() for p in package.rglob("*")
            if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts]
    assert any(d.startswith("gateway/static/") for d in data)
    missing = [d for d in data if not any(fnmatch.fnmatch(d, g) for g in globs)]
    assert missing == [], f"not in [tool.setuptools.package-data]: {missing}"
