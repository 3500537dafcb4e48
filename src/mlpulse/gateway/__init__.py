"""The gateway: FastAPI on Uvicorn, the Redis actualizer and the RabbitMQ relay, one loop."""
