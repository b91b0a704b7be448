"""What the deployment tests share: the files' locations, the commands' checks and small parsers.

A container's command is checked the way the container would run it: seekrec's own argparse parser
(``seekrec.cli.build_parser``) parses it, then the command's config is built from the parsed arguments as
the command itself builds it (``ServeSettings``, ``OnlineTrainerConfig``, ``ExperimentConfig``,
``SimulatorConfig``), so a misspelt flag, a bad value or a config file that no longer loads fails here.
torchrun's arguments go through torch's own parser first.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import functools
import io
import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
OVERLAYS = ("base", "overlays/cpu", "overlays/gpu")
# the one external object the manifests expect: the operator creates it (docs/deployment.md)
EXTERNAL_SECRETS = {"seekrec-api-keys"}
# the init containers' wait loop: sh's $0 is the file to wait for, the argument after the script
WAIT_SCRIPT = 'until [ -f "$0" ]; do echo "waiting for $0"; sleep 10; done'


def require_tool(name: str, install: str) -> str:
    """The path of the program ``name`` (on PATH or beside this Python); skipped without it, except under
    SEEKREC_REQUIRE_SERVICES=1 (CI), where a missing tool must fail instead of shrinking the run."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found:
        return found
    message = f"{name} is not installed ({install})"
    if os.environ.get("SEEKREC_REQUIRE_SERVICES") == "1":
        pytest.fail(f"SEEKREC_REQUIRE_SERVICES=1 but {message}")
    pytest.skip(message)


# -- seekrec and torchrun commands ---------------------------------------------------------------------------
@dataclass
class SeekrecCommand:
    """A parsed ``seekrec`` command line and the config it builds (None for commands without one)."""

    name: str  # "serve", "stream-train", "train", "data simulate", "registry publish"
    args: argparse.Namespace
    config: Any


def parse_seekrec(argv: list[str], config_file: Callable[[str], Path]) -> SeekrecCommand:
    """Parse ``argv`` (what follows ``seekrec``) and build its config; ``config_file`` maps the path a
    container passes to ``--config`` to the file it holds here. Fails the test with seekrec's own error."""
    from seekrec.cli import build_parser

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            args = build_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"`seekrec {' '.join(argv)}` does not parse: {stderr.getvalue().strip()}")
    if getattr(args, "config", None) is not None:
        args.config = config_file(str(args.config))
    name = args.command + {"data": f" {getattr(args, 'data_command', '')}",
                           "registry": f" {getattr(args, 'action', '')}"}.get(args.command, "")
    return SeekrecCommand(name, args, _build_config(name, args))


def _build_config(name: str, args: argparse.Namespace) -> Any:
    from seekrec.cli.options import config_from_args

    if name == "serve":
        from seekrec.cli.live import serve_settings

        return serve_settings(args)
    if name == "stream-train":
        from seekrec.online.trainer import OnlineTrainerConfig

        return config_from_args(OnlineTrainerConfig, args)
    if name == "train":
        from seekrec.training.experiment import ExperimentConfig

        return ExperimentConfig.load(args.config, args.overrides)
    if name == "data simulate":
        from seekrec.data.simulator import SimulatorConfig

        return config_from_args(SimulatorConfig, args)
    if name == "registry publish":
        return None
    raise AssertionError(f"`seekrec {name}` is not a command the deployment files are expected to run; "
                         "teach tests/deploy/helpers.py how to check it")


