"""The Kubernetes manifests, checked as far as is possible offline (no cluster runs here).

Every object, rendered as kustomize renders it, is validated against the Kubernetes
API schema (kubernetes-validate bundles the schemas); then what no schema checks:
selectors, named ports, ConfigMaps, Secrets, volumes, probes, scrape annotations,
that every LENET_* setting is a real flag of the program that reads it, the
"restricted" Pod Security Standard, CURVE in every pod, and who the
NetworkPolicies let reach what.  checkov scans the same rendering in CI (.ci/checkov).
"""

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from coordinator import keys

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"
APPS = ("lenet5-coordinator", "lenet5-worker")  # the pods running this project's code


def renderer():
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / ".ci" / "render_k8s.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered():
    return renderer().render(K8S)


def kustomization():
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def objects():
    docs = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def by_kind(kind):
    return {o["metadata"]["name"]: o for o in objects() if o["kind"] == kind}


def pod_templates(objs=None):
    return {o["metadata"]["name"]: o["spec"]["template"] for o in (objs or objects())
            if o["kind"] in ("Deployment", "Job")}


def test_every_resource_file_exists_and_parses():
    for name in kustomization()["resources"]:
        assert (K8S / name).is_file(), name
    assert {o["kind"] for o in objects()} >= {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Service", "Job",
                                              "Deployment", "NetworkPolicy"}


@pytest.mark.parametrize("obj", rendered(), ids=lambda o: f"{o['kind']}/{o['metadata']['name']}")
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
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, name
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
            if name not in APPS:
                continue
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


def test_rendering_sets_namespace_labels_and_pinned_images():
    objs = rendered()
    assert all(o["metadata"].get("namespace") == "lenet5" for o in objs if o["kind"] != "Namespace")
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lenet5" for o in objs)
    for name, template in pod_templates(objs).items():
        for c in template["spec"]["containers"]:
            image, _, tag = c["image"].partition(":")
            assert tag and tag != "latest", f"{name}: image {c['image']} is not pinned"


def test_kustomize_renders_the_same_when_kubectl_is_available():
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: the checks above ran on .ci/render_k8s.py's rendering")
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=lambda o: (o["kind"], o["metadata"]["name"]))
    ours = sorted(rendered(), key=lambda o: (o["kind"], o["metadata"]["name"]))
    assert theirs == ours


# ---------------------------------------------------------------- the restricted Pod Security Standard


def test_namespace_enforces_the_restricted_profile():
    labels = by_kind("Namespace")["lenet5"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", ["lenet5-coordinator", "lenet5-worker", "lenet5-prometheus"])
def test_pods_pass_the_restricted_profile(name):
    spec = pod_templates()[name]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    pod_ctx = spec["securityContext"]
    assert pod_ctx["runAsNonRoot"] is True and pod_ctx["runAsUser"] > 0
    assert pod_ctx["seccompProfile"]["type"] == "RuntimeDefault"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert not any("hostPath" in v for v in volumes.values())
    for c in spec["containers"] + spec.get("initContainers", []):
        ctx = c["securityContext"]
        assert ctx["allowPrivilegeEscalation"] is False and not ctx.get("privileged")
        assert ctx["capabilities"]["drop"] == ["ALL"] and not ctx["capabilities"].get("add")
        assert ctx["readOnlyRootFilesystem"] is True and ctx["runAsNonRoot"] is True and ctx["runAsUser"] > 0
        assert ctx["seccompProfile"]["type"] == "RuntimeDefault"
        assert not any("hostPort" in p for p in c["ports"])
        # Whatever is writable is an explicit volume: /tmp at least.
        mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
        assert "emptyDir" in mounts["/tmp"]


def test_every_path_the_coordinator_writes_is_a_writable_volume():
    settings = by_kind("ConfigMap")["lenet5-settings"]["data"]
    spec = pod_templates()["lenet5-coordinator"]["spec"]
    (c,) = spec["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    writable = [m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")]
    for path in (settings["LENET_CHECKPOINT_DIR"], settings["LENET_OUTPUT"], env["LENET_CACHE_DIR"]):
        assert any(path.startswith(w.rstrip("/") + "/") for w in writable), path


def test_images_without_a_digest_say_why_next_to_the_resource():
    for o in objects():
        if o["kind"] in ("Deployment", "Job"):
            skips = [v for k, v in o["metadata"].get("annotations", {}).items() if k.startswith("checkov.io/skip")]
            digest_skip = [s for s in skips if s.startswith("CKV_K8S_43=")]
            assert digest_skip and len(digest_skip[0]) > len("CKV_K8S_43=") + 20, o["metadata"]["name"]


# ---------------------------------------------------------------- CURVE in every pod


