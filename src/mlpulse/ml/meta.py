"""Model versions on disk, read without loading scikit-learn (the gateway needs only this)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

_META = re.compile(r"^model-v(\d+)\.json$")


def versions(models_dir: Path) -> list[int]:
    """Completed versions, oldest first."""
    if not models_dir.is_dir():
        return []
    found = (_META.match(p.name) for p in models_dir.iterdir())
    return sorted(int(m.group(1)) for m in found if m)


def read_meta(models_dir: Path, number: int) -> dict[str, Any]:
    """One version's metadata."""
    meta: dict[str, Any] = json.loads((models_dir / f"model-v{number}.json").read_text())
    return meta
