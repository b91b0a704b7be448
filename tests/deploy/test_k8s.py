"""deploy/k8s: every overlay renders, validates against the Kubernetes API schemas with unknown fields
rejected, and runs real seekrec commands whose paths, ports, probes and references fit together."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from seekrec import __version__
from seekrec.data.schema import MANIFEST_FILE
from seekrec.registry.pointer import CURRENT_FILE
from seekrec.training.run_dir import RESULTS_FILE
from tests.deploy.helpers import (
    EXTERNAL_SECRETS,
    K8S,
    OVERLAYS,
    REPO,
    WAIT_SCRIPT,
    SeekrecCommand,
    check_loop,
    container_env,
    expand,
    parse_seekrec,
    parse_torchrun,
    paths_used,
)
from tests.deploy.kustomize import pod_spec, render

# the oldest Kubernetes these manifests are written for, and the newest schemas the validator ships
K8S_VERSIONS = ("1.28", kubernetes_validate.utils.latest_version())
COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
# which workload runs which step of the loop (tests/deploy/helpers.py LOOP_ROLES)
ROLES = {"seekrec-data": "data", "seekrec-train": "train", "seekrec-publish": "publish",
         "seekrec-server": "server", "seekrec-online-trainer": "online-trainer"}


@functools.cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    return tuple(render(K8S / overlay))


def one(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def config_maps(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == "ConfigMap"}


def workloads(objects: tuple[dict[str, Any], ...]) -> list[dict[str, Any]]:
    return [o for o in objects if pod_spec(o) is not None]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def mount_for(container: dict[str, Any], path: Path) -> dict[str, Any]:
    """The volume mount that holds ``path`` in ``container`` (the deepest one)."""
    mounts = [m for m in container.get("volumeMounts", [])
              if path == Path(m["mountPath"]) or Path(m["mountPath"]) in path.parents]
    assert mounts, f"container {container['name']}: {path} is on no volume mount (it would vanish with the pod)"
    return max(mounts, key=lambda m: len(m["mountPath"]))


class Checked:
    """Every container of an overlay, classified and checked; the loop's seekrec commands by role."""

    def __init__(self, objects: tuple[dict[str, Any], ...], tmp: Path) -> None:
        self.objects, self.tmp = objects, tmp
        self.loop: dict[str, SeekrecCommand] = {}
        self.waits: dict[str, list[Path]] = {}  # workload -> files its init containers wait for
        self.torchrun: dict[str, Any] = {}
        for workload in workloads(objects):
            spec = pod_spec(workload)
            for container in spec.get("initContainers", []) + spec["containers"]:
                self._check(workload, spec, container)

    def _check(self, workload: dict[str, Any], spec: dict[str, Any], container: dict[str, Any]) -> None:
        name = workload["metadata"]["name"]
        if not container["image"].startswith("seekrec:"):
            assert name == "seekrec-redis" and container["image"].startswith("redis:"), \
                f"{name}/{container['name']}: unexpected image {container['image']}"
            return
        if container["name"].startswith("wait-for-"):
            command = container["command"]
            assert command[:3] == ["sh", "-c", WAIT_SCRIPT] and len(command) == 4 and "args" not in container, \
                f"{name}/{container['name']}: a wait container runs the shared wait loop on one file, got {command}"
            mount_for(container, Path(command[3]))
            self.waits.setdefault(name, []).append(Path(command[3]))
            return
        env = container_env(container, config_maps(self.objects), {COMPLETION_INDEX: "0"})
        argv = [expand(a, env) for a in container.get("args", [])]
        if container.get("command") == ["torchrun"]:
            torchrun, argv = parse_torchrun(argv)
            self.torchrun[name] = (torchrun, container, env)
        else:
            assert "command" not in container, \
                f"{name}/{container['name']}: seekrec containers keep the image's ENTRYPOINT (seekrec)"
        command = parse_seekrec(argv, lambda path: self._config_file(container, spec, path))
        for path, writes in paths_used(command):
            mount = mount_for(container, Path(path))
            assert not (writes and mount.get("readOnly")), f"{name}: `seekrec {command.name}` writes {path}, " \
                                                           f"mounted read-only at {mount['mountPath']}"
        assert name in ROLES and ROLES[name] not in self.loop, f"{name}: unexpected seekrec workload"
        self.loop[ROLES[name]] = command

    def _config_file(self, container: dict[str, Any], spec: dict[str, Any], path: str) -> Path:
        """The file a ConfigMap volume puts at ``path``, written out for the command's config loader."""
        mount = mount_for(container, Path(path))
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        assert "configMap" in volume, f"--config {path} is not on a ConfigMap volume"
        data = config_maps(self.objects)[volume["configMap"]["name"]]["data"]
        key = str(Path(path).relative_to(mount["mountPath"]))
        assert key in data, f"--config {path}: ConfigMap {volume['configMap']['name']} has no key {key!r}"
        local = self.tmp / key
        local.write_text(data[key])
        return local


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Checked:
    return Checked(rendered(request.param), tmp_path_factory.mktemp(request.param.replace("/", "-")))


