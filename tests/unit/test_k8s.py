"""The Kubernetes manifests, checked as far as is possible offline (no cluster runs here).

Two kustomizations: deploy/k8s, and deploy/k8s-relay (the same objects, plus a relay
per node that the workers use).  Every object, rendered as kustomize renders it, is
validated against the Kubernetes API schema (kubernetes-validate bundles the
schemas); then what no schema checks: selectors, named ports, ConfigMaps, Secrets,
volumes, probes, scrape annotations, that every LENET_* setting is a real flag of
the program that reads it, the "restricted" Pod Security Standard, CURVE in every
pod and on both hops of a relay, and who the NetworkPolicies let reach what.
checkov scans the same renderings in CI (.ci/checkov).
"""

import functools
import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
import zmq.auth

from coordinator import keys

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SETUPS = {"base": K8S, "relay": ROOT / "deploy" / "k8s-relay"}
KUBERNETES_VERSION = "1.30.0"
APPS = ("lenet5-coordinator", "lenet5-worker")  # the pods running this project's code with a metrics port
POD_KINDS = ("Deployment", "Job", "DaemonSet")


def renderer():
    spec = importlib.util.spec_from_file_location("render_k8s", ROOT / ".ci" / "render_k8s.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rendered(setup="base"):
    return renderer().render(SETUPS[setup])


@functools.cache
def _rendered_once(setup):
    return tuple(rendered(setup))


def kustomization(directory=K8S):
    return yaml.safe_load((directory / "kustomization.yaml").read_text())


def objects(directory=K8S):
    """The objects as written in a kustomization's own resource files (not those of a base it renders)."""
    docs = []
    for name in kustomization(directory)["resources"]:
        if (directory / name).is_file():
            docs += [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
    return docs


def source(setup):
    """What the checks read: the files as written for deploy/k8s, the rendering for the overlay."""
    return objects() if setup == "base" else list(_rendered_once(setup))


def by_kind(kind, setup="base"):
    return {o["metadata"]["name"]: o for o in source(setup) if o["kind"] == kind}


def pod_templates(objs=None):
    return {o["metadata"]["name"]: o["spec"]["template"] for o in (objs or objects()) if o["kind"] in POD_KINDS}


def templates_of(setup):
    return pod_templates(source(setup))


def test_every_resource_file_exists_and_parses():
    for directory in SETUPS.values():
        for name in kustomization(directory)["resources"]:
            assert (directory / name).is_file() or (directory / name / "kustomization.yaml").is_file(), name
        for patch in kustomization(directory).get("patches", []):
            assert (directory / patch["path"]).is_file(), patch
    assert {o["kind"] for o in objects()} >= {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Service", "Job",
                                              "Deployment", "NetworkPolicy"}
    assert {o["kind"] for o in objects(SETUPS["relay"])} == {"DaemonSet", "Service", "NetworkPolicy"}


@pytest.mark.parametrize("setup,obj", [(s, o) for s in SETUPS for o in rendered(s)],
                         ids=lambda x: x if isinstance(x, str) else f"{x['kind']}/{x['metadata']['name']}")
def test_schema(setup, obj):
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("setup", SETUPS)
def test_selectors_match_pod_labels(setup):
    templates = templates_of(setup)
    for kind in ("Deployment", "DaemonSet"):  # a Job's selector is generated
        for name, obj in by_kind(kind, setup).items():
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    for name, svc in by_kind("Service", setup).items():
        selected = [t for t in templates.values() if svc["spec"]["selector"].items() <= t["metadata"]["labels"].items()]
        assert selected, f"service {name} selects no pod"
        ports = {p["name"]: p["containerPort"] for t in selected for c in t["spec"]["containers"] for p in c["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"service {name}: no container port named {port['targetPort']}"
            assert ports[port["targetPort"]] == port["port"], f"service {name}: port {port['name']} mismatch"


def probe_port(probe):
    (kind,) = set(probe) & {"httpGet", "tcpSocket", "exec", "grpc"}
    assert kind in ("httpGet", "tcpSocket"), kind
    return probe[kind]["port"]


@pytest.mark.parametrize("setup", SETUPS)
def test_references_probes_resources_and_annotations(setup):
    configmaps, claims = by_kind("ConfigMap", setup), by_kind("PersistentVolumeClaim", setup)
    emitted = {s["metadata"]["name"]: s["stringData"] for s in keys.k8s_secrets()}
    images = {i["name"] for i in kustomization(SETUPS[setup])["images"]}
    for name, template in templates_of(setup).items():
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, name
            if "configMap" in v:
                assert v["configMap"]["name"] in configmaps, name
            if "secret" in v:  # a Secret that --k8s-secrets emits, and keys it holds
                assert v["secret"]["secretName"] in emitted, name
                for item in v["secret"].get("items", []):
                    assert item["key"] in emitted[v["secret"]["secretName"]], (name, item)
        for c in spec["containers"]:
            assert c["image"].split(":")[0] in images, f"{name}: image {c['image']} not managed by kustomization"
            for ref in c.get("envFrom", []):
                assert ref["configMapRef"]["name"] in configmaps, name
            for mount in c.get("volumeMounts", []):
                assert mount["name"] in volumes, name
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe_port(c[probe]) in ports, f"{name}: {probe} port"
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


def container_env(setup, pod, container):
    """A container's LENET_* settings as the process sees them: the ConfigMaps, then `env` over them."""
    (c,) = [c for c in templates_of(setup)[pod]["spec"]["containers"] if c["name"] == container]
    configmaps = by_kind("ConfigMap", setup)
    env = {}
    for ref in c.get("envFrom", []):
        env.update(configmaps[ref["configMapRef"]["name"]]["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", [])})
    return env


@pytest.mark.parametrize("setup", SETUPS)
def test_every_setting_is_a_real_flag(setup):
    from coordinator.__main__ import build_parser as coordinator_parser
    from lenet.cli import env_name
    from worker.__main__ import build_parser as worker_parser

    parsers = (coordinator_parser(), worker_parser())
    known = {env_name(opt) for parser in parsers for action in parser._actions for opt in action.option_strings
             if opt.startswith("--")}
    known.add("LENET_CACHE_DIR")  # read by lenet.data, not a flag
    settings = set(by_kind("ConfigMap", setup)["lenet5-settings"]["data"])
    templates = templates_of(setup)
    extra = {e["name"] for t in templates.values() for c in t["spec"]["containers"] for e in c.get("env", [])}
    assert settings | extra <= known, sorted((settings | extra) - known)
    options = {opt for parser in parsers for action in parser._actions for opt in action.option_strings}
    for t in templates.values():  # flags given on a command line: real ones too
        for c in t["spec"]["containers"]:
            assert {a for a in c.get("command", []) if a.startswith("--")} <= options, c["command"]


@pytest.mark.parametrize("setup", SETUPS)
def test_rendering_sets_namespace_labels_and_pinned_images(setup):
    objs = rendered(setup)
    assert all(o["metadata"].get("namespace") == "lenet5" for o in objs if o["kind"] != "Namespace")
    assert all(o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "lenet5" for o in objs)
    for name, template in pod_templates(objs).items():
        for c in template["spec"]["containers"]:
            image, _, tag = c["image"].partition(":")
            assert tag and tag != "latest", f"{name}: image {c['image']} is not pinned"


@pytest.mark.parametrize("setup", SETUPS)
def test_kustomize_renders_the_same_when_kubectl_is_available(setup):
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not installed: the checks above ran on .ci/render_k8s.py's rendering")
    out = subprocess.run(["kubectl", "kustomize", str(SETUPS[setup])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=lambda o: (o["kind"], o["metadata"]["name"]))
    ours = sorted(rendered(setup), key=lambda o: (o["kind"], o["metadata"]["name"]))
    assert theirs == ours


# ---------------------------------------------------------------- the restricted Pod Security Standard


def test_namespace_enforces_the_restricted_profile():
    labels = by_kind("Namespace")["lenet5"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("setup,name", [("base", "lenet5-coordinator"), ("base", "lenet5-worker"),
                                        ("base", "lenet5-prometheus"), ("relay", "lenet5-relay"),
                                        ("relay", "lenet5-worker")])
def test_pods_pass_the_restricted_profile(setup, name):
    spec = templates_of(setup)[name]["spec"]
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


@pytest.mark.parametrize("directory", SETUPS.values(), ids=SETUPS)
def test_images_without_a_digest_say_why_next_to_the_resource(directory):
    for o in objects(directory):
        if o["kind"] in POD_KINDS:
            skips = [v for k, v in o["metadata"].get("annotations", {}).items() if k.startswith("checkov.io/skip")]
            digest_skip = [s for s in skips if s.startswith("CKV_K8S_43=")]
            assert digest_skip and len(digest_skip[0]) > len("CKV_K8S_43=") + 20, o["metadata"]["name"]


# ---------------------------------------------------------------- CURVE in every pod


def secret_file(spec, container, path):
    """The (secret name, key) that `path` in `container` reads, from a required Secret volume.

    For a directory, the key is "" and, if the volume lists `items`, the keys it holds are
    only those: ("name", ("a.key",)).
    """
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in container["volumeMounts"]:
        prefix = m["mountPath"].rstrip("/") + "/"
        if path.startswith(prefix) or path == m["mountPath"]:
            secret = volumes[m["name"]].get("secret")
            assert secret is not None, f"{path} is not on a Secret volume"
            assert not secret.get("optional"), f"{path}: an optional Secret would let the pod start without keys"
            assert m.get("readOnly") is True
            relative = path[len(prefix):]
            items = {i["path"]: i["key"] for i in secret.get("items", [])}
            if not items:
                return secret["secretName"], relative
            if relative == "":
                return secret["secretName"], tuple(sorted(items.values()))
            assert relative in items, f"{path}: not among the volume's items"
            return secret["secretName"], items[relative]
    raise AssertionError(f"{path} is on no volume")


def curve_files(setup, name, container):
    spec = templates_of(setup)[name]["spec"]
    (c,) = [c for c in spec["containers"] if c["name"] == container]
    env = {e["name"]: e["value"] for e in c["env"]}
    return {flag: secret_file(spec, c, env[flag]) for flag in env if flag.startswith("LENET_CURVE_")}


def test_the_manifests_never_run_plain_tcp():
    settings = by_kind("ConfigMap")["lenet5-settings"]["data"]
    assert not keys.is_loopback_endpoint(settings["LENET_BIND"])  # so CURVE is what protects it
    emitted = {s["metadata"]["name"]: s["stringData"] for s in keys.k8s_secrets()}

    coordinator = curve_files("base", "lenet5-coordinator", "coordinator")
    assert set(coordinator) == {"LENET_CURVE_SECRET_KEY", "LENET_CURVE_AUTHORIZED_DIR"}
    assert coordinator["LENET_CURVE_SECRET_KEY"] == (keys.K8S_COORDINATOR_SECRET, "coordinator.key_secret")
    assert coordinator["LENET_CURVE_AUTHORIZED_DIR"] == (keys.K8S_AUTHORIZED_SECRET, "")
    worker = curve_files("base", "lenet5-worker", "worker")
    assert worker == {"LENET_CURVE_SECRET_KEY": (keys.K8S_WORKER_SECRET, "worker.key_secret"),
                      "LENET_CURVE_SERVER_KEY": (keys.K8S_WORKER_SECRET, "coordinator.key")}
    # What keygen emits is what the pods read.
    for secret, key in list(coordinator.values()) + list(worker.values()):
        assert secret in emitted and (key == "" or key in emitted[secret])
    assert all(k.endswith(".key") for k in emitted[keys.K8S_AUTHORIZED_SECRET])


def public_key(tmp_path, text):
    path = tmp_path / "k"
    path.write_text(text)
    return zmq.auth.load_certificate(str(path))[0]


def test_curve_on_both_hops_of_the_relay(tmp_path):
    """The relay uses the workers' pair both ways: the coordinator admits it; its workers know its public half."""
    emitted = {s["metadata"]["name"]: s["stringData"] for s in keys.k8s_secrets()}
    relay = curve_files("relay", "lenet5-relay", "relay")
    assert relay == {"LENET_CURVE_SECRET_KEY": (keys.K8S_WORKER_SECRET, "worker.key_secret"),
                     "LENET_CURVE_SERVER_KEY": (keys.K8S_WORKER_SECRET, "coordinator.key"),
                     # worker.key and nothing else, whatever else the Secret holds
                     "LENET_CURVE_AUTHORIZED_DIR": (keys.K8S_AUTHORIZED_SECRET, ("worker.key",))}
    worker = curve_files("relay", "lenet5-worker", "worker")
    assert worker == {"LENET_CURVE_SECRET_KEY": (keys.K8S_WORKER_SECRET, "worker.key_secret"),
                      "LENET_CURVE_SERVER_KEY": (keys.K8S_AUTHORIZED_SECRET, "worker.key")}
    # In what --k8s-secrets emits, the key the workers take for the relay's is the relay's public
    # key, and the relay admits the workers' key.
    relay_public = public_key(tmp_path, emitted[keys.K8S_WORKER_SECRET]["worker.key_secret"])
    assert public_key(tmp_path, emitted[keys.K8S_AUTHORIZED_SECRET]["worker.key"]) == relay_public
    # The relay listens beyond loopback (so CURVE is what protects it), and never with --insecure.
    env = container_env("relay", "lenet5-relay", "relay")
    assert not keys.is_loopback_endpoint(env["LENET_LISTEN"]) and "LENET_INSECURE" not in env
    (c,) = templates_of("relay")["lenet5-relay"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "worker", "--relay"]


# ---------------------------------------------------------------- relays: one per node, the workers' own


def test_the_overlay_adds_to_deploy_k8s_and_keeps_its_settings():
    base, overlay = kustomization(K8S), kustomization(SETUPS["relay"])
    assert overlay["resources"][0] == "../k8s"
    for field in ("namespace", "labels", "images"):  # they apply to the objects the overlay adds
        assert overlay[field] == base[field], field
    ids = {(o["kind"], o["metadata"]["name"]) for o in rendered("relay")}
    assert {(o["kind"], o["metadata"]["name"]) for o in rendered("base")} <= ids  # nothing removed
    # The label on exactly what the overlay adds, of the kinds the README's command deletes to go back:
    # kubectl -n lenet5 delete daemonset,service,networkpolicy -l app.kubernetes.io/component=relay
    marked = {(o["kind"], o["metadata"]["name"]) for o in rendered("relay")
              if o["metadata"]["labels"].get("app.kubernetes.io/component") == "relay"}
    assert marked == {(o["kind"], o["metadata"]["name"]) for o in objects(SETUPS["relay"])}
    assert {kind for kind, _ in marked} == {"DaemonSet", "Service", "NetworkPolicy"}
    settings = {k: v for k, v in by_kind("ConfigMap", "relay")["lenet5-settings"]["data"].items()}
    base_settings = by_kind("ConfigMap")["lenet5-settings"]["data"]
    # One member per node now: the coordinator starts with the first relay, whatever the cluster's size.
    assert settings.pop("LENET_MIN_WORKERS") == "1" and base_settings["LENET_MIN_WORKERS"] == "8"
    assert settings == {k: v for k, v in base_settings.items() if k != "LENET_MIN_WORKERS"}


def test_one_relay_per_node_and_workers_reach_the_relay_of_their_own():
    relay = by_kind("DaemonSet", "relay")["lenet5-relay"]
    service = by_kind("Service", "relay")["lenet5-relay"]
    assert service["spec"]["internalTrafficPolicy"] == "Local"  # a worker's connection stays on its node
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP" and "clusterIP" not in service["spec"]
    assert service["spec"]["selector"].items() <= relay["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    # Upstream the relay reaches the coordinator's Service; downstream it listens on its Service's port.
    env = container_env("relay", "lenet5-relay", "relay")
    host, upstream = env["LENET_CONNECT"].removeprefix("tcp://").split(":")
    assert int(upstream) in [p["port"] for p in by_kind("Service", "relay")[host]["spec"]["ports"]]
    assert host == "lenet5-coordinator"
    assert env["LENET_LISTEN"] == f"tcp://0.0.0.0:{port['port']}"
    # The workers connect to the relay's Service (their `env` overrides the ConfigMap's coordinator).
    worker = container_env("relay", "lenet5-worker", "worker")
    assert worker["LENET_CONNECT"] == f"tcp://{service['metadata']['name']}:{port['port']}"
    # Probes: no metrics port on a relay, so a TCP probe on its listening port.
    (c,) = relay["spec"]["template"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named == {port["targetPort"]: port["port"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert named[c[probe]["tcpSocket"]["port"]] == port["port"], probe


# ---------------------------------------------------------------- NetworkPolicies


def _selects(selector, labels):
    return selector.get("matchLabels", {}).items() <= labels.items() and not selector.get("matchExpressions")


def reachable(src, dst, port, src_outside=False, setup="base"):
    """Whether the NetworkPolicies let a pod labelled `src` open TCP `port` on one labelled `dst` (in the namespace).

    `src_outside`: the source is in another namespace, so only `dst`'s ingress rules apply.
    """
    policies = list(by_kind("NetworkPolicy", setup).values())

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


def labels_of(name, setup="base"):
    return templates_of(setup)[name]["metadata"]["labels"]


@pytest.mark.parametrize("setup", SETUPS)
def test_network_policies_select_existing_pods(setup):
    templates = templates_of(setup)
    for name, policy in by_kind("NetworkPolicy", setup).items():
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
               for p in by_kind("NetworkPolicy", setup).values()), "no default deny"


@pytest.mark.parametrize("setup", SETUPS)
def test_network_policy_ports_are_the_containers_ports(setup):
    """A rule's port is one the pods it protects (ingress) or reaches (egress, pod peers) listen on."""
    templates = templates_of(setup)

    def ports(selector):
        return {p["containerPort"] for t in templates.values() if _selects(selector, t["metadata"]["labels"])
                for c in t["spec"]["containers"] for p in c["ports"]}

    for name, policy in by_kind("NetworkPolicy", setup).items():
        spec = policy["spec"]
        for rule in spec.get("ingress", []):
            assert {p["port"] for p in rule["ports"]} <= ports(spec["podSelector"]), name
        for rule in spec.get("egress", []):
            for peer in rule["to"]:
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    assert {p["port"] for p in rule["ports"]} <= ports(peer["podSelector"]), name


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


def test_with_relays_workers_reach_their_relay_and_only_relays_the_coordinator():
    names = ("lenet5-coordinator", "lenet5-worker", "lenet5-prometheus", "lenet5-relay")
    coordinator, worker, prom, relay = (labels_of(n, "relay") for n in names)
    stranger = {"app.kubernetes.io/name": "something-else"}

    def can(src, dst, port, **kw):
        return reachable(src, dst, port, setup="relay", **kw)

    assert can(worker, relay, 5556) and can(relay, coordinator, 5555)
    assert can(prom, coordinator, 9110) and can(prom, worker, 9111)  # metrics as before
    for src, dst, port in [(worker, coordinator, 5555),  # the workers' egress now goes to the relay only
                           (stranger, relay, 5556), (coordinator, relay, 5556), (prom, relay, 5556),
                           (relay, relay, 5556), (relay, worker, 9111), (relay, coordinator, 9110),
                           (relay, prom, 9090), (stranger, coordinator, 5555), (worker, coordinator, 9110)]:
        assert not can(src, dst, port), (src, dst, port)
    for dst, port in [(relay, 5556), (coordinator, 5555), (worker, 9111)]:
        assert not can(stranger, dst, port, src_outside=True), (dst, port)


@pytest.mark.parametrize("setup", SETUPS)
def test_only_the_coordinator_leaves_the_cluster_and_only_for_https(setup):
    for name, policy in by_kind("NetworkPolicy", setup).items():
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
