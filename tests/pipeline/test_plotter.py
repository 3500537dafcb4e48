"""The error-distribution PNG: valid, redrawn on new errors, untouched otherwise, atomic."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from mlpulse.store import quantile_from_bins
from tests.conftest import Env, Role


def send_pairs(env: Env, pairs: list[tuple[str, float, float]]) -> None:
    ch = env.channel()
    for q in ("y_true", "y_pred"):
        ch.queue_declare(q, durable=True)
    ch.basic_publish("", "y_true", json.dumps([{"id": i, "body": t} for i, t, _ in pairs]))
    ch.basic_publish("", "y_pred", json.dumps(
        [{"id": i, "body": p, "model_version": "v1"} for i, _, p in pairs]))
    ch.connection.close()


def png_ok(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_png_follows_new_errors_and_rests_when_none_arrive(
        env: Env, spawn: Callable[..., Role]) -> None:
    spawn("metric")
    plot = spawn("plot", extra={"MLPULSE_PLOT_INTERVAL": "0.2", "MLPULSE_LOG_LEVEL": "DEBUG"})
    send_pairs(env, [(f"a{i}", 100.0, 100.0 + (i % 7)) for i in range(50)])
    first = plot.wait_for(r"drew .* \(50 errors\)")
    w, h = png_ok(env.plot_path)
    assert w >= 600
    assert h >= 300
    before = env.plot_path.stat()
    pixels_before = Image.open(env.plot_path).tobytes()

    # Nothing new: several checks pass and the file is not rewritten.
    quiet = plot.wait_for("nothing new", start=first + 1)
    for _ in range(3):
        quiet = plot.wait_for("nothing new", start=quiet + 1)
    after = env.plot_path.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # Larger errors arrive: the picture changes, and it is a new file swapped in whole.
    send_pairs(env, [(f"b{i}", 0.0, 150.0 + i) for i in range(30)])
    plot.wait_for(r"drew .* \(80 errors\)", start=quiet + 1)
    png_ok(env.plot_path)
    assert env.plot_path.stat().st_ino != before.st_ino
    assert Image.open(env.plot_path).tobytes() != pixels_before
    assert not list(env.plot_path.parent.glob(".*.tmp"))


def test_once_from_csv_draws_the_seed_way(env: Env, tmp_path: Path) -> None:
    csv_path = tmp_path / "log.csv"
    csv_path.write_text("id,y_true,y_pred,absolute_error\n" + "".join(
        f"{i},{i},{i * 1.5},{i * 0.5}\n" for i in range(200)))
    done = subprocess.run([sys.executable, "-m", "mlpulse", "plot", "--once", "--from-csv",
                           str(csv_path)], env={**os.environ, **env.vars}, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()) == env.plot_path
    png_ok(env.plot_path)


def test_quantiles_from_bins() -> None:
    assert quantile_from_bins(10.0, [0, 0, 0], 0.5) is None
    assert quantile_from_bins(10.0, [10, 10, 0], 0.5) == 10.0
    assert quantile_from_bins(10.0, [0, 4, 0], 0.25) == 12.5