def parse_torchrun(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """torchrun's arguments through torch's own parser; returns them and the ``seekrec`` arguments after
    ``-m seekrec.cli``."""
    from torch.distributed.run import get_args_parser

    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        try:
            args = get_args_parser().parse_args(argv)
        except SystemExit:
            pytest.fail(f"`torchrun {' '.join(argv)}` does not parse: {stderr.getvalue().strip()}")
    assert args.module and args.training_script == "seekrec.cli", \
        f"torchrun must run `-m seekrec.cli`, got script {args.training_script!r} (module: {args.module})"
    return args, list(args.training_script_args)


# -- Kubernetes: $(VAR) expansion in command and args ---------------------------------------------------------
_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' expansion of ``$(VAR)`` in a container's command and args (``$$`` is a literal ``$``);
    a reference to a variable the container does not define fails the test (Kubernetes would pass it on
    verbatim)."""
    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        assert match.group(1) in env, f"{text!r} refers to $({match.group(1)}), which the container does not define"
        return env[match.group(1)]

    return _VAR.sub(replace, text)


def container_env(container: dict[str, Any], config_maps: Mapping[str, dict[str, Any]],
                  field_values: Mapping[str, str]) -> dict[str, str]:
    """The container's environment as the kubelet would set it: literal values, ConfigMap keys (which must
    exist), and downward-API fields from ``field_values`` (fieldPath -> the value to assume)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
            continue
        source = var["valueFrom"]
        if "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            assert ref["name"] in config_maps, f"env {var['name']}: no ConfigMap {ref['name']!r}"
            data = config_maps[ref["name"]].get("data", {})
            assert ref["key"] in data, f"env {var['name']}: ConfigMap {ref['name']!r} has no key {ref['key']!r}"
            env[var["name"]] = data[ref["key"]]
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            assert path in field_values, f"env {var['name']}: no value assumed for field {path!r}"
            env[var["name"]] = field_values[path]
        else:
            raise AssertionError(f"env {var['name']}: unexpected source {sorted(source)}")
    return env


# -- Dockerfile and .dockerignore ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, COPY ...
    value: str  # the rest of the instruction, continuation lines joined
    stage: int  # 0 for the first FROM's stage, 1 for the next ...


