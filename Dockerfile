# Sealed Notes API image: `docker build -t sealednotes .`
# (the base is a build argument: `--build-arg BASE_IMAGE=...`, any Debian-like
# image with Python >= 3.11, python -m venv, groupadd/useradd; the drill in
# tests/drills/ builds on a debootstrapped Debian bookworm, see docs/deployment.md)
# Runs `sealednotes serve` (gunicorn); all configuration comes from the
# environment (see service/config.py): SEALEDNOTES_DATABASE_URL, VAULT_ADDR and
# VAULT_TOKEN or SEALEDNOTES_VAULT_ROLE_ID + SEALEDNOTES_VAULT_SECRET_ID.

ARG BASE_IMAGE=python:3.12-slim

# -- build: a wheel from exactly the files below, installed into a venv ------------
FROM ${BASE_IMAGE} AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# Only what the wheel needs (service/openapi.yaml is a link to ../openapi.yaml).
COPY pyproject.toml README.md openapi.yaml requirements.lock ./
COPY crypto ./crypto
COPY service ./service
# Build the wheel first and install that (not the source tree), then check the
# installed package carries its data files: migrations, the OpenAPI document and
# the Vault policies `sealednotes vault-setup` writes.
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip wheel --no-deps --wheel-dir /wheels . \
 && /opt/venv/bin/pip install -c requirements.lock /wheels/sealednotes-*.whl \
 && /opt/venv/bin/python -c "from importlib import resources as r; \
s = r.files('service'); \
need = ['openapi.yaml', 'vault_policies/sealednotes-service.hcl', \
        'vault_policies/sealednotes-ops.hcl']; \
missing = [n for n in need if not s.joinpath(n).is_file()]; \
missing += [] if any(s.joinpath('migrations').iterdir()) else ['migrations/']; \
assert not missing, f'wheel lacks {missing}'"

# -- runtime ------------------------------------------------------------------------
FROM ${BASE_IMAGE}

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    SEALEDNOTES_BIND=0.0.0.0:8080

# Unprivileged user with a fixed numeric id, so Kubernetes can check
# runAsNonRoot. No home directory, no shell.
RUN groupadd --system --gid 10001 sealednotes \
 && useradd --system --uid 10001 --gid sealednotes \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin sealednotes

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /tmp
EXPOSE 8080

# Liveness only (/healthz: the process answers). Readiness (/readyz: database
# and Vault reachable) is for load balancers, not for restarting the container.
# Assumes the default port; change it here if you change SEALEDNOTES_BIND.
HEALTHCHECK --interval=15s --timeout=3s --start-period=15s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status == 200 else 1)"]

CMD ["sealednotes", "serve"]