# -- schemas ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("name", OVERLAYS)
def test_every_object_validates_strictly_against_the_kubernetes_schemas(name: str, version: str) -> None:
    objects = rendered(name)
    assert {o["kind"] for o in objects} >= {"Namespace", "PersistentVolumeClaim", "ConfigMap", "Deployment",
                                            "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job"}
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {obj['kind']} {obj['metadata']['name']} at {'.'.join(map(str, exc.path))}: "
                        f"{exc.message} (Kubernetes {version})")


def test_the_strict_schemas_reject_unknown_and_missing_fields() -> None:
    """The validation above would catch a misspelt field deep in a pod spec, or a missing required one."""
    job = one(rendered("base"), "Job", "seekrec-train")
    typo = {**job, "spec": {**job["spec"], "completionMod": "Indexed"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="completionMod"):
        kubernetes_validate.validate(typo, K8S_VERSIONS[0], strict=True)
    container = dict(pod_spec(job)["containers"][0])
    container.pop("name")
    template = {**job["spec"]["template"], "spec": {**pod_spec(job), "containers": [container]}}
    with pytest.raises(kubernetes_validate.ValidationError, match="'name' is a required property"):
        kubernetes_validate.validate({**job, "spec": {**job["spec"], "template": template}}, K8S_VERSIONS[0],
                                     strict=True)


# -- commands -------------------------------------------------------------------------------------------------
def test_containers_run_real_seekrec_commands_that_form_the_loop(overlay: Checked) -> None:
    check_loop(overlay.loop)
    assert set(overlay.torchrun) == {"seekrec-train"}
    server = overlay.loop["server"].config
    assert server.host == "0.0.0.0" and server.api_keys_file is not None, \
        "the server listens beyond loopback, which seekrec refuses without API keys"


def test_wait_containers_wait_for_the_files_the_previous_step_writes(overlay: Checked) -> None:
    loop = overlay.loop
    dataset_manifest = Path(loop["data"].args.out) / MANIFEST_FILE
    assert overlay.waits == {
        "seekrec-train": [dataset_manifest],
        "seekrec-server": [dataset_manifest],
        "seekrec-publish": [Path(loop["train"].args.out) / RESULTS_FILE],
        "seekrec-online-trainer": [Path(loop["online-trainer"].config.registry) / CURRENT_FILE],
    }


def test_configs_are_copies_of_the_repository_configs() -> None:
    copies = sorted((K8S / "base" / "config").glob("*.toml"))
    assert copies
    for copy in copies:
        assert copy.read_text() == (REPO / "configs" / copy.name).read_text(), \
            f"{copy} differs from configs/{copy.name}: copy it again (kustomize reads files under its root only)"


# -- training --------------------------------------------------------------------------------------------------
def test_training_is_an_indexed_job_whose_pods_rendezvous_through_a_headless_service(overlay: Checked) -> None:
    job = one(overlay.objects, "Job", "seekrec-train")
    torchrun, container, env = overlay.torchrun["seekrec-train"]
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(torchrun.nnodes), "one pod per torchrun node"
    assert "--node-rank=$(NODE_RANK)" in container["args"]
    node_rank = next(v for v in container["env"] if v["name"] == "NODE_RANK")
    assert node_rank["valueFrom"]["fieldRef"]["fieldPath"] == COMPLETION_INDEX
    assert torchrun.rdzv_backend == "static" and torchrun.node_rank == 0  # rank 0 as the completion index says
    # Indexed Job pods are named <job>-<index> on the host subdomain: pod 0 serves the rendezvous
    service = one(overlay.objects, "Service", pod_spec(job)["subdomain"])
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert selects(service["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"])
    assert torchrun.master_addr == f"{job['metadata']['name']}-0.{service['metadata']['name']}"
    assert torchrun.master_port in [p["port"] for p in service["spec"]["ports"]]
    assert torchrun.master_port in [p["containerPort"] for p in container["ports"]]
    assert int(torchrun.nproc_per_node) >= 1


def test_the_gpu_overlay_asks_for_one_gpu_per_rank_on_gpu_nodes() -> None:
    for name in OVERLAYS:
        job = one(rendered(name), "Job", "seekrec-train")
        spec = pod_spec(job)
        (container,) = spec["containers"]
        gpus = container["resources"].get("limits", {}).get("nvidia.com/gpu")
        nproc = next(v["value"] for v in container["env"] if v["name"] == "NPROC_PER_NODE")
        if name != "overlays/gpu":
            assert gpus is None and "nodeSelector" not in spec and container["image"] == f"seekrec:{__version__}"
            continue
        assert int(gpus) >= 1 and int(nproc) == int(gpus), "torchrun starts one rank per GPU of the pod"
        assert container["resources"]["requests"]["nvidia.com/gpu"] == gpus
        assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
        assert container["image"].startswith(f"seekrec:{__version__}-cu"), "the CUDA build of the image"
        assert any(m["mountPath"] == "/dev/shm" for m in container["volumeMounts"])
    for name in ("seekrec-server", "seekrec-online-trainer"):  # serving stays on the CPU image
        container = pod_spec(one(rendered("overlays/gpu"), "Deployment", name))["containers"][0]
        assert container["image"] == f"seekrec:{__version__}"


# -- serving ---------------------------------------------------------------------------------------------------
def test_the_server_is_probed_autoscaled_and_protected_from_disruption(overlay: Checked) -> None:
    from seekrec.serving.routes import health, metrics

    routes = {route.path for router in (health.router, metrics.router) for route in router.routes}
    objects = overlay.objects
    deployment = one(objects, "Deployment", "seekrec-server")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = pod_spec(deployment)["containers"]
    port = overlay.loop["server"].config.port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
        get = container[probe]["httpGet"]
        assert get["path"] == path and path in routes and ports[get["port"]] == port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in routes
    assert int(annotations["prometheus.io/port"]) == port
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns the replica count"
    hpa = one(objects, "HorizontalPodAutoscaler", "seekrec-server")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "seekrec-server"}
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = one(objects, "PodDisruptionBudget", "seekrec-server")
    assert selects(pdb["spec"]["selector"]["matchLabels"], labels)
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"], "a drain must be able to move a replica"
    service = one(objects, "Service", "seekrec-server")
    assert selects(service["spec"]["selector"], labels)
    assert [ports[p["targetPort"]] for p in service["spec"]["ports"]] == [port]


