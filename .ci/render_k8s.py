#!/usr/bin/env python3
"""Render a kustomization as `kubectl kustomize` would, for the features deploy/k8s uses.

    python .ci/render_k8s.py deploy/k8s > rendered.yaml
    python .ci/render_k8s.py deploy/k8s-relay > rendered.yaml

No kubectl or kustomize binary is needed (CI need not have them): it reads the
`resources` in order (a file, or a directory holding a kustomization, rendered
first), applies the `patches` given by `path` (strategic merge), sets `namespace`
on namespaced objects, adds the `labels` pairs to every object's metadata
(kustomize's default: not to selectors or templates) and applies `images` to
containers. A kustomization or patch using anything else is refused, so this
cannot silently render something kubectl would render differently.
tests/unit/test_k8s.py compares it with `kubectl kustomize` where kubectl exists.
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "patches", "images"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass"}
# Strategic merge: the lists merged element by element, by this key (their patchMergeKey in the
# Kubernetes API), and the lists a patch replaces whole (no patchStrategy). A patch that reaches
# any other list of the object it patches is refused: its merge rule is not implemented here.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}
REPLACED = {"egress", "ingress", "command", "args"}


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def _refuse_directives(patch: object, where: str) -> None:
    if isinstance(patch, dict):
        for key, value in patch.items():
            if isinstance(key, str) and key.startswith("$"):
                raise SystemExit(f"render_k8s: {where}: the patch directive {key} is not supported")
            _refuse_directives(value, where)
    elif isinstance(patch, list):
        for value in patch:
            _refuse_directives(value, where)


def _merge(target: dict, patch: dict, where: str) -> None:
    """Strategic merge of `patch` into `target` (in place), as kustomize does for the lists above.

    A merged list holds the patch's elements first, in the patch's order (each merged into the
    target's element of the same key, if any), then the target's other elements, as kubectl
    kustomize orders them.
    """
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif key not in target:
            target[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(target[key], dict):
            _merge(target[key], value, f"{where}.{key}")
        elif isinstance(value, list) and isinstance(target[key], list):
            if key in REPLACED:
                target[key] = copy.deepcopy(value)
            elif key in MERGE_KEYS:
                field = MERGE_KEYS[key]
                old = {item[field]: item for item in target[key]}
                merged = []
                for item in value:
                    if item[field] in old:
                        _merge(old[item[field]], item, f"{where}.{key}[{item[field]}]")
                        merged.append(old[item[field]])
                    else:
                        merged.append(copy.deepcopy(item))
                given = {item[field] for item in value}
                target[key] = merged + [item for item in target[key] if item[field] not in given]
            else:
                raise SystemExit(f"render_k8s: {where}.{key}: no merge rule for this list: "
                                 "render it with kubectl kustomize")
        else:
            target[key] = copy.deepcopy(value)


def _patch(objects: list[dict], path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if len(docs) != 1:
        raise SystemExit(f"render_k8s: patch {path.name} holds {len(docs)} objects: give one per file")
    (patch,) = docs
    _refuse_directives(patch, path.name)
    meta = patch["metadata"]
    matches = [o for o in objects if o["apiVersion"] == patch["apiVersion"] and o["kind"] == patch["kind"]
               and o["metadata"]["name"] == meta["name"]
               and meta.get("namespace", o["metadata"].get("namespace")) == o["metadata"].get("namespace")]
    if len(matches) != 1:
        raise SystemExit(f"render_k8s: patch {path.name} matches {len(matches)} objects, not one")
    _merge(matches[0], patch, f"{patch['kind']}/{meta['name']}")


def render(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise SystemExit(f"render_k8s: kustomization uses {sorted(unsupported)}: render it with kubectl kustomize")
    objects = []
    for name in kustomization["resources"]:
        if (directory / name).is_dir():
            objects += render(directory / name)
        else:
            objects += [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise SystemExit(f"render_k8s: patches with {sorted(set(entry) - {'path'})} are not supported "
                             "(only `path` to a strategic merge patch): render it with kubectl kustomize")
        _patch(objects, directory / entry["path"])
    labels: dict[str, str] = {}
    for entry in kustomization.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise SystemExit("render_k8s: labels with includeSelectors/includeTemplates are not supported")
        labels.update(entry["pairs"])
    images = {i["name"]: i for i in kustomization.get("images", [])}
    for obj in objects:
        meta = obj.setdefault("metadata", {})
        if "namespace" in kustomization and obj["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = kustomization["namespace"]
        if labels:
            meta["labels"] = {**meta.get("labels", {}), **labels}
        pod = obj.get("spec", {}).get("template", {}).get("spec", {})
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            rule = images.get(_image_name(container["image"]))
            if rule:
                container["image"] = f"{rule.get('newName', rule['name'])}:{rule['newTag']}"
    return objects


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: render_k8s.py KUSTOMIZATION_DIR")
    sys.stdout.write(yaml.safe_dump_all(render(Path(sys.argv[1])), sort_keys=False))
