"""Seed-style metric service: joins ``y_true`` and ``y_pred`` by id and logs to a CSV.

This deliberately mirrors the seed project so the benchmark has an honest baseline:
messages are consumed with auto-ack, halves wait in a plain dict, and every joined
event re-reads the whole CSV with pandas and rewrites it, so it slows as the log grows.
"""

import json
import os
import sys
import time
from pathlib import Path

import pandas as pd
import pika

AMQP_URL = os.environ.get("BASELINE_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")
CSV_PATH = Path(os.environ.get("BASELINE_CSV", "logs/metric_log.csv"))

answers: dict[float, dict[str, float]] = {}


def log_row(row: dict) -> None:
    if CSV_PATH.exists():
        df = pd.read_csv(CSV_PATH)
        df = pd.concat([df, pd.DataFrame([row])], ignore_index=True)
    else:
        df = pd.DataFrame([row])
    df.to_csv(CSV_PATH, index=False)


def callback(ch, method, properties, body) -> None:
    message = json.loads(body)
    message_id = message["id"]
    answers.setdefault(message_id, {})[method.routing_key] = message["body"]

    if len(answers[message_id]) == 2:
        halves = answers.pop(message_id)
        log_row(
            {
                "id": message_id,
                "y_true": halves["y_true"],
                "y_pred": halves["y_pred"],
                "absolute_error": abs(halves["y_true"] - halves["y_pred"]),
                "logged_at": time.time(),
            }
        )


def main() -> None:
    CSV_PATH.parent.mkdir(parents=True, exist_ok=True)
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue="y_true", durable=True)
    channel.queue_declare(queue="y_pred", durable=True)
    channel.basic_consume(queue="y_true", on_message_callback=callback, auto_ack=True)
    channel.basic_consume(queue="y_pred", on_message_callback=callback, auto_ack=True)
    print("metric ready, waiting for messages", file=sys.stderr, flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    main()
