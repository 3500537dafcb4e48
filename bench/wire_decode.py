"""Decoding cost of the wire's checks: this tree's `decode_frame` against another revision's.

Run from the repository root with the project virtualenv::

    python bench/wire_decode.py --ref c0f7dd8     # the code before the poison checks

Both versions decode the same messages in one process, alternating, several rounds; the
table gives the median events per second of each and their ratio. The messages are what
the producer sends: frames of 500 feature vectors, frames of 500 labels, and single
seed-style messages.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson
from sklearn.datasets import load_diabetes

REPO_ROOT = Path(__file__).resolve().parent.parent


def load_revision(rev: str) -> ModuleType:
    """`mlpulse.wire` as it was at `rev`, loaded under another name."""
    source = subprocess.run(["git", "show", f"{rev}:src/mlpulse/wire.py"], cwd=REPO_ROOT,
                            check=True, capture_output=True).stdout
    path = Path(tempfile.mkdtemp()) / "wire_ref.py"
    path.write_bytes(source)
    spec = importlib.util.spec_from_file_location("wire_ref", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def workloads() -> dict[str, tuple[list[bytes], dict[str, Any], int]]:
    """Messages, decode options and events per pass, by name."""
    X, y = load_diabetes(return_X_y=True)
    ts = time.time()
    feats = [{"id": f"run-{i}", "body": X[i % len(X)].tolist(), "ts": ts} for i in range(5000)]
    labels = [{"id": f"run-{i}", "body": float(y[i % len(y)]), "ts": ts} for i in range(5000)]
    preds = [{**d, "model_version": "v1"} for d in labels]
    framed = lambda docs: [orjson.dumps(docs[i:i + 500]) for i in range(0, len(docs), 500)]  # noqa: E731
    return {
        "features, frames of 500": (framed(feats), {"numeric": False, "n_features": 10}, 5000),
        "y_true, frames of 500": (framed(labels), {"numeric": True}, 5000),
        "y_pred, frames of 500": (framed(preds), {"numeric": True}, 5000),
        "features, single messages": ([orjson.dumps(d) for d in feats[:2000]],
                                      {"numeric": False, "n_features": 10}, 2000),
    }


def rate(decode: Callable[..., Any], messages: list[bytes], options: dict[str, Any],
         events: int) -> float:
    start = time.perf_counter()
    for raw in messages:
        _, bad = decode(raw, **options)
        assert not bad
    return events / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="the revision to compare against")
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(REPO_ROOT / "src"))
    from mlpulse.wire import decode_frame

    ref = load_revision(args.ref).decode_frame
    print(f"| workload | {args.ref} events/s | this tree events/s | this tree / {args.ref} |")
    print("|---|--:|--:|--:|")
    for name, (messages, options, events) in workloads().items():
        theirs, ours = [], []
        for _ in range(args.rounds):
            theirs.append(rate(ref, messages, options, events))
            ours.append(rate(decode_frame, messages, options, events))
        a, b = statistics.median(theirs), statistics.median(ours)
        print(f"| {name} | {a:,.0f} | {b:,.0f} | {b / a:.2f}x |")


if __name__ == "__main__":
    main()
