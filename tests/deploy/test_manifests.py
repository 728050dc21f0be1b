"""The deploy/ files say what the README's "Scaling out" promises: parsed, not applied (no
cluster in CI)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
PORT = 8000
UID = 10001


def load_all() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(DEPLOY.rglob("*.y*ml")):
        with path.open() as fh:
            docs += [d for d in yaml.safe_load_all(fh) if d is not None]
    return docs


DOCS = load_all()


def one(kind: str) -> dict[str, Any]:
    found = [d for d in DOCS if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


@pytest.fixture
def deployment() -> dict[str, Any]:
    return one("Deployment")


@pytest.fixture
def container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def test_every_manifest_parses_and_has_kind_and_name() -> None:
    kinds = sorted(d["kind"] for d in DOCS)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Secret",
        "Service",
    ]
    for d in DOCS:
        assert d["apiVersion"]
        assert d["metadata"]["name"]


def test_probes_hit_the_health_routes_on_the_container_port(container: dict[str, Any]) -> None:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": PORT}

    def target(probe: str) -> tuple[str, int]:
        get = container[probe]["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert target("livenessProbe") == ("/health/live", PORT)
    assert target("readinessProbe") == ("/health/ready", PORT)
    assert target("startupProbe") == ("/health/live", PORT)


def test_runs_as_non_root(deployment: dict[str, Any], container: dict[str, Any]) -> None:
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == UID != 0
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]


def test_replicas_resources_and_grace_period(
    deployment: dict[str, Any], container: dict[str, Any]
) -> None:
    assert deployment["spec"]["replicas"] >= 2
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= container["resources"][kind].keys()
    config = one("ConfigMap")["data"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert float(config["FLOWHOST_GRACEFUL_TIMEOUT"]) < grace


def test_hpa_scales_the_deployment_on_cpu(deployment: dict[str, Any]) -> None:
    hpa = one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert 2 <= spec["minReplicas"] <= deployment["spec"]["replicas"] <= spec["maxReplicas"]
    (metric,) = spec["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100


def test_secret_holds_every_key_the_deployment_references(container: dict[str, Any]) -> None:
    secret = one("Secret")
    keys = set(secret.get("stringData", {})) | set(secret.get("data", {}))
    refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
    assert refs
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in keys
    assert {"FLOWHOST_DATABASE_URL", "FLOWHOST_TOKEN", "FLOWHOST_MILVUS_TOKEN"} <= {
        r["key"] for r in refs
    }
    # a shared database, never the per-pod SQLite default
    assert secret["stringData"]["FLOWHOST_DATABASE_URL"].startswith(("mysql", "postgresql"))


def test_configmap_points_every_replica_at_milvus(container: dict[str, Any]) -> None:
    config = one("ConfigMap")
    (ref,) = [s["configMapRef"]["name"] for s in container["envFrom"]]
    assert ref == config["metadata"]["name"]
    data = config["data"]
    assert data["FLOWHOST_KB_BACKEND"] == "milvus"
    assert data["FLOWHOST_MILVUS_URI"].startswith(("http://", "https://"))
    assert data["FLOWHOST_HOST"] == "0.0.0.0"
    assert int(data["FLOWHOST_PORT"]) == PORT
    assert all(isinstance(v, str) for v in data.values())
    # secrets stay out of the ConfigMap
    assert not {"FLOWHOST_DATABASE_URL", "FLOWHOST_TOKEN", "FLOWHOST_MILVUS_TOKEN"} & data.keys()
    assert not any(k.endswith("_API_KEY") for k in data)


def test_configmap_is_valid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every key is a setting that parses (a typo or a bad value would stop every pod)."""
    from flowhost.config import Settings

    data = one("ConfigMap")["data"]
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    fields = {f"FLOWHOST_{name.upper()}" for name in Settings.model_fields}
    assert set(data) <= fields, set(data) - fields
    assert settings.log_format == "json"  # the cluster's log collector reads JSON lines
    assert settings.workers == 1


def test_service_routes_to_the_container_port(deployment: dict[str, Any]) -> None:
    service = one("Service")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in ("http", PORT)


def dockerfile() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines()]
    return [
        (ln.split(None, 1)[0].upper(), ln.split(None, 1)[1] if " " in ln else "")
        for ln in lines
        if ln and not ln.startswith("#")
    ]


def test_dockerfile_runs_non_root_with_a_healthcheck_on_the_port(
    container: dict[str, Any],
) -> None:
    instructions = dockerfile()
    (base,) = [arg for ins, arg in instructions if ins == "FROM"]
    assert re.fullmatch(r"python:3\.11-slim(-\w+)?", base)
    users = [arg for ins, arg in instructions if ins == "USER"]
    assert users
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user == str(UID)  # the uid the Deployment's securityContext names
    (expose,) = [arg for ins, arg in instructions if ins == "EXPOSE"]
    assert int(expose.split("/")[0]) == PORT == container["ports"][0]["containerPort"]
    (health,) = [arg for ins, arg in instructions if ins == "HEALTHCHECK"]
    assert f"127.0.0.1:{PORT}/health/live" in health
    env = " ".join(arg for ins, arg in instructions if ins == "ENV")
    assert f"FLOWHOST_PORT={PORT}" in env
    assert "FLOWHOST_FLOWS=/app/flows" in env
    # the dependencies at the versions the suite passed with, as `make install` takes them
    (install,) = [arg for ins, arg in instructions if ins == "RUN" and "pip install" in arg]
    assert "-c /src/constraints.txt" in install
    assert any(ins == "COPY" and "constraints.txt" in arg for ins, arg in instructions)
    # exec-form entrypoint: flowhost itself receives SIGTERM
    (entry,) = [arg for ins, arg in instructions if ins == "ENTRYPOINT"]
    assert entry.startswith("[")


def test_the_image_names_one_tag() -> None:
    image = one("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"]
    assert ":" in image.rsplit("/", 1)[-1]
    assert not image.endswith(":latest")