def test_the_online_trainer_runs_alone(overlay: Checked) -> None:
    deployment = one(overlay.objects, "Deployment", "seekrec-online-trainer")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert pod_spec(deployment)["terminationGracePeriodSeconds"] >= 60, "SIGTERM publishes, checkpoints, commits"


def test_the_registry_is_one_shared_read_write_many_claim(overlay: Checked) -> None:
    claim = one(overlay.objects, "PersistentVolumeClaim", "seekrec-shared")
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    registry = overlay.loop["server"].config.registry
    for workload in workloads(overlay.objects):
        spec = pod_spec(workload)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["mountPath"] == str(registry):
                    claim_name = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
                    assert (claim_name, mount["subPath"]) == ("seekrec-shared", "registry")


# -- references ------------------------------------------------------------------------------------------------
def test_every_reference_resolves(overlay: Checked) -> None:
    objects = overlay.objects
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    pod_labels = [w["spec"]["template"]["metadata"]["labels"] for w in workloads(objects)]
    for workload in workloads(objects):
        spec, name = pod_spec(workload), workload["metadata"]["name"]
        if workload["kind"] == "Deployment":
            template_labels = workload["spec"]["template"]["metadata"]["labels"]
            assert selects(workload["spec"]["selector"]["matchLabels"], template_labels)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                assert ("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]) in names
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            if "secret" in volume:
                assert volume["secret"]["secretName"] in EXTERNAL_SECRETS, f"{name}: unknown Secret"
        for container in spec.get("initContainers", []) + spec["containers"]:
            assert container["resources"].get("requests") and container["resources"].get("limits"), \
                f"{name}/{container['name']}: resource requests and limits"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{name}/{container['name']}: mount of an undeclared volume"
        assert spec["securityContext"]["runAsNonRoot"] is True
    for service in (o for o in objects if o["kind"] == "Service"):
        assert any(selects(service["spec"]["selector"], labels) for labels in pod_labels), \
            f"Service {service['metadata']['name']} selects no pods"
    assert all(o["metadata"].get("namespace") == "seekrec" for o in objects if o["kind"] != "Namespace")

