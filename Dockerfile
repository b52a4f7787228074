# The orchestrator image: web, worker, beat and the migration job run from it with different commands.
FROM node:20-bookworm-slim AS opencode
RUN npm install --prefix /opt/opencode --no-audit --no-fund opencode-linux-x64@1.18.33

FROM python:3.11-slim-bookworm
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    OPENCODE_BIN=/opt/opencode/node_modules/opencode-linux-x64/bin/opencode \
    ORCHESTRATOR_VAR_DIR=/data PROMETHEUS_MULTIPROC_DIR=/run/prometheus
# git: worktrees and checkpoints; util-linux: setpriv, so an OpenCode server dies with its worker.
RUN apt-get update && apt-get install -y --no-install-recommends git util-linux \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 1000 app \
    && mkdir -p /data/repos /run/prometheus && chown -R app:app /data /run/prometheus
COPY --from=opencode /opt/opencode /opt/opencode
WORKDIR /app
COPY pyproject.toml README.md ./
RUN pip install --editable .
COPY . .
RUN DEBUG=false SECRET_KEY=build-only python manage.py collectstatic --noinput -v 0 \
    && chown -R app:app /data /run/prometheus
USER app
EXPOSE 8000 9100
CMD ["python", "-m", "daphne", "-b", "0.0.0.0", "-p", "8000", "orchestrator.asgi:application"]
