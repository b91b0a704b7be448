"""A small kustomize for the tests: renders ``deploy/k8s`` overlays without a ``kustomize`` binary.

It implements exactly the kustomization features ``deploy/k8s`` uses, the way kustomize v5 does, and
refuses every other field by name (so a manifest that starts using one fails here instead of rendering
differently from ``kubectl apply -k``):

- ``resources``: YAML files (several documents each) and directories holding a kustomization;
- ``configMapGenerator`` with ``files`` and ``literals``: a ConfigMap whose name gets kustomize's content
  hash suffix, and every reference to it in pod specs renamed to match;
- ``patches`` with ``path``: strategic-merge patches, lists merged by the Kubernetes patch merge keys of
  the fields listed in ``MERGE_KEYS`` (other lists are replaced, as Kubernetes does for lists without one);
- ``namespace``: set on every namespaced object.

``tests/deploy/test_kustomize.py`` checks this renderer against ``kubectl kustomize`` wherever kubectl is
installed, object for object.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = {"apiVersion", "kind", "namespace", "resources", "configMapGenerator", "patches"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PriorityClass", "IngressClass", "RuntimeClass"}
# Kubernetes' x-kubernetes-patch-merge-key of each list field deploy/k8s patches; a "ports" element is keyed
# by containerPort in a container and by port in a Service
MERGE_KEYS: dict[str, Callable[[Obj], str]] = {
    "containers": lambda e: "name",
    "initContainers": lambda e: "name",
    "env": lambda e: "name",
    "envFrom": lambda e: "prefix",
    "volumes": lambda e: "name",
    "volumeMounts": lambda e: "mountPath",
    "imagePullSecrets": lambda e: "name",
    "ports": lambda e: "containerPort" if "containerPort" in e else "port",
}
_SMP_DIRECTIVES = ("$patch", "$retainKeys", "$setElementOrder", "$deleteFromPrimitiveList")


class KustomizeError(ValueError):
    """A kustomization this renderer cannot render as kustomize would; names the file and the field."""


def render(directory: Path) -> list[Obj]:
    """The objects ``kubectl kustomize directory`` prints (in kustomization order, not kustomize's sort)."""
    directory = Path(directory)
    path = next((directory / n for n in KUSTOMIZATION_FILES if (directory / n).is_file()), None)
    if path is None:
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - SUPPORTED_FIELDS
    if unknown:
        raise KustomizeError(f"{path}: fields {sorted(unknown)} are not supported by tests/deploy/kustomize.py; "
                             "extend it (and its kubectl cross-check) or use the supported ones")
    objects: list[Obj] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(render(target))
        elif target.is_file():
            objects.extend(d for d in yaml.safe_load_all(target.read_text()) if d is not None)
        else:
            raise KustomizeError(f"{path}: resource {entry!r} does not exist")
    renames = {}
    for generator in spec.get("configMapGenerator", []):
        config_map = _generate_config_map(directory, path, generator)
        renames[generator["name"]] = config_map["metadata"]["name"]
        objects.append(config_map)
    for patch in spec.get("patches", []):
        _apply_patch_file(objects, directory, path, patch)
    if "namespace" in spec:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj.setdefault("metadata", {})["namespace"] = spec["namespace"]
    for obj in objects:
        _rename_config_map_refs(obj, renames)
    return objects


# -- configMapGenerator ---------------------------------------------------------------------------------
def config_map_hash(data: dict[str, str]) -> str:
    """kustomize's name suffix of a generated ConfigMap: the sha256 of the Go JSON encoding of
    ``{"data", "kind", "name": ""}`` (keys sorted, ``<>&`` escaped), first 10 hex digits with 0, 1, 3, a,
    e swapped for letters so the suffix never reads as a number."""
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": ""}, sort_keys=True, separators=(",", ":"),
                         ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode("utf-8")).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _generate_config_map(directory: Path, path: Path, generator: Obj) -> Obj:
    unknown = set(generator) - {"name", "files", "literals"}
    if unknown:
        raise KustomizeError(f"{path}: configMapGenerator {generator.get('name')!r}: {sorted(unknown)} not supported")
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, sep, file = entry.partition("=")
        file = file if sep else key
        source = directory / file
        if not source.is_file():
            raise KustomizeError(f"{path}: configMapGenerator file {file!r} does not exist")
        data[key if sep else source.name] = source.read_text()
    for entry in generator.get("literals", []):
        key, sep, value = entry.partition("=")
        if not sep:
            raise KustomizeError(f"{path}: literal {entry!r} is not KEY=VALUE")
        data[key] = value
    name = f"{generator['name']}-{config_map_hash(data)}"
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def pod_spec(obj: Obj) -> Obj | None:
    """The pod spec inside a workload object, or None for objects that run no pods."""
    kind = obj.get("kind")
    if kind == "Pod":
        return obj.get("spec")
    if kind == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        return obj["spec"]["template"]["spec"]
    return None


