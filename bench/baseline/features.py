"""Seed-style producer: random diabetes rows to the ``features`` and ``y_true`` queues.

This deliberately mirrors the seed project so the benchmark has an honest baseline:
a new blocking connection is opened for every event and closed after publishing,
the message id is the float send timestamp, and nothing is batched or confirmed.
"""

import argparse
import datetime
import json
import os
import time

import numpy as np
import pika
from sklearn.datasets import load_diabetes

AMQP_URL = os.environ.get("BASELINE_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=0, help="events to send (0 = forever)")
    parser.add_argument("--interval", type=float, default=0.0, help="seconds between events")
    args = parser.parse_args()

    X, y = load_diabetes(return_X_y=True)
    sent = 0
    while args.count == 0 or sent < args.count:
        row = np.random.randint(0, X.shape[0])
        message_id = datetime.datetime.now().timestamp()

        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        channel = connection.channel()
        channel.queue_declare(queue="features", durable=True)
        channel.queue_declare(queue="y_true", durable=True)
        channel.basic_publish(
            exchange="",
            routing_key="features",
            body=json.dumps({"id": message_id, "body": X[row].tolist()}),
        )
        channel.basic_publish(
            exchange="",
            routing_key="y_true",
            body=json.dumps({"id": message_id, "body": float(y[row])}),
        )
        connection.close()

        sent += 1
        if args.interval:
            time.sleep(args.interval)


if __name__ == "__main__":
    main()
