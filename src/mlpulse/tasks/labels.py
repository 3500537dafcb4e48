"""Pulling ground-truth labels from a third-party source into `y_true`.

The source answers `GET {url}?after={cursor}` with
`{"labels": [{"id": ..., "y_true": ...}, ...], "next": "<cursor>"}`, or with a plain CSV
of `id,y_true` rows (`text/csv`, or a URL ending in `.csv`). The cursor is stored in Redis
only after the broker has confirmed the labels it covers, so a crash or an error repeats
a page (the joiner counts a repeated label as a duplicate and writes it once) and never
skips one.
"""

from __future__ import annotations

import csv
import io
import logging
from typing import Any

import httpx

from mlpulse import keys
from mlpulse.errors import SourceUnavailable
from mlpulse.tasks.records import Y_TRUE_QUEUE, client, publish
from mlpulse.wire import Y_TRUE, canonical_id, encode, finite_number

log = logging.getLogger(__name__)

FRAME_EVENTS = 500
MAX_PAGES = 1000  # per run; the next run goes on from the stored cursor
BAD_SHOWN = 20


def pull(url: str, timeout: float) -> dict[str, Any]:
    """Fetch every new label, publish the good ones, and report the bad ones."""
    published, bad, pages = 0, [], 0
    with httpx.Client(timeout=timeout, follow_redirects=True) as http:
        while pages < MAX_PAGES:
            cursor = _get(keys.LABELS_CURSOR)
            response = http.get(url, params={"after": cursor} if cursor else None)
            pages += 1
            if response.status_code >= 500 or response.status_code == 429:
                raise SourceUnavailable(f"{url} answered {response.status_code}")
            response.raise_for_status()
            if _is_csv(url, response):
                n, rejected = _take_csv(response.text)
                published += n
                bad.extend(rejected)
                break
            doc = response.json()
            if not isinstance(doc, dict) or not isinstance(doc.get("labels"), list):
                raise ValueError(f'{url}: expected {{"labels": [...], "next": ...}}')
            good, rejected = _check(doc["labels"])
            _publish(good)
            published += len(good)
            bad.extend(rejected)
            nxt = doc.get("next")
            if nxt is None or str(nxt) == cursor:
                break
            client().set(keys.LABELS_CURSOR, str(nxt))
            if not doc["labels"]:
                break
    for row in bad[:BAD_SHOWN]:
        log.warning("labels: skipped %s", row)
    return {"published": published, "bad": len(bad), "bad_rows": bad[:BAD_SHOWN],
            "pages": pages, "cursor": _get(keys.LABELS_CURSOR)}


def _get(key: str) -> str | None:
    raw = client().get(key)
    return raw.decode() if isinstance(raw, bytes) else None


def _is_csv(url: str, response: httpx.Response) -> bool:
    kind = response.headers.get("content-type", "")
    return kind.startswith("text/csv") or url.split("?", 1)[0].endswith(".csv")


def _check(items: list[Any], first_row: int = 1) -> tuple[list[dict[str, Any]], list[str]]:
    """Good labels as y_true events, and a line for each bad one."""
    good: list[dict[str, Any]] = []
    bad: list[str] = []
    seen: set[str] = set()
    for n, item in enumerate(items, start=first_row):
        if not isinstance(item, dict) or "id" not in item or "y_true" not in item:
            bad.append(f'row {n}: expected {{"id": ..., "y_true": ...}}, got {item!r:.80}')
            continue
        raw = item["y_true"]
        try:
            cid = canonical_id(item["id"])
            # A CSV cell is text; a JSON value must be a number, as on the wire.
            value = finite_number(float(raw) if isinstance(raw, str) else raw, "y_true")
        except ValueError as exc:
            bad.append(f"row {n}: {exc} ({raw!r})")
            continue
        if cid in seen:
            continue
        seen.add(cid)
        good.append({"id": item["id"], "body": value})
    return good, bad


def _take_csv(text: str) -> tuple[int, list[str]]:
    """The rows after those taken before; the count taken is kept in Redis."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"id", "y_true"} <= set(reader.fieldnames):
        raise ValueError(f"the CSV needs an id,y_true header, not {reader.fieldnames}")
    rows = list(reader)
    taken = int(_get(keys.LABELS_CSV_ROWS) or 0)
    if taken > len(rows):
        taken = 0  # the file was replaced by a shorter one: start over
    good, bad = _check(rows[taken:], first_row=taken + 1)
    _publish(good)
    client().set(keys.LABELS_CSV_ROWS, len(rows))
    return len(good), bad


def _publish(events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), FRAME_EVENTS):
        publish(Y_TRUE, encode(events[i:i + FRAME_EVENTS]), declare=[Y_TRUE_QUEUE])
