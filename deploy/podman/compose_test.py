#!/usr/bin/env python3
"""`make compose-test`: the real Dockerfile and docker-compose.yml, run under podman.

Builds the image, brings the stack up under a project name of its own with free host
ports, and checks what a person relies on: every service healthy, events flowing into
metric_log.csv, the dashboard and API behind a token, a second model consuming, and a
stop of everything at once losing nothing. Prints one PASS or FAIL line per check, tears
everything down (containers, volumes, network) whatever happens, and exits non-zero if any
check failed. Standard library only; run by compose-test.sh after setup.sh and
base-images.sh. `compose_test.py --cleanup PROJECT` removes what a run left behind.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
PODMAN_COMPOSE = os.environ.get("PODMAN_COMPOSE", "podman-compose")
IMAGE = "mlpulse:latest"
BROKERS = ["rabbitmq", "redis"]
ROLES = ["model", "metric", "plot", "alerts", "gateway", "worker", "beat"]
SERVICES = BROKERS + ROLES + ["producer"]
LABEL = "io.podman.compose.project"
# Seconds each service has to stop (compose's stop_grace_period; 10 s when not set).
GRACE = {**{s: 10.0 for s in BROKERS}, **{s: 15.0 for s in ROLES + ["producer"]}}
# Events per second from the demo producer: enough for batches to be in flight at the stop.
RATE = os.environ.get("MLPULSE_COMPOSE_TEST_RATE", "10")
LOG_DIR = Path(os.environ.get("MLPULSE_COMPOSE_TEST_LOGS", "/tmp/mlpulse-compose-test"))

START = time.monotonic()
failures: list[str] = []


class Failed(Exception):
    """A check failed; the message says what was seen."""


def say(line: str) -> None:
    print(line, flush=True)


def info(line: str) -> None:
    say(f"  [{time.monotonic() - START:5.0f}s] {line}")


def result(ok: bool, name: str, detail: str) -> bool:
    say(f"{'PASS' if ok else 'FAIL'}  {name:<11} {detail}")
    if not ok:
        failures.append(name)
    return ok


def run(cmd: list[str], timeout: float = 120, check: bool = True,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                              cwd=ROOT, check=False)
    except subprocess.TimeoutExpired as exc:
        raise Failed(f"{' '.join(cmd[:4])}... took over {timeout:.0f}s") from exc
    if check and done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise Failed(f"`{' '.join(cmd)}` exited {done.returncode}:\n{tail}")
    return done


def podman(*args: str, timeout: float = 120, check: bool = True) -> str:
    return run(["podman", *args], timeout=timeout, check=check).stdout


class Stack:
    """One compose project: its name, host ports and containers."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.ports = {"MLPULSE_HOST_HTTP_PORT": free_port(),
                      "RABBITMQ_HOST_PORT": free_port(),
                      "RABBITMQ_HOST_MANAGEMENT_PORT": free_port()}
        self.env = {**os.environ, **{k: str(v) for k, v in self.ports.items()},
                    "MLPULSE_DEMO_RATE": RATE}

    def compose(self, *args: str, timeout: float = 300) -> str:
        cmd = [PODMAN_COMPOSE, "-p", self.project, "-f", str(COMPOSE_FILE), *args]
        return run(cmd, timeout=timeout, env=self.env).stdout

    def name(self, service: str, n: int = 1) -> str:
        return f"{self.project}_{service}_{n}"

    def containers(self) -> list[dict[str, Any]]:
        out = podman("ps", "-a", "--filter", f"label={LABEL}={self.project}", "--format", "json")
        return json.loads(out or "[]")

    def names(self, running_only: bool = False) -> list[str]:
        return sorted(c["Names"][0] for c in self.containers()
                      if not running_only or c.get("State") == "running")

    def service_of(self, container: str) -> str:
        return container[len(self.project) + 1:].rsplit("_", 1)[0]

    def volume_path(self, volume: str) -> Path:
        return Path(podman("volume", "inspect", f"{self.project}_{volume}",
                           "--format", "{{.Mountpoint}}").strip())

    def metric_log(self) -> Path:
        return self.volume_path("logs") / "metric_log.csv"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class HealthPump(threading.Thread):
    """Runs every container's healthcheck in turn, as podman's systemd timers would.

    Podman 4.3 schedules healthchecks with systemd timers, and this machine has no systemd,
    so without this loop no container would ever leave the `starting` state."""

    def __init__(self, stack: Stack, period: float = 10.0) -> None:
        super().__init__(daemon=True, name="health-pump")
        self.stack = stack
        self.period = period
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            began = time.monotonic()
            try:
                for name in self.stack.names(running_only=True):
                    if self.halt.is_set():
                        return
                    run(["podman", "healthcheck", "run", name], timeout=30, check=False)
            except Exception:  # a container went away mid-round: try again next round
                pass
            self.halt.wait(max(1.0, self.period - (time.monotonic() - began)))

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=60)


