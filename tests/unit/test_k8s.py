"""The Kubernetes manifests, checked as far as is possible offline.

Every object is validated against the Kubernetes API schema (kubernetes-validate
bundles the schemas); then the references between objects that no schema checks:
selectors, named ports, ConfigMaps, volumes, probes, scrape annotations, and that
every LENET_* setting is a real flag of the program that reads it.
"""

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"


def kustomization():
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def objects():
    docs = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def by_kind(kind):
    return {o["metadata"]["name"]: o for o in objects() if o["kind"] == kind}


def pod_templates():
    return {o["metadata"]["name"]: o["spec"]["template"] for o in objects() if o["kind"] in ("Deployment", "Job")}


def test_every_resource_file_exists_and_parses():
    for name in kustomization()["resources"]:
        assert (K8S / name).is_file(), name
    assert {o["kind"] for o in objects()} >= {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Service", "Job",
                                              "Deployment"}


@pytest.mark.parametrize("obj", objects(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
def test_schema(obj):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_selectors_match_pod_labels():
    templates = pod_templates()
    for name, dep in by_kind("Deployment").items():
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    for name, svc in by_kind("Service").items():
        selected = [t for t in templates.values() if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert selected, f"service {name} selects no pod"
        ports = {p["name"]: p["containerPort"] for t in selected for c in t["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"service {name}: no container port named {port['targetPort']}"
            assert ports[port["targetPort"]] == port["port"], f"service {name}: port {port['name']} mismatch"


def test_references_probes_resources_and_annotations():
    configmaps, claims = by_kind("ConfigMap"), by_kind("PersistentVolumeClaim")
    images = {i["name"] for i in kustomization()["images"]}
    for name, template in pod_templates().items():
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, name
        for c in spec["containers"]:
            assert c["image"] in images, f"{name}: image {c['image']} not managed by kustomization"
            for ref in c.get("envFrom", []):
                assert ref["configMapRef"]["name"] in configmaps, name
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, name
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe in ("readinessProbe", "livenessProbe"):
                assert c[probe]["httpGet"]["port"] in ports, f"{name}: {probe} port"
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), name
            assert {"cpu", "memory"} <= c["resources"]["limits"].keys(), name
            annotations = template["metadata"]["annotations"]
            assert annotations["prometheus.io/scrape"] == "true"
            assert int(annotations["prometheus.io/port"]) in ports.values(), f"{name}: scrape port"
            metrics_env = {e["name"]: e["value"] for e in c.get("env", [])}.get("LENET_METRICS_PORT")
            assert metrics_env == annotations["prometheus.io/port"], f"{name}: metrics port"


def test_workers_reach_the_coordinator_service():
    settings = by_kind("ConfigMap")["lenet5-settings"]["data"]
    host, port = settings["LENET_CONNECT"].removeprefix("tcp://").split(":")
    service = by_kind("Service")[host]
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert settings["LENET_BIND"].endswith(f":{port}")
    assert by_kind("Deployment")["lenet5-worker"]["spec"]["replicas"] == 8


def test_every_setting_is_a_real_flag():
    from coordinator.__main__ import build_parser as coordinator_parser
    from lenet.cli import env_name
    from worker.__main__ import build_parser as worker_parser

    known = {env_name(opt) for parser in (coordinator_parser(), worker_parser())
             for action in parser._actions for opt in action.option_strings if opt.startswith("--")}
    known.add("LENET_CACHE_DIR")  # read by lenet.data, not a flag
    settings = set(by_kind("ConfigMap")["lenet5-settings"]["data"])
    extra = {e["name"] for t in pod_templates().values() for c in t["spec"]["containers"] for e in c.get("env", [])}
    assert settings | extra <= known, sorted((settings | extra) - known)


def test_kustomize_renders_when_kubectl_is_available():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: the checks above still ran")
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert all(d["metadata"].get("namespace") == "lenet5" for d in rendered if d["kind"] != "Namespace")
