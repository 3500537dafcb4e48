# syntax=docker/dockerfile:1
# One image for every mlpulse role; the compose file picks the role with `command:`.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first, in their own layer: rebuilt only when pyproject.toml changes.
# The placeholder package's build output goes too: pip builds in the source tree, and a
# build/ newer than the real sources would ship the empty __init__.py instead of them.
COPY pyproject.toml ./
RUN mkdir -p src/mlpulse && touch src/mlpulse/__init__.py README.md \
    && pip install . && pip uninstall -y mlpulse && rm -rf build src
COPY README.md ./
COPY src ./src
RUN pip install --no-deps .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 mlpulse \
    && mkdir -p /var/lib/mlpulse/logs /var/lib/mlpulse/data /var/lib/mlpulse/models \
    && chown -R mlpulse:mlpulse /var/lib/mlpulse
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    MLPULSE_LOG_DIR=/var/lib/mlpulse/logs \
    MLPULSE_DATA_DIR=/var/lib/mlpulse/data \
    MLPULSE_MODELS_DIR=/var/lib/mlpulse/models
USER mlpulse
WORKDIR /var/lib/mlpulse
EXPOSE 8080
# Each role beats in Redis; the gateway answers /healthz. `auto` reads the role from PID 1.
HEALTHCHECK --interval=15s --timeout=10s --start-period=60s --retries=3 \
    CMD ["mlpulse", "doctor", "--role", "auto"]
ENTRYPOINT ["mlpulse"]
CMD ["gateway"]
