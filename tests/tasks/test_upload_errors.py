"""Uploads a CSV parser chokes on are refused with a 422 that says why, and leave nothing."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Env, Role
from tests.tasks.conftest import FEATURES, Api

HEADER = ",".join(["id", *FEATURES])
ROW = ",".join(["r1", *(["0.01"] * len(FEATURES))])
NUMBERS = ",".join(["0.01"] * len(FEATURES))
TRAIN_HEADER = ",".join([*FEATURES, "target"]).encode()
TRAIN_ROW = ",".join(["0.01"] * (len(FEATURES) + 1)).encode()


def test_undecodable_bytes_and_unclosed_quotes_get_422_and_leave_nothing(
        env: Env, spawn: Callable[..., Role], api: Callable[..., Api]) -> None:
    spawn("model")
    alice, root = api("alice"), api("root", admin=True)
    score_cases = {
        "latin-1 id": (f"{HEADER}\n{ROW}\nr\xe92,{NUMBERS}\n".encode("latin-1"),
                       ["UTF-8", "line 3", "0xe9"]),
        "bad byte in a number": (f"{HEADER}\n{ROW}\n{ROW}\n".encode()
                                 + b"r3,0.0\xff1," + NUMBERS.encode()[5:] + b"\n",
                                 ["UTF-8", "line 4", "0xff"]),
        "bad byte in the header": (b"\xffid," + ",".join(FEATURES).encode() + b"\n"
                                   + ROW.encode() + b"\n", ["UTF-8", "line 1"]),
        "unclosed quote": (f'{HEADER}\n{ROW}\n"r2,{NUMBERS}\nr3,{NUMBERS}\n'.encode(),
                           ["quote", "line 3"]),
        "unclosed quote on the last line": (f'{HEADER}\n{ROW}\n"r2,{NUMBERS}\n'.encode(),
                                            ["quote", "line 3"]),
    }
    for name, (body, words) in score_cases.items():
        response = alice.upload("batch-score", body)
        assert response.status_code == 422, (name, response.status_code, response.text)
        detail = response.json()["detail"]
        assert all(w in detail for w in words), (name, detail)

    train_cases = {
        "latin-1 cell": (TRAIN_HEADER + b"\n" + TRAIN_ROW + b"\n" + b"\xe9" + TRAIN_ROW + b"\n",
                         ["UTF-8", "line 3"]),
        "unclosed quote": (TRAIN_HEADER + b'\n"' + TRAIN_ROW + b"\n" + TRAIN_ROW + b"\n",
                           ["quote", "line 2"]),
        "not a number": (TRAIN_HEADER + b"\n" + TRAIN_ROW.replace(b"0.01", b"abc", 1) + b"\n",
                         ["row 1", FEATURES[0], "abc"]),
        "no such target": (TRAIN_HEADER + b"\n" + TRAIN_ROW + b"\n", ["'label'"]),
    }
    for name, (body, words) in train_cases.items():
        target = "label" if name == "no such target" else "target"
        response = root.upload("retrain", body, target=target)
        assert response.status_code == 422, (name, response.status_code, response.text)
        detail = response.json()["detail"]
        assert all(w in detail for w in words), (name, detail)

    uploads = env.root / "data" / "uploads"
    assert not uploads.exists() or list(uploads.iterdir()) == []
    assert alice.get("/api/tasks").json() == []
    assert root.get("/api/tasks").json() == []
