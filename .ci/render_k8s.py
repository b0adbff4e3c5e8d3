#!/usr/bin/env python3
"""Render a kustomization as `kubectl kustomize` would, for the features deploy/k8s uses.

    python .ci/render_k8s.py deploy/k8s > rendered.yaml

No kubectl or kustomize binary is needed (CI has neither): it reads the `resources`
files in order, sets `namespace` on namespaced objects, adds the `labels` pairs to
every object's metadata (kustomize's default: not to selectors or templates) and
applies `images` to containers. A kustomization using anything else is refused, so
this cannot silently render something kubectl would render differently.
tests/unit/test_k8s.py compares it with `kubectl kustomize` where kubectl exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "resources", "images"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "ClusterRole", "ClusterRoleBinding", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass"}


def _image_name(image: str) -> str:
    name = image.split("@", 1)[0]
    return name.rsplit(":", 1)[0] if ":" in name.rsplit("/", 1)[-1] else name


def render(directory: Path) -> list[dict]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unsupported = set(kustomization) - SUPPORTED
    if unsupported:
        raise SystemExit(f"render_k8s: kustomization uses {sorted(unsupported)}: render it with kubectl kustomize")
    objects = []
    for name in kustomization["resources"]:
        objects += [d for d in yaml.safe_load_all((directory / name).read_text()) if d]
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
