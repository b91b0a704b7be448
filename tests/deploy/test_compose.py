"""deploy/compose.yaml: valid Compose, real seekrec commands forming the loop, health checks behind every
``service_healthy`` dependency, and bind mounts of files that exist."""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest

from seekrec import __version__
from tests.deploy.helpers import (
    DEPLOY,
    REPO,
    build_args,
    check_loop,
    compose,
    compose_seekrec_commands,
    compose_services,
    dockerfile_instructions,
    paths_used,
)

BOOTSTRAP = ("data", "train", "publish")


def test_the_file_validates_against_the_compose_specification() -> None:
    schema_file = importlib.resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'.'.join(map(str, e.path))}: {e.message}" for e in errors)
    server = {**compose_services()["server"], "helthcheck": {}}
    broken = {**compose(), "services": {**compose_services(), "server": server}}
    assert any("helthcheck" in e.message for e in validator.iter_errors(broken)), "the schema rejects unknown keys"


def test_services_run_real_seekrec_commands_that_form_the_loop() -> None:
    commands = compose_seekrec_commands()
    assert set(commands) == {"server", "online-trainer", *BOOTSTRAP}
    check_loop(commands)
    for name, command in commands.items():
        targets = [Path(v.split(":")[1]) for v in compose_services()[name]["volumes"]]
        for path, _ in paths_used(command):
            assert any(t == Path(path) or t in Path(path).parents for t in targets), \
                f"{name}: {path} is on no volume (it would vanish with the container)"


def test_the_image_is_built_from_the_repository_dockerfile() -> None:
    instructions = dockerfile_instructions(REPO / "Dockerfile")
    for name, service in compose_services().items():
        if not service.get("image", "").startswith("seekrec:"):
            continue
        assert service["image"] == f"seekrec:{__version__}"
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == REPO and (REPO / build["dockerfile"]).is_file()
        assert set(build.get("args", {})) <= set(build_args(instructions, 0)), f"{name}: unknown build args"


def test_the_server_listens_with_keys_and_is_health_checked() -> None:
    server_service = compose_services()["server"]
    settings = compose_seekrec_commands()["server"].config
    assert settings.host == "0.0.0.0"
    # seekrec refuses 0.0.0.0 without keys; Compose refuses to start without the variable
    assert server_service["environment"]["SEEKREC_API_KEYS"].startswith("${SEEKREC_API_KEYS:?")
    assert any(p.endswith(f":{settings.port}") for p in server_service["ports"])
    probe = server_service["healthcheck"]["test"]
    assert probe[0] == "CMD" and f"http://127.0.0.1:{settings.port}/healthz" in probe[-1]


def test_the_event_log_is_the_redis_service() -> None:
    url = urlsplit(compose_seekrec_commands()["server"].config.event_log)
    assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379)
    redis = compose_services()["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendfsync") + 1] \
        == "always", "an acknowledged event must survive a Redis crash"
    for name in ("server", "online-trainer"):
        assert compose_services()[name]["depends_on"]["redis"] == {"condition": "service_healthy"}


def test_dependencies_wait_for_health_and_bootstrap_steps_stay_out_of_up() -> None:
    for name, service in compose_services().items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in compose_services() and target not in BOOTSTRAP, f"{name} depends on {target}"
            assert spec["condition"] == "service_healthy"
            check = compose_services()[target]["healthcheck"]
            assert not check.get("disable") and check["test"][0] == "CMD"
        if name in BOOTSTRAP:
            assert service["profiles"] == ["bootstrap"] and service["healthcheck"] == {"disable": True}
        else:
            assert "profiles" not in service and service["restart"] == "unless-stopped"
    assert compose_services()["online-trainer"]["healthcheck"] == {"disable": True}, "it serves no /healthz"


def test_bind_mounts_exist() -> None:
    for name, service in compose_services().items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name}: bind mount {source} does not exist"
            else:
                assert source in compose()["volumes"], f"{name}: undeclared volume {source}"


@pytest.mark.parametrize("service", ["prometheus", "grafana", "redis"])
def test_third_party_images_are_pinned(service: str) -> None:
    image = compose_services()[service]["image"]
    tag = image.rpartition(":")[2]
    assert ":" in image and tag != "latest" and any(c.isdigit() for c in tag), f"{service}: pin {image}"
