"""Seed-style model service: one prediction per ``features`` message, sent to ``y_pred``.

This deliberately mirrors the seed project so the benchmark has an honest baseline:
messages are consumed with auto-ack, predicted one at a time, and every prediction is
published over a brand-new blocking connection that is closed right after.
"""

import json
import os
import sys

import numpy as np
import pika
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LinearRegression

AMQP_URL = os.environ.get("BASELINE_AMQP_URL", "amqp://guest:guest@localhost:5672/%2F")

X, y = load_diabetes(return_X_y=True)
regressor = LinearRegression().fit(X, y)


def callback(ch, method, properties, body) -> None:
    message = json.loads(body)
    y_pred = regressor.predict(np.array(message["body"]).reshape(1, -1))[0]

    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue="y_pred", durable=True)
    channel.basic_publish(
        exchange="",
        routing_key="y_pred",
        body=json.dumps({"id": message["id"], "body": float(y_pred)}),
    )
    connection.close()


def main() -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.queue_declare(queue="features", durable=True)
    channel.queue_declare(queue="y_pred", durable=True)
    channel.basic_consume(queue="features", on_message_callback=callback, auto_ack=True)
    print("model ready, waiting for messages", file=sys.stderr, flush=True)
    channel.start_consuming()


if __name__ == "__main__":
    main()