def health(name: str) -> str:
    out = podman("inspect", name, "--format",
                 "{{.RestartCount}} {{.State.Status}} {{.State.Health.Status}}",
                 check=False).split()
    if len(out) < 2:
        return "missing"
    restarts, state, status = int(out[0]), out[1], (out[2] if len(out) > 2 else "")
    status = status if state == "running" else state
    return f"{status}, restarted {restarts}x" if restarts else status


# A container that keeps failing will not become healthy; waiting on is pointless.
CRASH_LOOP = re.compile(r"restarted ([5-9]|\d\d+)x")


def wait_healthy(names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {n: health(n) for n in names}
        if all(s.split(",")[0] == "healthy" for s in states.values()):
            return
        looping = any(CRASH_LOOP.search(s) for s in states.values())
        if time.monotonic() > deadline or looping:
            bad = {n: s for n, s in states.items() if s.split(",")[0] != "healthy"}
            for n in bad:
                tail = run(["podman", "logs", "--tail", "15", n], check=False)
                info(f"{n} ({bad[n]}), its last log lines:\n" + indent(tail.stdout + tail.stderr))
            why = "keep failing" if looping else f"not healthy after {timeout:.0f}s"
            raise Failed(f"{why}: {bad}")
        time.sleep(2)


def indent(text: str) -> str:
    return "\n".join("      " + line for line in text.strip().splitlines()[-15:])


def read_log(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def bad_rows(rows: list[dict[str, str]]) -> list[str]:
    """Rows whose absolute_error is not |y_true - y_pred|."""
    bad = []
    for row in rows:
        try:
            want = abs(float(row["y_true"]) - float(row["y_pred"]))
            ok = math.isclose(float(row["absolute_error"]), want, rel_tol=1e-9, abs_tol=1e-9)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            bad.append(row.get("id") or "?")
    return bad


def duplicates(rows: list[dict[str, str]]) -> list[str]:
    seen: set[str] = set()
    dup = []
    for row in rows:
        if row["id"] in seen:
            dup.append(row["id"])
        seen.add(row["id"])
    return dup


def http(url: str, token: str | None = None) -> int:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def role_metric(container: str, metric: str) -> float:
    """A counter from a role's Prometheus endpoint (MLPULSE_METRICS_PORT, 9100)."""
    code = ("import urllib.request;"
            "print(urllib.request.urlopen('http://127.0.0.1:9100/metrics', timeout=10)"
            ".read().decode())")
    text = podman("exec", container, "python", "-c", code, timeout=30)
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric):
            total += float(line.rsplit(" ", 1)[1])
    return total


# The checks, in the order they run.

def check_build() -> None:
    began = time.monotonic()
    run(["podman", "build", "--format", "docker", "-t", IMAGE, str(ROOT)], timeout=900)
    info(f"built {IMAGE} from the Dockerfile in {time.monotonic() - began:.0f}s")


def bring_up(stack: Stack) -> None:
    # podman-compose ignores `condition: service_healthy` with podman 4.3, so the order the
    # compose file asks for is kept here: backends, then the roles, then the producer.
    info(f"up: rabbitmq, redis (project {stack.project}, host ports {stack.ports})")
    stack.compose("up", "-d", "--no-build", *BROKERS)
    wait_healthy([stack.name(s) for s in BROKERS], timeout=180)
    info("up: " + ", ".join(ROLES))
    stack.compose("up", "-d", "--no-build", *ROLES)
    wait_healthy([stack.name("model"), stack.name("metric")], timeout=300)
    info(f"up: producer at {RATE} events/s")
    stack.compose("up", "-d", "--no-build", "producer")


def check_healthy(stack: Stack) -> None:
    names = [stack.name(s) for s in SERVICES]
    try:
        wait_healthy(names, timeout=240)
        unhealthy = [n for n in names
                     if run(["podman", "healthcheck", "run", n], check=False).returncode != 0]
    except Failed as exc:
        result(False, "healthy", str(exc))
        raise
    result(not unhealthy, "healthy",
           f"{len(names) - len(unhealthy)}/{len(names)} containers pass their healthcheck"
           + (f"; failing: {unhealthy}" if unhealthy else f" ({', '.join(SERVICES)})"))
    if unhealthy:
        raise Failed("not every service is healthy")


def check_events(stack: Stack) -> None:
    path = stack.metric_log()
    deadline = time.monotonic() + 120
    rows = read_log(path)
    while len(rows) < 20 and time.monotonic() < deadline:
        time.sleep(2)
        rows = read_log(path)
    first = len(rows)
    time.sleep(10)
    rows = read_log(path)
    bad, dup = bad_rows(rows), duplicates(rows)
    ok = first >= 20 and len(rows) > first and not bad and not dup
    result(ok, "events", f"metric_log.csv grew from {first} to {len(rows)} rows in 10s; "
           f"absolute_error == |y_true - y_pred| in {len(rows) - len(bad)}/{len(rows)}; "
           f"{len(dup)} repeated ids")


def check_dashboard(stack: Stack) -> None:
    token = podman("exec", stack.name("gateway"), "mlpulse", "token",
                   "--user", "compose-test").strip()
    base = f"http://127.0.0.1:{stack.ports['MLPULSE_HOST_HTTP_PORT']}"
    page = http(f"{base}/", token)
    api = http(f"{base}/api/summary", token)
    anonymous = http(f"{base}/api/summary")
    ok = page == 200 and api == 200 and anonymous == 401
    result(ok, "dashboard", f"{base}/ -> {page}, /api/summary with the token -> {api}, "
           f"without -> {anonymous} (want 200, 200, 401)")


def check_scale(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-build", "--scale", "model=2", "model")
    models = [stack.name("model", 1), stack.name("model", 2)]
    wait_healthy(models, timeout=240)
    before = {m: role_metric(m, 'mlpulse_messages_in_total{queue="features"}') for m in models}
    time.sleep(10)
    after = {m: role_metric(m, 'mlpulse_messages_in_total{queue="features"}') for m in models}
    queues = podman("exec", stack.name("rabbitmq"), "rabbitmqctl", "list_queues", "-q",
                    "name", "consumers", timeout=60)
    consumers = dict(line.split()[:2] for line in queues.splitlines() if len(line.split()) >= 2)
    gained = {m: after[m] - before[m] for m in models}
    ok = consumers.get("features") == "2" and all(g > 0 for g in gained.values())
    result(ok, "scale", f"--scale model=2: both healthy, {consumers.get('features')} consumers "
           "on the features queue, features consumed in 10s: "
           + ", ".join(f"{stack.service_of(m)}#{m[-1]} {g:.0f}" for m, g in gained.items()))


def check_stop_and_restart(stack: Stack) -> None:
    names = stack.names(running_only=True)
    began = time.time()
    # One worker per container, so every one gets SIGTERM at the same moment (podman's
    # default is three per CPU, which on two cores staggers the signals).
    podman("--max-workers", str(len(names)), "stop", "-t", "15", *names, timeout=120)
    took = time.time() - began
    slow, killed, codes = [], [], {}
    for n in names:
        out = podman("inspect", n, "--format", "{{.State.ExitCode}} {{.State.FinishedAt.Unix}}"
                     " {{.State.FinishedAt.Nanosecond}}").split()
        code, seconds = int(out[0]), int(out[1]) + int(out[2]) / 1e9 - began
        service = stack.service_of(n)
        codes[n] = code
        if code == 137:
            killed.append(n)
        if seconds > GRACE[service]:
            slow.append(f"{n} {seconds:.1f}s")
        info(f"stopped {n}: exit {code} after {seconds:.1f}s")
    odd = {n: c for n, c in codes.items() if c not in (0, 137)}
    result(not killed and not slow, "stop",
           f"{len(names)} containers stopped together in {took:.1f}s, each within its grace "
           f"period: {'none' if not killed else killed} killed (137)"
           + (f", over the grace period: {slow}" if slow else "")
           + (f"; non-zero exits: {odd}" if odd else ""))

    logs = run(["podman", "logs", stack.name("producer")], check=False)
    text = logs.stdout + logs.stderr
    runs = re.findall(r"as run (\S+)", text)
    sent = re.findall(r"sent (\d+)(?:/\d+)? events[^;\n]*(?:; (\d+) more after them)?", text)
    if not runs or not sent:
        result(False, "no loss", "the producer logged no run id or no total on stop")
        return
    run_id, total = runs[-1], int(sent[-1][0])
    # Events handed to the broker but not confirmed when it stopped may or may not be there.
    maybe = {f"{run_id}-{i}" for i in range(total, total + int(sent[-1][1] or 0))}
    info(f"the producer sent {total} events as run {run_id}"
         + (f" ({len(maybe)} more not confirmed)" if maybe else ""))

    info("start: rabbitmq, redis, then every role but the producer")
    podman("start", *[stack.name(s) for s in BROKERS])
    wait_healthy([stack.name(s) for s in BROKERS], timeout=180)
    roles = [n for n in names if stack.service_of(n) in ROLES]
    podman("start", *roles)
    wait_healthy(roles, timeout=300)

    want = {f"{run_id}-{i}" for i in range(total)}
    deadline = time.monotonic() + 180
    while True:
        rows = [r for r in read_log(stack.metric_log()) if r["id"].startswith(run_id + "-")]
        have = {r["id"] for r in rows}
        if want <= have or time.monotonic() > deadline:
            break
        time.sleep(3)
    missing = want - have
    extra = have - want - maybe
    dup = duplicates(rows)
    bad = bad_rows(rows)
    ok = total > 0 and not missing and not extra and not dup and not bad
    result(ok, "no loss", f"{len(want & have)}/{total} events the producer sent are in "
           f"metric_log.csv; {len(dup)} twice, {len(extra)} unknown, {len(bad)} wrong errors"
           + (f"; missing e.g. {sorted(missing)[:5]}" if missing else ""))


def save_logs(stack: Stack) -> None:
    """Every container's log to LOG_DIR/<project>/, and a line on what stands out."""
    folder = LOG_DIR / stack.project
    folder.mkdir(parents=True, exist_ok=True)
    for n in stack.names():
        out = run(["podman", "logs", "-t", n], check=False, timeout=60)
        text = out.stdout + out.stderr
        (folder / f"{n}.log").write_text(text)
        lines = text.splitlines()
        noisy = [ln for ln in lines if re.search(r"\b(ERROR|CRITICAL|Traceback)\b", ln)]
        warned = [ln for ln in lines if re.search(r"\bWARNING\b", ln)]
        if noisy or warned:
            info(f"log {n}: {len(noisy)} error lines, {len(warned)} warnings"
                 + (f"; first error: {noisy[0][:200]}" if noisy else ""))
    info(f"container logs saved in {folder}")


def cleanup(project: str) -> bool:
    """Remove the project's containers, volumes and network; True when nothing is left."""
    stack = Stack(project)
    run([PODMAN_COMPOSE, "-p", project, "-f", str(COMPOSE_FILE), "down", "-v", "-t", "5",
         "--remove-orphans"], check=False, timeout=300, env=stack.env)
    # down follows the compose file: a scaled-out container or a half-made project may be
    # left, so everything carrying the project's label goes too.
    left = stack.names()
    if left:
        podman("rm", "-f", "--ignore", "-t", "5", *left, check=False, timeout=120)
    for kind in ("volume", "network"):
        for found in podman(kind, "ls", "-q", "--filter", f"label={LABEL}={project}",
                            check=False).split():
            podman(kind, "rm", "-f", found, check=False)
    remaining = (stack.names()
                 + podman("volume", "ls", "-q", "--filter", f"label={LABEL}={project}",
                          check=False).split()
                 + podman("network", "ls", "-q", "--filter", f"label={LABEL}={project}",
                          check=False).split())
    # The build stage of the image is left dangling by every build; it is a gigabyte.
    podman("image", "prune", "-f", check=False)
    return not remaining


def terminate(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    if sys.argv[1:2] == ["--cleanup"]:
        return 0 if cleanup(sys.argv[2]) else 1
    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    project = os.environ.get("MLPULSE_COMPOSE_PROJECT") or f"mlpulse-ct-{os.getpid()}"
    stack = Stack(project)
    pump = HealthPump(stack)
    say(f"compose-test: {COMPOSE_FILE.name} under podman, project {project}")
    try:
        check_build()
        pump.start()
        bring_up(stack)
        check_healthy(stack)
        for check in (check_events, check_dashboard, check_scale, check_stop_and_restart):
            try:
                check(stack)
            except Failed as exc:
                result(False, check.__name__.removeprefix("check_"), str(exc))
    except Failed as exc:
        if not failures:
            result(False, "setup", str(exc))
    except KeyboardInterrupt as exc:
        result(False, "interrupted", str(exc) or "SIGINT")
    finally:
        if pump.is_alive():
            pump.stop()
        try:
            save_logs(stack)
        except Exception as exc:  # the logs are a help, not a check
            info(f"could not save the logs: {exc}")
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        result(cleanup(project), "cleanup", f"containers, volumes and network of {project} "
               "removed")
    elapsed = time.monotonic() - START
    if failures:
        say(f"compose-test: FAILED ({', '.join(failures)}) in {elapsed:.0f}s")
        return 1
    say(f"compose-test: all checks passed in {elapsed:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