def _rename_config_map_refs(obj: Obj, renames: dict[str, str]) -> None:
    spec = pod_spec(obj)
    if spec is None or not renames:
        return
    for volume in spec.get("volumes", []):
        if "configMap" in volume:
            _rename(volume["configMap"], renames)
        for source in volume.get("projected", {}).get("sources", []):
            if "configMap" in source:
                _rename(source["configMap"], renames)
    for container in spec.get("containers", []) + spec.get("initContainers", []):
        for env in container.get("env", []):
            if "configMapKeyRef" in env.get("valueFrom", {}):
                _rename(env["valueFrom"]["configMapKeyRef"], renames)
        for env_from in container.get("envFrom", []):
            if "configMapRef" in env_from:
                _rename(env_from["configMapRef"], renames)


def _rename(ref: Obj, renames: dict[str, str]) -> None:
    ref["name"] = renames.get(ref["name"], ref["name"])


# -- patches ------------------------------------------------------------------------------------------------
def _apply_patch_file(objects: list[Obj], directory: Path, path: Path, patch: Obj) -> None:
    if set(patch) != {"path"}:
        raise KustomizeError(f"{path}: only `patches: - path: FILE` (strategic merge) is supported, got {patch}")
    for doc in yaml.safe_load_all((directory / patch["path"]).read_text()):
        if doc is None:
            continue
        key = (doc.get("apiVersion"), doc.get("kind"), doc.get("metadata", {}).get("name"))
        matches = [i for i, o in enumerate(objects)
                   if (o.get("apiVersion"), o.get("kind"), o.get("metadata", {}).get("name")) == key]
        if len(matches) != 1:
            raise KustomizeError(f"{directory / patch['path']}: patch target {key} matches {len(matches)} objects")
        objects[matches[0]] = strategic_merge(objects[matches[0]], doc)


def strategic_merge(original: Any, patch: Any, field: str = "") -> Any:
    """``patch`` merged into ``original`` as a Kubernetes strategic-merge patch: maps merge recursively,
    ``null`` deletes a key, lists in ``MERGE_KEYS`` merge element-wise by their key (patch elements first,
    then the original's others, as kustomize orders them), any other list or scalar is replaced."""
    if isinstance(patch, dict):
        directives = [k for k in patch if k in _SMP_DIRECTIVES]
        if directives:
            raise KustomizeError(f"strategic-merge directives {directives} are not supported")
        if not isinstance(original, dict):
            return {k: v for k, v in copy.deepcopy(patch).items() if v is not None}
        merged = copy.deepcopy(original)
        for key, value in patch.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = strategic_merge(merged.get(key), value, key)
        return merged
    if isinstance(patch, list) and field in MERGE_KEYS and isinstance(original, list) \
            and all(isinstance(e, dict) for e in original + patch):
        def key_of(element: Obj) -> Any:
            return element.get(MERGE_KEYS[field](element))

        by_key = {key_of(e): e for e in original}
        patched = [strategic_merge(by_key.get(key_of(p)), p, field + "[]") for p in patch]
        keys = {key_of(p) for p in patch}
        return patched + [copy.deepcopy(e) for e in original if key_of(e) not in keys]
    return copy.deepcopy(patch)
