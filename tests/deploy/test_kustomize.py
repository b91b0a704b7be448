"""tests/deploy/kustomize.py renders as kustomize does: its pieces on their own, and whole overlays against
``kubectl kustomize`` where kubectl is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.helpers import K8S, OVERLAYS
from tests.deploy.kustomize import KustomizeError, config_map_hash, render, strategic_merge


def test_config_map_hash_is_kustomizes() -> None:
    # printed by kustomize v5.5.0 (kubectl 1.32) for `configMapGenerator: [{name: cfg, files: [a.toml]}]`
    # with a.toml holding "x = 1\n": the ConfigMap is named cfg-257h22dk89
    assert config_map_hash({"a.toml": "x = 1\n"}) == "257h22dk89"
    assert config_map_hash({"a.toml": "x = 2\n"}) != "257h22dk89"


def test_strategic_merge_merges_keyed_lists_and_replaces_the_others() -> None:
    base = {"spec": {
        "containers": [{"name": "a", "image": "i:1", "args": ["x", "y"],
                        "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                        "resources": {"limits": {"cpu": "1", "memory": "1Gi"}}},
                       {"name": "b", "image": "j:1"}],
        "tolerations": [{"key": "k1"}],
        "nodeSelector": {"zone": "a"},
    }}
    patch = {"spec": {
        "containers": [{"name": "a", "args": ["z"], "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                        "resources": {"limits": {"nvidia.com/gpu": 1}}}],
        "tolerations": [{"key": "k2"}],
        "nodeSelector": None,
    }}
    merged = strategic_merge(base, patch)
    a, b = merged["spec"]["containers"]
    assert (a["name"], a["image"], a["args"]) == ("a", "i:1", ["z"])  # scalar lists replaced
    # keyed list: the patch's elements first, merged with the base's, then the base's others
    assert a["env"] == [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}, {"name": "A", "value": "1"}]
    assert a["resources"]["limits"] == {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": 1}
    assert b == {"name": "b", "image": "j:1"}
    assert merged["spec"]["tolerations"] == [{"key": "k2"}]  # no merge key: replaced
    assert "nodeSelector" not in merged["spec"]  # null deletes
    assert base["spec"]["containers"][0]["args"] == ["x", "y"]  # inputs untouched
    with pytest.raises(KustomizeError, match=re.escape("$patch")):
        strategic_merge(base, {"spec": {"containers": [{"name": "a", "$patch": "delete"}]}})


def test_generated_config_maps_are_renamed_in_references_and_namespaced(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("x = 1\n")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"template": {"spec": {
            "containers": [{"name": "c", "image": "i", "env": [
                {"name": "E", "valueFrom": {"configMapKeyRef": {"name": "env", "key": "k"}}}]}],
            "volumes": [{"name": "v", "configMap": {"name": "cfg"}}]}}}}))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "namespace": "ns", "resources": ["job.yaml"],
        "configMapGenerator": [{"name": "cfg", "files": ["a.toml"]}, {"name": "env", "literals": ["k=v"]}]}))
    job, cfg, env = render(tmp_path)
    assert cfg == {"apiVersion": "v1", "kind": "ConfigMap", "data": {"a.toml": "x = 1\n"},
                   "metadata": {"name": "cfg-257h22dk89", "namespace": "ns"}}
    spec = job["spec"]["template"]["spec"]
    assert spec["volumes"][0]["configMap"]["name"] == "cfg-257h22dk89"
    assert spec["containers"][0]["env"][0]["valueFrom"]["configMapKeyRef"]["name"] == env["metadata"]["name"]
    assert env["metadata"]["name"].startswith("env-") and job["metadata"]["namespace"] == "ns"


def test_unsupported_kustomization_fields_are_refused(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("images:\n  - name: seekrec\n    newTag: x\n")
    with pytest.raises(KustomizeError, match="images"):
        render(tmp_path)


def _kubectl_kustomize() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the renderer is checked against `kubectl kustomize` where it is")
    version = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    found = re.search(r"Kustomize Version: v(\d+)", version)
    if found is None or int(found.group(1)) < 5:
        pytest.skip(f"kubectl's kustomize is older than v5: {version.strip()!r}")
    return kubectl


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_render_equals_kubectl_kustomize(overlay: str) -> None:
    kubectl = _kubectl_kustomize()
    out = subprocess.run([kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr

    def key(obj: dict) -> tuple[str, str]:
        return obj["kind"], obj["metadata"]["name"]

    theirs = sorted((d for d in yaml.safe_load_all(out.stdout) if d), key=key)
    ours = sorted(render(K8S / overlay), key=key)
    assert [key(o) for o in ours] == [key(o) for o in theirs]
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine == reference, f"{overlay}: {key(mine)} renders differently from kubectl kustomize"
