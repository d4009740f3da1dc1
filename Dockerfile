# dpledger ledger service: slim, non-root, no torch (the trainer extra is not installed).
#   docker build -t dpledger .
#   docker run -p 8000:8000 -v dpledger-data:/data -e DPLEDGER_BOOTSTRAP_TOKEN=... dpledger
# .dockerignore keeps .venv, caches, .git and data out of the build context.
FROM python:3.11-slim AS build
WORKDIR /src
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY pyproject.toml README.md ./
COPY requirements/constraints.txt requirements/constraints.txt
COPY dp_core/ dp_core/
COPY app/ app/
COPY dpledger/ dpledger/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install -c requirements/constraints.txt . \
    && ! /opt/venv/bin/python -c "import torch" 2>/dev/null

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /srv/dpledger dpledger \
    && mkdir -p /data /srv/dpledger && chown dpledger /data
COPY --from=build /opt/venv /opt/venv
COPY migrations/ /srv/dpledger/migrations/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    DPLEDGER_DATABASE_URL=sqlite:////data/dpledger.db \
    DPLEDGER_INITIAL_TOKEN_FILE=/data/initial-admin-token \
    DPLEDGER_MIGRATIONS_DIR=/srv/dpledger/migrations \
    DPLEDGER_HOST=0.0.0.0 \
    DPLEDGER_PORT=8000
USER dpledger
WORKDIR /srv/dpledger
VOLUME ["/data"]
EXPOSE 8000
# The port the service listens on (DPLEDGER_PORT, 8000 unless the container's environment says).
HEALTHCHECK --interval=30s --timeout=3s CMD python -c "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('DPLEDGER_PORT', '8000')}/healthz\")"
CMD ["dpledger", "serve"]
