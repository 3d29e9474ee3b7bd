"""The deployment files ops apply: Kubernetes manifests validated against the
Kubernetes OpenAPI schemas (kubernetes-validate, offline, strict: unknown fields
fail), and the settings that must agree across nginx, gunicorn, compose and
Kubernetes kept in agreement. Runs in `make test`; the files are exercised for
real by `make drills`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from service.app import MAX_REQUEST_BYTES
from service.config import Settings
from service.serving import gunicorn_options

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
NGINX_TEMPLATE = DEPLOY / "nginx" / "sealednotes.conf.template"
# The oldest Kubernetes the manifests support (native sidecars) and the newest schema shipped.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def _docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def _all() -> list[dict[str, Any]]:
    return _docs("sealednotes.yaml") + _docs("migrate/migrate-job.yaml")


def _one(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _all() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return list(spec.get("initContainers", [])) + list(spec["containers"])


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schema(version: str) -> None:
    docs = _all()
    assert {d["kind"] for d in docs} >= {
        "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
        "NetworkPolicy", "Job",
    }  # fmt: skip
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} (k8s {version}): {e.message}")


def test_kustomizations_list_every_manifest_and_pin_one_digest() -> None:
    digests = set()
    listed = []
    for kust_path in (K8S / "kustomization.yaml", K8S / "migrate" / "kustomization.yaml"):
        kust = yaml.safe_load(kust_path.read_text())
        listed += [str((kust_path.parent / r).relative_to(K8S)) for r in kust["resources"]]
        (image,) = kust["images"]
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", image["digest"])
        digests.add((image["name"], image["digest"]))
    manifests = [str(p.relative_to(K8S)) for p in K8S.rglob("*.yaml")]
    assert sorted(listed) == sorted(m for m in manifests if not m.endswith("kustomization.yaml"))
    assert len(digests) == 1
    ((name, _),) = digests
    api_images = {c["image"].split("@")[0] for d in _all() if d["kind"] in ("Deployment", "Job")
                  for c in _containers(d) if c["name"] in ("api", "migrate")}  # fmt: skip
    assert api_images == {name}


def test_every_image_is_pinned_by_digest() -> None:
    for doc in _all():
        if doc["kind"] in ("Deployment", "Job"):
            for c in _containers(doc):
                assert DIGEST.search(c["image"]), f"{c['name']}: {c['image']} is not a digest"


def test_vault_credentials_come_from_the_agent_not_the_environment() -> None:
    deploy = _one("Deployment", "sealednotes")
    containers = {c["name"]: c for c in _containers(deploy)}
    api, agent = containers["api"], containers["vault-agent"]
    env = _env(api)
    for secret in ("VAULT_TOKEN", "SEALEDNOTES_VAULT_ROLE_ID", "SEALEDNOTES_VAULT_SECRET_ID"):
        assert secret not in env
    assert agent.get("restartPolicy") == "Always"  # a native sidecar, started first
    agent_hcl = _one("ConfigMap", "sealednotes-vault-agent")["data"]["agent.hcl"]
    sink = re.search(r'path\s*=\s*"([^"]+)"', agent_hcl[agent_hcl.index('sink "file"') :])
    assert sink and env["SEALEDNOTES_VAULT_TOKEN_FILE"] == sink.group(1)
    token_dir = str(Path(sink.group(1)).parent)
    mounts = {c: {m["mountPath"]: m["name"] for m in containers[c]["volumeMounts"]}
              for c in ("api", "vault-agent")}  # fmt: skip
    assert mounts["api"][token_dir] == mounts["vault-agent"][token_dir]  # the same volume
    # The service-account token reaches only the agent, with audience "vault".
    assert deploy["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    sa_path = re.search(r'token_path\s*=\s*"([^"]+)"', agent_hcl)
    assert sa_path and mounts["vault-agent"][str(Path(sa_path.group(1)).parent)] == "vault-sa-token"
    assert "vault-sa-token" not in mounts["api"].values()
    assert env["VAULT_CACERT"].startswith("/vault/ca/")


def test_metrics_on_their_own_port_and_scraped_there() -> None:
    deploy = _one("Deployment", "sealednotes")
    api = next(c for c in _containers(deploy) if c["name"] == "api")
    ports = {p["name"]: p["containerPort"] for p in api["ports"]}
    env = _env(api)
    assert env["SEALEDNOTES_METRICS_BIND"] == f"0.0.0.0:{ports['metrics']}"
    assert env["SEALEDNOTES_BIND"].endswith(f":{ports['app']}") and ports["app"] != ports["metrics"]
    annotations = deploy["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(ports["metrics"])


def test_clients_reach_nginx_only() -> None:
    deploy = _one("Deployment", "sealednotes")
    containers = {c["name"]: c for c in _containers(deploy)}
    nginx = containers["nginx"]
    (http,) = nginx["ports"]
    service = _one("Service", "sealednotes")
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [http["name"]]
    assert (
        _env(nginx)["SEALEDNOTES_UPSTREAM"]
        == "127.0.0.1:" + _env(containers["api"])["SEALEDNOTES_BIND"].rsplit(":", 1)[1]
    )
    policy = _one("NetworkPolicy", "sealednotes-api")
    admitted = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert admitted == {"http", "metrics"}  # never gunicorn's port
    # The ConfigMap carries deploy/nginx's template verbatim.
    cm = _one("ConfigMap", "sealednotes-nginx")["data"]["sealednotes.conf.template"]
    assert cm == NGINX_TEMPLATE.read_text()


def test_migrations_job_runs_migrate_as_the_owner() -> None:
    job = _one("Job", "sealednotes-migrate")
    (c,) = _containers(job)
    assert c["args"][:2] == ["sealednotes", "migrate"] and "--app-role" in c["args"]
    assert _env(c)["SEALEDNOTES_DATABASE_URL"]["secretKeyRef"]["name"] == "sealednotes-migrate"
    deploy = _one("Deployment", "sealednotes")
    api = next(x for x in _containers(deploy) if x["name"] == "api")
    assert c["image"] == api["image"]


def _nginx_seconds(directive: str) -> float:
    m = re.search(rf"^\s*{directive}\s+(\d+)s;", NGINX_TEMPLATE.read_text(), re.M)
    assert m, directive
    return float(m.group(1))


def test_nginx_limits_agree_with_the_app() -> None:
    defaults = Settings(database_url="postgresql://x", vault_addr="http://x")
    gunicorn_timeout = gunicorn_options(defaults)["timeout"]
    read = _nginx_seconds("proxy_read_timeout")
    # dependency (2 s) < request deadline (5 s) < proxy read < gunicorn worker timeout
    assert max(defaults.vault_timeout, defaults.db_timeout) < defaults.request_timeout < read
    assert read < gunicorn_timeout
    assert _nginx_seconds("proxy_connect_timeout") <= defaults.vault_timeout
    text = NGINX_TEMPLATE.read_text()
    size = re.search(r"client_max_body_size\s+(\d+)m;", text)
    assert size and int(size.group(1)) * 1024 * 1024 == MAX_REQUEST_BYTES
    assert re.search(r"proxy_request_buffering\s+on;", text)
    assert _nginx_seconds("client_header_timeout") <= 10
    assert _nginx_seconds("client_body_timeout") <= 10


def test_compose_publishes_only_the_proxy() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"proxy"}
    proxy = services["proxy"]
    assert proxy["environment"]["SEALEDNOTES_UPSTREAM"] == "api:8080"
    assert any("nginx/sealednotes.conf.template" in v for v in proxy["volumes"])
