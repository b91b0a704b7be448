"""The model registry: round trips, ids, promote / rollback, checksums, retention, crashes, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from seekrec.registry import store as registry_store
from seekrec.training.experiment import ExperimentConfig
from seekrec.models.factory import build_model
from seekrec.registry import ModelRegistry, RegistryError, format_versions, parse_version
from seekrec.training.experiment import train_experiment

N_ITEMS = 20
SASREC = {"dim": 8, "n_layers": 1, "n_heads": 1, "max_len": 6, "dropout": 0.0}
DEEPSEEK = {"dim": 8, "n_layers": 1, "n_heads": 2, "max_len": 6, "dropout": 0.0, "q_lora_rank": 8,
            "kv_lora_rank": 8, "qk_nope_head_dim": 4, "qk_rope_head_dim": 4, "v_head_dim": 4, "moe_ffn_dim": 8,
            "n_routed_experts": 4, "top_k": 2, "n_side_features": 3}
INPUTS = torch.tensor([[0, 0, 3, 7, 1, 12], [5, 6, 7, 8, 9, 10]])


@pytest.fixture(autouse=True)
def _single_thread() -> Any:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; also keeps forked publishers clear of a busy OpenMP pool
    yield
    torch.set_num_threads(previous)


def _sasrec(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("sasrec", SASREC, N_ITEMS).eval()


def _publish(reg: ModelRegistry, seed: int = 0, **kwargs: Any) -> str:
    return reg.publish(_sasrec(seed), model_name="sasrec", model_config=SASREC, **kwargs)


def _scores(model: torch.nn.Module) -> torch.Tensor:
    with torch.inference_mode():
        return model.score_all(INPUTS)


def test_publish_load_round_trip(tmp_path: Path) -> None:
    reg, model = ModelRegistry(tmp_path), _sasrec(3)
    version = reg.publish(model, model_name="sasrec", model_config=SASREC, metrics={"ndcg@10": 0.25},
                          data_spec={"data_manifest_sha256": "ab" * 32, "feature_spec_version": "f1"},
                          extra={"offset": 1234}, extra_files={"items.json": b'{"1": "a"}'})
    assert version == "v000001" and reg.current() == version
    loaded = reg.load()
    assert loaded.version == version and not loaded.model.training
    assert torch.equal(_scores(loaded.model), _scores(model))
    manifest = reg.manifest(version)
    assert manifest["model_config"]["n_items"] == N_ITEMS and manifest["model_config"]["norm"] == "layernorm"
    assert manifest["data_spec"]["feature_spec_version"] == "f1" and manifest["extra"] == {"offset": 1234}
    assert manifest["parent"] is None and manifest["created"].endswith("Z")
    assert set(manifest["files"]) == {"model.safetensors", "items.json"}
    assert (loaded.directory / "items.json").read_bytes() == b'{"1": "a"}'
    assert reg.verify(version) == manifest["files"]


def test_side_feature_buffer_comes_from_the_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    features = (torch.rand(N_ITEMS + 1, 3) > 0.5).float()
    model = build_model("deepseek", DEEPSEEK, N_ITEMS, item_features=features).eval()
    reg = ModelRegistry(tmp_path)
    loaded = reg.load(reg.publish(model, model_name="deepseek", model_config=DEEPSEEK))
    assert torch.equal(loaded.model.item_features, model.item_features)
    assert torch.allclose(_scores(loaded.model), _scores(model))


def test_versions_increase_and_list(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    first = _publish(reg, metrics={"ndcg@10": 0.1})
    second = _publish(reg, 1, parent=first, promote=False, metrics={"ndcg@10": 0.2})
    third = _publish(reg, 2, parent="2", promote=False, metrics={"ndcg@10": 0.3})
    assert [first, second, third] == ["v000001", "v000002", "v000003"]
    infos = reg.versions()
    assert [(i.version, i.parent, i.is_current) for i in infos] == [
        ("v000001", None, True), ("v000002", "v000001", False), ("v000003", "v000002", False)]
    table = format_versions(infos).splitlines()
    assert table[2].startswith("*") and "v000001" in table[2] and "0.3000" in table[4]
    assert format_versions([]) == "no versions published"


@given(st.integers(min_value=1, max_value=10**7))
def test_version_forms_agree(number: int) -> None:
    version = parse_version(number)
    assert parse_version(f"v{number}") == parse_version(str(number)) == version and int(version[1:]) == number


def test_invalid_versions_are_refused(tmp_path: Path) -> None:
    for text in ("v0", "latest", "-3"):
        with pytest.raises(RegistryError, match="invalid version"):
            parse_version(text)
    with pytest.raises(RegistryError, match="unknown version v000009"):
        ModelRegistry(tmp_path).promote("v9")


def test_promote_and_rollback(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="no version was ever promoted"):
        reg.rollback()
    with pytest.raises(RegistryError, match="no current version"):
        reg.load()
    v1, v2, v3 = (_publish(reg, seed) for seed in range(3))
    assert reg.current() == v3 and reg.rollback_target() == v2
    assert reg.rollback() == v2 and reg.current() == v2
    assert reg.rollback() == v1 and reg.current() == v1
    with pytest.raises(RegistryError, match="v000001 is the first promoted version"):
        reg.rollback()
    reg.promote(v3)
    assert reg.rollback() == v1, "rollback returns to what was current before the promotion"
    reg.promote(v1)  # already current: no new history entry
    assert reg.rollback_target() is None
    events = json.loads((tmp_path / "history.json").read_text())["events"]
    assert [e["action"] for e in events] == ["promote"] * 3 + ["rollback"] * 2 + ["promote", "rollback"]


def test_hand_edited_current_wins_over_history(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    v1, v2 = _publish(reg, promote=False), _publish(reg, 1)
    (tmp_path / "CURRENT").write_text(f"{v1}\n")  # as if a crash came between CURRENT and history.json
    assert reg.rollback() == v2


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def test_tampered_weights_are_never_loaded(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    version = _publish(reg)
    _flip_byte(tmp_path / "versions" / version / "model.safetensors")
    for action in (lambda: reg.verify(version), reg.load, lambda: reg.load(version), lambda: reg.promote(version)):
        with pytest.raises(RegistryError, match="model.safetensors: sha256 does not match"):
            action()


def test_missing_file_is_named(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    version = _publish(reg, extra_files={"items.json": b"[]"})
    (tmp_path / "versions" / version / "items.json").unlink()
    with pytest.raises(RegistryError, match="items.json: missing"):
        reg.load()


@pytest.mark.parametrize("escape", ["../outside.bin", "sub/../../outside.bin", "ABSOLUTE"])
def test_verify_refuses_manifest_names_outside_the_version(tmp_path: Path, escape: str) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    version = _publish(reg)
    outside = tmp_path / "reg" / "versions" / "outside.bin"
    outside.write_bytes(b"secret")
    name = str(outside) if escape == "ABSOLUTE" else escape
    manifest_path = tmp_path / "reg" / "versions" / version / "manifest.json"
    doc = json.loads(manifest_path.read_text())
    # a well-formed entry (right size and sha256) for a file that is not the version's own
    doc["files"][name] = {"sha256": registry_store.sha256_file(outside), "bytes": outside.stat().st_size}
    manifest_path.write_text(json.dumps(doc))
    with pytest.raises(RegistryError, match="not inside|outside"):
        reg.verify(version)


def test_publish_refuses_what_could_not_be_loaded(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    with pytest.raises(RegistryError, match="does not match sasrec"):
        reg.publish(_sasrec(), model_name="sasrec", model_config={**SASREC, "dim": 16})
    with pytest.raises(RegistryError, match="unknown sasrec config keys"):
        reg.publish(_sasrec(), model_name="sasrec", model_config={**SASREC, "hidden": 3})
    with pytest.raises(RegistryError, match="plain file name"):
        _publish(reg, extra_files={"../escape.json": b"{}"})
    with pytest.raises(RegistryError, match="finite JSON"):
        _publish(reg, metrics={"loss": float("nan")})
    assert reg.versions() == [] and not list((tmp_path / ".staging").glob("*"))


def test_retention_keeps_current_and_rollback_target(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path, keep=2)
    v1, v2 = _publish(reg), _publish(reg, 1)
    newer = [_publish(reg, seed, promote=False) for seed in range(2, 5)]
    assert [i.version for i in reg.versions()] == [v1, v2, *newer[-2:]]
    assert reg.current() == v2 and reg.rollback() == v1
    assert not list((tmp_path / ".trash").iterdir())


def test_a_taken_version_id_makes_the_publisher_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reg = ModelRegistry(tmp_path)
    first = _publish(reg)
    monkeypatch.setattr(reg.store, "_next_number", lambda: 1)  # as if another process renamed v000001 in first
    second = _publish(reg, 1)
    assert second == "v000002" and reg.manifest(second)["version"] == second
    assert reg.manifest(first)["version"] == first and reg.verify(first)


def _publish_many(root: str, seed: int, count: int, queue: Any) -> None:
    torch.set_num_threads(1)
    reg = ModelRegistry(root, keep=100)
    queue.put([_publish(reg, seed * 10 + i, promote=i % 2 == 0) for i in range(count)])


def test_concurrent_publishes_get_distinct_versions(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # workers inherit the imports: spawning would re-import transformers
    queue = ctx.Queue()
    workers = [ctx.Process(target=_publish_many, args=(str(tmp_path), seed, 4, queue)) for seed in (1, 2)]
    for w in workers:
        w.start()
    published = [v for _ in workers for v in queue.get(timeout=30)]
    for w in workers:
        w.join(timeout=60)
        assert w.exitcode == 0
    reg = ModelRegistry(tmp_path)
    assert sorted(published) == [f"v{n:06d}" for n in range(1, 9)]
    assert [i.version for i in reg.versions()] == sorted(published)
    assert all(reg.verify(v) for v in published) and reg.current() in published
    assert not list((tmp_path / ".staging").iterdir())


def _killed_publish(root: str) -> None:
    def die(self: registry_store.VersionStore, staging: Path, doc: dict[str, Any]) -> str:
        os._exit(3)  # SIGKILL-like: no cleanup runs, the staging directory stays

    registry_store.VersionStore._claim = die  # type: ignore[method-assign]
    _publish(ModelRegistry(root))


def test_killed_publish_is_ignored_and_cleaned_up(tmp_path: Path) -> None:
    proc = multiprocessing.get_context("fork").Process(target=_killed_publish, args=(str(tmp_path),))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 3
    left = list((tmp_path / ".staging").iterdir())
    assert len(left) == 1 and (left[0] / "model.safetensors").exists()
    stale = tmp_path / ".staging" / "other-host-1-deadbeef"
    fresh = tmp_path / ".staging" / "other-host-2-cafecafe"
    stale.mkdir()
    fresh.mkdir()
    os.utime(stale, (time.time() - 7 * 3600,) * 2)
    (tmp_path / ".trash" / "v000009-0123abcd").mkdir(parents=True)  # a retention delete that was killed
    reg = ModelRegistry(tmp_path)
    assert reg.versions() == [] and reg.current() is None
    live = tmp_path / ".staging" / f"{socket.gethostname()}-{os.getpid()}-00000000"  # this process: in progress
    live.mkdir()
    assert _publish(reg) == "v000001"
    assert sorted(p.name for p in (tmp_path / ".staging").iterdir()) == sorted([fresh.name, live.name])
    assert not list((tmp_path / ".trash").iterdir())


def test_publish_run_from_a_training_run(sim_data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    config = ExperimentConfig.load(None, ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=12",
                                          "train.batch_size=16", "train.max_epochs=1", "train.eval_batch_size=64"])
    record = train_experiment(config, sim_data_dir, run)
    reg = ModelRegistry(tmp_path / "registry")
    version = reg.publish_run(run)
    manifest = reg.manifest(version)
    run_config = json.loads((run / "config.json").read_text())
    assert manifest["data_spec"]["data_manifest_sha256"] == run_config["data_manifest_sha256"]
    assert manifest["metrics"]["test/ndcg@10"] == record["metrics"]["ndcg@10"]
    assert manifest["model_config"]["max_len"] == 12 and manifest["model_config"]["n_items"] == record["n_items"]
    assert "run_config.json" in manifest["files"]
    reference = build_model("sasrec", {"dim": 16, "n_layers": 1, "max_len": 12}, record["n_items"])
    from safetensors.torch import load_model

    load_model(reference, str(run / "best" / "model.safetensors"))
    history = torch.tensor([[0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9]])
    with torch.inference_mode():
        assert torch.equal(reg.load().model.score_all(history), reference.eval().score_all(history))
    (run / "results.json").unlink()  # a run stopped before its end: best/ publishes, with validation metrics
    unfinished = reg.manifest(reg.publish_run(run))
    assert unfinished["extra"]["unfinished"] and unfinished["model_config"]["n_items"] == record["n_items"]
    assert unfinished["metrics"] == {k: v for k, v in manifest["metrics"].items() if k.startswith("valid/")}
    (run / "best" / "model.safetensors").unlink()
    with pytest.raises(RegistryError, match="best/model.safetensors: missing"):
        reg.publish_run(run)


def test_pinned_versions_survive_retention(tmp_path):
    from seekrec.models.factory import build_model

    registry = ModelRegistry(tmp_path / "reg", keep=2)
    config = {"dim": 8, "n_layers": 1, "max_len": 5}
    model = build_model("sasrec", config, 10)
    first = registry.publish(model, model_name="sasrec", model_config={**config, "n_items": 10})
    registry.pin(first, "A/B control arm")
    for _ in range(4):
        registry.publish(model, model_name="sasrec", model_config={**config, "n_items": 10})
    names = [v.version for v in registry.versions()]
    assert first in names and registry.pins() == {first: "A/B control arm"}
    registry.unpin(first)
    registry.publish(model, model_name="sasrec", model_config={**config, "n_items": 10})
    assert first not in [v.version for v in registry.versions()]
    with pytest.raises(RegistryError):
        registry.pin("v000999")


def _bundle_dir(root: Path) -> Path:
    (root / "features").mkdir(parents=True)
    (root / "features" / "spec.json").write_text('{"version": "abc"}')
    (root / "ranker.safetensors").write_bytes(b"\x00" * 64)
    (root / "pipeline.json").write_text('{"stages": 3}')
    return root


def test_bundle_publish_verify_promote_and_rollback(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    model_version = _publish(reg)
    bundle = reg.publish_bundle(_bundle_dir(tmp_path / "b"), kind="pipeline", name="two-tower+din",
                                data_spec={"feature_spec_version": "abc"}, metrics={"test/ndcg@10": 0.1})
    assert reg.current() == bundle
    loaded = reg.load_bundle()
    assert loaded.kind == "pipeline" and loaded.manifest["data_spec"]["feature_spec_version"] == "abc"
    assert (loaded.directory / "features" / "spec.json").read_text() == '{"version": "abc"}'
    assert set(loaded.manifest["files"]) == {"features/spec.json", "ranker.safetensors", "pipeline.json"}
    assert "two-tower+din" in format_versions(reg.versions())
    with pytest.raises(RegistryError, match="bundle"):
        reg.load(bundle)  # not a single model
    assert reg.load_bundle(model_version).kind == "model"
    _flip_byte(loaded.directory / "features" / "spec.json")
    with pytest.raises(RegistryError, match="sha256"):
        reg.load_bundle(bundle)
    assert reg.rollback() == model_version


def test_bundle_refuses_odd_names_and_empty_directories(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no files"):
        reg.publish_bundle(tmp_path / "empty", kind="pipeline", name="p")
    odd = _bundle_dir(tmp_path / "odd")
    (odd / ".hidden").write_text("x")
    with pytest.raises(RegistryError, match="plain names"):
        reg.publish_bundle(odd, kind="pipeline", name="p")
    with pytest.raises(RegistryError, match="kind"):
        reg.publish_bundle(_bundle_dir(tmp_path / "ok"), kind="model", name="p")
    assert reg.versions() == []


def test_every_manifest_records_its_kind(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path)
    model_version = _publish(reg)
    bundle = _bundle_dir(tmp_path / "b")
    bundle_version = reg.publish_bundle(bundle, kind="pipeline", name="p", promote=False)
    assert reg.manifest(model_version)["kind"] == "model" and reg.kind(model_version) == "model"
    assert reg.kind(bundle_version) == "pipeline"
    manifest = tmp_path / "versions" / model_version / "manifest.json"  # written before kinds were recorded
    doc = json.loads(manifest.read_text())
    del doc["kind"]
    manifest.write_text(json.dumps(doc))
    assert reg.kind(model_version) == "model"


def test_pointer_works_on_the_store_alone(tmp_path: Path) -> None:
    from seekrec.registry.pointer import VersionPointer
    from seekrec.registry.store import VersionStore

    store = VersionStore(tmp_path)
    pointer = VersionPointer(store, keep=1)
    with pytest.raises(ValueError, match="keep"):
        VersionPointer(store, keep=0)
    first, second, third = (store.publish_model(_sasrec(s), model_name="sasrec", model_config=SASREC) for s in range(3))
    assert pointer.current() is None and store.published() == [first, second, third]
    with pytest.raises(RegistryError, match="not published"):
        pointer.promote("v000009")
    pointer.promote(first)
    pointer.promote(second)
    assert pointer.current() == second and pointer.rollback_target() == first
    pointer.pin(third, "canary")
    pointer.retain()  # keep=1 keeps the newest; current, rollback target and the pin are spared too
    assert store.published() == [first, second, third]
    pointer.unpin(third)
    pointer.promote(third)
    pointer.retain()
    assert store.published() == [second, third]
    assert pointer.rollback() == second and pointer.current() == second


def test_channels_move_without_touching_current_and_survive_retention(tmp_path: Path) -> None:
    reg = ModelRegistry(tmp_path / "reg", keep=2)
    base = _publish(reg)
    head = _publish(reg, seed=1, channel="explore")
    assert reg.current() == base and reg.channel("explore") == head and reg.channel("greedy") is None
    for seed in range(2, 6):
        _publish(reg, seed=seed)  # CURRENT moves on; retention keeps 2 newest + current + rollback target
    assert reg.channels() == {"explore": head} and head in [v.version for v in reg.versions()]
    with pytest.raises(RegistryError, match="channel name"):
        _publish(reg, channel="../escape")
    (tmp_path / "reg" / "channels" / "explore").write_text("garbage\n")
    with pytest.raises(RegistryError, match="publish to the channel again"):
        reg.channel("explore")
    with pytest.raises(RegistryError, match="not published"):
        reg.pointer.set_channel("explore", "v000999")