def secret_file(spec, container, path):
    """The (secret name, key) that `path` in `container` reads, from a required Secret volume."""
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in container["volumeMounts"]:
        prefix = m["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) or path == m["mountPath"]:
            secret = volumes[m["name"]].get("secret")
            assert secret is not None, f"{path} is not on a Secret volume"
            assert not secret.get("optional"), f"{path}: an optional Secret would let the pod start without keys"
            assert m.get("readOnly") is True
            return secret["secretName"], path[len(prefix):]
    raise AssertionError(f"{path} is on no volume")


def test_the_manifests_never_run_plain_tcp():
    templates = pod_templates()
    settings = by_kind("ConfigMap")["lenet5-settings"]["data"]
    assert not keys.is_loopback_endpoint(settings["LENET_BIND"])  # so CURVE is what protects it
    emitted = {s["metadata"]["name"]: s["stringData"] for s in keys.k8s_secrets()}

    def files(name, container):
        spec = templates[name]["spec"]
        (c,) = [c for c in spec["containers"] if c["name"] == container]
        env = {e["name"]: e["value"] for e in c["env"]}
        return {flag: secret_file(spec, c, env[flag]) for flag in env if flag.startswith("LENET_CURVE_")}

    coordinator = files("lenet5-coordinator", "coordinator")
    assert set(coordinator) == {"LENET_CURVE_SECRET_KEY", "LENET_CURVE_AUTHORIZED_DIR"}
    assert coordinator["LENET_CURVE_SECRET_KEY"] == (keys.K8S_COORDINATOR_SECRET, "coordinator.key_secret")
    assert coordinator["LENET_CURVE_AUTHORIZED_DIR"] == (keys.K8S_AUTHORIZED_SECRET, "")
    worker = files("lenet5-worker", "worker")
    assert worker == {"LENET_CURVE_SECRET_KEY": (keys.K8S_WORKER_SECRET, "worker.key_secret"),
                      "LENET_CURVE_SERVER_KEY": (keys.K8S_WORKER_SECRET, "coordinator.key")}
    # What keygen emits is what the pods read.
    for secret, key in list(coordinator.values()) + list(worker.values()):
        assert secret in emitted and (key == "" or key in emitted[secret])
    assert all(k.endswith(".key") for k in emitted[keys.K8S_AUTHORIZED_SECRET])


# ---------------------------------------------------------------- NetworkPolicies


def _selects(selector, labels):
    return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get("matchExpressions")


def reachable(src, dst, port, src_outside=False):
    """Whether the NetworkPolicies let a pod labelled `src` open TCP `port` on one labelled `dst` (in the namespace).

    `src_outside`: the source is in another namespace, so only `dst`'s ingress rules apply.
    """
    policies = list(by_kind("NetworkPolicy").values())

    def allowed(direction, subject, peer):
        rules = [p["spec"] for p in policies if _selects(p["spec"]["podSelector"], subject)
                 and direction.capitalize() in p["spec"]["policyTypes"]]
        if not rules:
            return True  # not isolated in this direction
        key, peers = direction, "from" if direction == "ingress" else "to"
        for spec in rules:
            for rule in spec.get(key, []):
                peer_ok = any("podSelector" in q and "namespaceSelector" not in q and _selects(q["podSelector"], peer)
                              for q in rule.get(peers, []))
                port_ok = any(p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in rule.get("ports", []))
                if peer_ok and port_ok:
                    return True
        return False

    return (src_outside or allowed("egress", src, dst)) and allowed("ingress", dst, src)


def labels_of(name):
    return pod_templates()[name]["metadata"]["labels"]


def test_network_policies_select_existing_pods():
    templates = pod_templates()
    for name, policy in by_kind("NetworkPolicy").items():
        spec = policy["spec"]
        selected = [t for t in templates.values() if _selects(spec["podSelector"], t["metadata"]["labels"])]
        assert selected, f"{name} selects no pod"
        for rule in spec.get("ingress", []) + spec.get("egress", []):
            for peer in rule.get("from", []) + rule.get("to", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert any(_selects(peer["podSelector"], t["metadata"]["labels"]) for t in templates.values()), \
                        f"{name}: peer {peer} matches no pod"
    assert any(p["spec"]["podSelector"] == {} and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
               and not p["spec"].get("ingress") and not p["spec"].get("egress")
               for p in by_kind("NetworkPolicy").values()), "no default deny"


def test_network_policies_allow_exactly_the_needed_paths():
    coordinator, worker, prom = (labels_of(n) for n in ("lenet5-coordinator", "lenet5-worker", "lenet5-prometheus"))
    stranger = {"app.kubernetes.io/name": "something-else"}
    assert reachable(worker, coordinator, 5555)
    assert reachable(prom, coordinator, 9110) and reachable(prom, worker, 9111)
    for src, dst, port in [(stranger, coordinator, 5555), (stranger, coordinator, 9110), (stranger, worker, 9111),
                           (worker, coordinator, 9110), (worker, worker, 9111), (coordinator, worker, 9111),
                           (prom, coordinator, 5555), (stranger, prom, 9090), (worker, prom, 9090),
                           (coordinator, coordinator, 5555)]:
        assert not reachable(src, dst, port), (src, dst, port)
    # From another namespace, whatever its own policies: only the ingress rules here decide.
    for dst, port in [(coordinator, 5555), (coordinator, 9110), (worker, 9111), (prom, 9090)]:
        assert not reachable(stranger, dst, port, src_outside=True), (dst, port)


def test_only_the_coordinator_leaves_the_cluster_and_only_for_https():
    for name, policy in by_kind("NetworkPolicy").items():
        for rule in policy["spec"].get("egress", []):
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    assert policy["spec"]["podSelector"] == {"matchLabels": labels_of("lenet5-coordinator")}, name
                    assert [p["port"] for p in rule["ports"]] == [443], name
                    assert "10.0.0.0/8" in peer["ipBlock"]["except"], name


def test_prometheus_scrapes_services_that_exist():
    config = yaml.safe_load(by_kind("ConfigMap")["lenet5-prometheus-config"]["data"]["prometheus.yml"])
    services = by_kind("Service")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    host, port = jobs["coordinator"]["static_configs"][0]["targets"][0].split(":")
    assert int(port) in [p["port"] for p in services[host]["spec"]["ports"]]
    (dns,) = jobs["workers"]["dns_sd_configs"]
    headless = services[dns["names"][0]]
    assert headless["spec"]["clusterIP"] == "None"  # one A record per pod
    assert _selects({"matchLabels": headless["spec"]["selector"]}, labels_of("lenet5-worker"))
    assert dns["port"] == int(pod_templates()["lenet5-worker"]["metadata"]["annotations"]["prometheus.io/port"])


# ---------------------------------------------------------------- the renderer's limits


def test_renderer_refuses_kustomize_features_it_does_not_implement(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources: []\nreplicas: []\n")
    with pytest.raises(SystemExit, match="replicas"):
        renderer().render(tmp_path)
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatches:\n  - path: p.yaml\n    target: {kind: Job}\n")
    with pytest.raises(SystemExit, match="target"):
        renderer().render(tmp_path)


@pytest.mark.parametrize("patch,error", [
    ("spec:\n  template:\n    spec:\n      containers:\n        - name: w\n          ports: [{containerPort: 1}]\n",
     "no merge rule"),
    ("spec:\n  template:\n    spec:\n      containers:\n        - name: w\n          $patch: replace\n", r"\$patch"),
    ("metadata: {name: other}\n", "matches 0 objects"),
])
def test_renderer_refuses_patches_it_cannot_apply_as_kustomize_does(tmp_path, patch, error):
    head = "apiVersion: apps/v1\nkind: Deployment\n"
    (tmp_path / "d.yaml").write_text(head + "metadata: {name: d}\nspec:\n  template:\n    spec:\n      containers:\n"
                                     "        - {name: w, image: x, ports: [{containerPort: 2}]}\n")
    (tmp_path / "p.yaml").write_text(head + ("" if patch.startswith("metadata") else "metadata: {name: d}\n") + patch)
    (tmp_path / "kustomization.yaml").write_text("resources: [d.yaml]\npatches:\n  - path: p.yaml\n")
    with pytest.raises(SystemExit, match=error):
        renderer().render(tmp_path)


def test_renderer_merges_as_kustomize_does(tmp_path):
    """Patch elements first, in the patch's order, merged by key, then the others; a replaced list; a null."""
    def env(*pairs):
        return [{"name": n, "value": v} for n, v in pairs]

    def deployment(annotations, container):
        return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d", "annotations": annotations},
                "spec": {"template": {"spec": {"containers": [container]}}}}

    def policy(egress):
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p"},
                "spec": {"egress": egress}}

    (tmp_path / "d.yaml").write_text(yaml.safe_dump_all([
        deployment({"a": "1", "b": "2"}, {"name": "w", "image": "x", "env": env(("A", "1"), ("B", "2"), ("C", "3")),
                                          "volumeMounts": [{"name": "v", "mountPath": "/v"}]}),
        policy([{"to": [{"podSelector": {}}]}, {"ports": [{"port": 1}]}])]))
    (tmp_path / "p1.yaml").write_text(yaml.safe_dump(deployment(
        {"b": None}, {"name": "w", "env": env(("N", "new"), ("B", "two")),
                      "volumeMounts": [{"name": "k", "mountPath": "/k", "readOnly": True}]})))
    (tmp_path / "p2.yaml").write_text(yaml.safe_dump(policy([{"ports": [{"port": 3}]}])))
    (tmp_path / "kustomization.yaml").write_text("resources: [d.yaml]\npatches:\n  - path: p1.yaml\n  - path: p2.yaml\n")
    ours = renderer().render(tmp_path)
    (c,) = ours[0]["spec"]["template"]["spec"]["containers"]
    assert ours[0]["metadata"]["annotations"] == {"a": "1"}
    assert c["env"] == env(("N", "new"), ("B", "two"), ("A", "1"), ("C", "3"))
    assert c["volumeMounts"] == [{"name": "k", "mountPath": "/k", "readOnly": True}, {"name": "v", "mountPath": "/v"}]
    assert ours[1]["spec"]["egress"] == [{"ports": [{"port": 3}]}]
    if shutil.which("kubectl") is not None:  # the same rules, by kustomize itself
        out = subprocess.run(["kubectl", "kustomize", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        theirs = {o["kind"]: o for o in yaml.safe_load_all(out.stdout)}
        assert theirs == {o["kind"]: o for o in ours}
