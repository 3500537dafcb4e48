"""Private RabbitMQ and Redis servers that a test may stop, kill -9 and start again, and a
small disk of a test's own that it may fill.

The machine's own RabbitMQ and Redis serve other systems too, so no test restarts them.
A test that needs a broker or a Redis to die gets one of these instead: its own node name,
ports, data directory, logs and Erlang cookie, all under one temporary directory. The data
directory outlives a `kill()`, so durable queues, persistent messages and the AOF survive
into the next `start()`, as they would on a real machine.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
import redis

# Debian's /usr/sbin wrappers switch to the `rabbitmq` user (and its cookie and data) when
# run as root; the scripts behind them run a node as whoever starts it.
_RABBIT_DIRS = (Path("/usr/lib/rabbitmq/bin"),)


def server_port() -> int:
    """A free TCP port below the kernel's ephemeral range, for a server that restarts.

    While a server is down, its clients keep reconnecting; with a port inside the ephemeral
    range, one of those attempts can get that very port as its source and connect to
    itself, and the server cannot bind it again (EADDRINUSE) until that client lets go.
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    while True:
        port = random.randrange(10000, low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


def rabbit_tools() -> tuple[Path, Path] | None:
    """`rabbitmq-server` and `rabbitmqctl` that start a node as the current user."""
    dirs = list(_RABBIT_DIRS)
    found = shutil.which("rabbitmq-server")
    if found:
        dirs.append(Path(found).parent)
    for d in dirs:
        server, ctl = d / "rabbitmq-server", d / "rabbitmqctl"
        if server.exists() and ctl.exists():
            return server, ctl
    return None


def _poll(predicate: Callable[[], bool], timeout: float, what: str,
          alive: Callable[[], bool] = lambda: True, interval: float = 0.1) -> None:
    """Poll a server that gives no signal when it is up; stop early if it died."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if not alive():
            raise RuntimeError(f"{what}: the server exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not after {timeout}s")
        time.sleep(interval)


class RabbitNode:
    """A RabbitMQ node with no plugins, listening on 127.0.0.1 only."""

    def __init__(self, root: Path) -> None:
        tools = rabbit_tools()
        if tools is None:
            raise RuntimeError("rabbitmq-server is not installed")
        self.server, self.ctl_path = tools
        self.root = root
        self.port = server_port()
        self.dist_port = server_port()
        while self.dist_port == self.port:
            self.dist_port = server_port()
        self.name = f"mlpulse-test-{self.port}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None
        home = root / "home"  # the node's and its CLI's Erlang cookie live here
        for d in (home, root / "mnesia", root / "log"):
            d.mkdir(parents=True, exist_ok=True)
        (root / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        (root / "enabled_plugins").write_text("[].\n")  # no management plugin, no extra port
        (root / "rabbitmq-env.conf").write_text("")  # not /etc/rabbitmq's node name
        self.env = {
            **os.environ,
            "HOME": str(home),
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_MNESIA_DIR": str(root / "mnesia" / "node"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_CONFIG_FILE": str(root / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(root / "node.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS":
                "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def url(self, vhost: str = "/") -> str:
        path = "%2F" if vhost == "/" else vhost
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{path}"

    @property
    def running(self) -> bool:
        """The node's OS process is alive (its `rabbit` application may be stopped)."""
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 120.0) -> None:
        """Boot the node (on the data of any earlier run) and wait until it takes clients."""
        assert not self.running, "the node is already running"
        with (self.root / "log" / "console.log").open("ab") as out:
            # A session of its own: kill() takes the node's helper processes with it.
            self.proc = subprocess.Popen([str(self.server)], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            _poll(self.accepts_clients, timeout, f"RabbitMQ node {self.name}",
                  alive=lambda: self.running, interval=0.2)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}; its log ends:\n{self.log_tail()}") from None

    def accepts_clients(self) -> bool:
        """One AMQP connection opens: the node has booted and its listener is up."""
        params = pika.ConnectionParameters(
            "127.0.0.1", self.port, connection_attempts=1, socket_timeout=2,
            blocked_connection_timeout=2, stack_timeout=5)
        try:
            pika.BlockingConnection(params).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def kill(self) -> None:
        """SIGKILL to the node and its helpers: no chance to flush or say goodbye."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(30)

    def ctl(self, *args: str, timeout: float = 120.0) -> str:
        """Run `rabbitmqctl -n NODE ...` and return what it printed."""
        done = subprocess.run([str(self.ctl_path), "-n", self.name, *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed:\n{done.stdout}"
                               f"{done.stderr}")
        return done.stdout

    def stop_app(self) -> None:
        """Stop the broker inside the running node; every client connection is closed."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup")

    def ensure_up(self) -> None:
        """Whatever an earlier test left (a killed node, a stopped app): a node taking clients."""
        if not self.running:
            self.start()
        elif not self.accepts_clients():
            self.start_app()
            _poll(self.accepts_clients, 60, f"RabbitMQ node {self.name} after start_app")

    def queues(self) -> str:
        """Messages ready, unacked and consumers per queue, for failure reports."""
        try:
            return self.ctl("-q", "list_queues", "name", "messages_ready",
                            "messages_unacknowledged", "consumers", timeout=30).strip()
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            return f"(queues unknown: {exc})"

    def log_tail(self, lines: int = 30) -> str:
        text = []
        for path in sorted((self.root / "log").glob("*.log")):
            text.extend(path.read_text(errors="replace").splitlines()[-lines:])
        return "\n".join(text)

    def close(self) -> None:
        if self.running:
            self.kill()


class RedisNode:
    """A redis-server that appends every write to its AOF and fsyncs it before answering."""

    def __init__(self, root: Path, *, persist: bool = True) -> None:
        found = shutil.which("redis-server")
        if found is None:
            raise RuntimeError("redis-server is not installed")
        self.binary = found
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = server_port()
        self.persist = persist
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start on the same port and directory, replaying the AOF of any earlier run."""
        assert not self.running, "redis is already running"
        aof = (["--appendonly", "yes", "--appendfsync", "always"] if self.persist
               else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *aof, "--dir", str(self.root), "--logfile", str(self.root / "redis.log")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _poll(self.answers, timeout, f"redis on port {self.port}", alive=lambda: self.running)

    def answers(self) -> bool:
        """PING answers PONG: the AOF is loaded and commands are served."""
        client = self.client()
        try:
            return bool(client.ping())
        except redis.exceptions.RedisError:
            return False
        finally:
            client.close()

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def ensure_up(self) -> None:
        if not self.running:
            self.start()

    def close(self) -> None:
        if self.running:
            self.kill()


@contextlib.contextmanager
def small_disk(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` ("64k", "16m") at `mount`, unmounted afterwards; skips where none
    can be mounted."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of `disk`; returns the file that holds them."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 4096)
    return filler