def dockerfile_instructions(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions, comments and parser directives dropped, ``\\`` continuations joined.
    ``ARG`` before the first ``FROM`` has stage -1."""
    instructions, stage, pending = [], -1, ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        text = (pending + stripped).strip()
        pending = ""
        keyword, _, value = text.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, value.strip(), stage))
    assert not pending, f"{path}: the last instruction ends with a continuation"
    return instructions


def exec_form(value: str) -> list[str]:
    """The JSON array of an exec-form ``CMD``, ``ENTRYPOINT`` or ``HEALTHCHECK ... CMD``."""
    parsed = json.loads(value)
    assert isinstance(parsed, list) and all(isinstance(a, str) for a in parsed), f"not an exec form: {value}"
    return parsed


def build_args(instructions: list[Instruction], stage: int) -> dict[str, str]:
    """The defaults of the ``ARG``s visible in ``stage``: global ones and the stage's own."""
    values: dict[str, str] = {}
    for ins in instructions:
        if ins.keyword == "ARG" and ins.stage in (-1, stage):
            name, _, default = ins.value.partition("=")
            if default or name not in values:
                values[name] = default
    return values


def docker_ignored(path: str, patterns: list[str]) -> bool:
    """Whether the build context leaves out ``path`` (relative, with ``/``): the last matching pattern
    decides, ``!`` re-includes, and a pattern that matches a directory covers everything under it. The
    patterns ``.dockerignore`` uses (``*``, ``!name``, ``**/name``) mean the same here as in Docker."""
    ignored = False
    parts = path.split("/")
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        if any(fnmatch.fnmatchcase(p, pattern) or (pattern.startswith("**/") and
                                                   fnmatch.fnmatchcase(p, pattern[3:]))
               for p in prefixes):
            ignored = not negate
    return ignored


def dockerignore_patterns(path: Path) -> list[str]:
    lines = (line.strip() for line in path.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


# -- the real-time loop's commands, wherever they are declared ------------------------------------------------
LOOP_ROLES = ("data", "train", "publish", "server", "online-trainer")


def paths_used(command: SeekrecCommand) -> list[tuple[Path, bool]]:
    """The files and directories ``command`` reads, and whether it writes them."""
    a, c = command.args, command.config
    if command.name == "data simulate":
        return [(a.out, True)]
    if command.name == "train":
        return [(a.data, False), (a.out, True)]
    if command.name == "registry publish":
        return [(a.root, True), (Path(a.target), False)]
    if command.name == "serve":  # the registry is written too: added_items.jsonl, the POST /items journal
        return [(c.registry, True), *([(c.data_dir, False)] if c.data_dir else []),
                *([(c.api_keys_file, False)] if c.api_keys_file else [])]
    if command.name == "stream-train":
        return [(Path(c.registry), True), (Path(c.dataset), False), (Path(c.state_dir), True)]
    raise AssertionError(f"no paths known for `seekrec {command.name}`")


def check_loop(loop: Mapping[str, SeekrecCommand]) -> None:
    """The bootstrap and the live loop connect: the dataset simulated is the one trained on and served,
    the run trained is the one published, and the server and the online trainer share the registry, the
    event log, the unknown-item policy and the trainer's consumer name (the server reports its lag)."""
    assert set(loop) == set(LOOP_ROLES), f"expected commands for {LOOP_ROLES}, got {sorted(loop)}"
    data, train, publish = loop["data"], loop["train"], loop["publish"]
    server, trainer = loop["server"].config, loop["online-trainer"].config
    assert (data.name, train.name, publish.name) == ("data simulate", "train", "registry publish")
    assert (loop["server"].name, loop["online-trainer"].name) == ("serve", "stream-train")
    dataset = Path(data.args.out)
    assert Path(train.args.data) == dataset == server.data_dir == Path(trainer.dataset)
    assert Path(publish.args.target) == Path(train.args.out)
    assert Path(publish.args.root) == server.registry == Path(trainer.registry)
    assert server.event_log == trainer.event_log
    assert server.unknown_items == trainer.unknown_items
    assert server.trainer_consumer == trainer.consumer


# -- Compose ----------------------------------------------------------------------------------------------
@functools.cache
def compose() -> dict[str, Any]:
    """deploy/compose.yaml, its YAML merge keys (``<<: *seekrec``) resolved as Compose resolves them."""
    return yaml.safe_load(COMPOSE.read_text())


def compose_services() -> dict[str, Any]:
    return compose()["services"]


def image_copies() -> dict[str, Path]:
    """Where the runtime image's ``COPY`` instructions put repository folders: container path -> repo path."""
    instructions = dockerfile_instructions(REPO / "Dockerfile")
    last = max(i.stage for i in instructions)
    return {ins.value.split()[1]: REPO / ins.value.split()[0] for ins in instructions
            if ins.keyword == "COPY" and ins.stage == last and not ins.value.startswith("--from")}


def image_config_file(path: str) -> Path:
    """The repository file the image holds at ``path`` (a ``--config`` argument of a Compose service)."""
    for dest, source in image_copies().items():
        if path.startswith(dest + "/"):
            local = source / Path(path).relative_to(dest)
            assert local.is_file(), f"--config {path}: {local} is not in the repository"
            return local
    raise AssertionError(f"--config {path} is not a file the image carries (nothing is mounted there)")


def compose_seekrec_commands() -> dict[str, SeekrecCommand]:
    """Each seekrec service's command, parsed and its config built (the image's ENTRYPOINT is seekrec)."""
    commands = {}
    for name, service in compose_services().items():
        if service.get("image", "").startswith("seekrec:"):
            assert "entrypoint" not in service, f"{name}: keep the image's ENTRYPOINT (seekrec)"
            assert not any("$" in a for a in service["command"]), f"{name}: Compose would interpolate '$'"
            commands[name] = parse_seekrec(service["command"], image_config_file)
    return commands


# -- Prometheus: the series seekrec exports, and the ones PromQL names ------------------------------------------
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
             "gauge": ("",), "summary": ("", "_count", "_sum", "_created"), "info": ("_info",)}
_PROMQL_METRIC = re.compile(r"\b(?:seekrec|process)_[a-z0-9_]+\b|\bup\b")


def exported_series() -> set[str]:
    """Every series name the server (``ServingMetrics``) and the online trainer (``TrainerMetrics``) can export,
    from their registries' collectors (labelled metrics with no child yet included), plus Prometheus' ``up``."""
    from seekrec.online.metrics import TrainerMetrics
    from seekrec.serving.metrics import ServingMetrics

    names = {"up"}
    for registry in (ServingMetrics().registry, TrainerMetrics().registry):
        for family in registry.collect():
            names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
            names.update(sample.name for sample in family.samples)
    return names


def promql_series(expr: str) -> set[str]:
    """The seekrec / process series (and ``up``) an expression names; label values and functions are skipped
    by the prefixes, and label names cannot start with them."""
    return set(_PROMQL_METRIC.findall(re.sub(r'"[^"]*"', '""', expr)))
