"""The online trainer: learning from the stream, publishing cadence, exact resume, and kill -9 safety.

One tiny SASRec is trained offline once per module; each test publishes it into its own registry and
streams events from its own SQLite log. The kill test runs the trainer in forkserver children (forked
from a server that imported seekrec once), so each restart costs milliseconds instead of an import.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from seekrec.training.experiment import ExperimentConfig
from seekrec.data.vocab import CATALOG_FILE, Catalog
from seekrec.online.event_log import Event, EventLogUnavailableError
from seekrec.online.factory import open_event_log
from seekrec.online.trainer import (
    BASE_CATALOG_FILE,
    METRICS_FILE,
    OnlineTrainer,
    OnlineTrainerConfig,
    run_online_trainer,
)
from seekrec.models.factory import build_model
from seekrec.online.updates import grow_items_keeping_state
from seekrec.registry import ModelRegistry
from seekrec.training.config import TrainConfig
from seekrec.training.experiment import train_experiment
from seekrec.training.step import build_optimizer

BASE_OVERRIDES = ["model.name=sasrec", "model.dim=16", "model.n_layers=1", "data.max_len=12",
                  "train.batch_size=16", "train.max_epochs=1"]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory: pytest.TempPathFactory, sim_data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("base-run")
    train_experiment(ExperimentConfig.load(None, BASE_OVERRIDES), sim_data_dir, run_dir)
    return run_dir


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models on shared CI cores run many times faster on one thread than on spinning many."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def config_for(tmp_path: Path, base_run: Path, sim_data_dir: Path) -> Any:
    """``config_for(**overrides)``: a config over a fresh registry holding the base model."""
    ModelRegistry(tmp_path / "registry").publish_run(base_run)

    def make(**overrides: Any) -> OnlineTrainerConfig:
        fields = dict(registry=tmp_path / "registry", event_log=f"sqlite://{tmp_path / 'events.db'}",
                      dataset=sim_data_dir, state_dir=tmp_path / "state", device="cpu", block_ms=0,
                      stop_when_idle=True, events_per_step=8, publish_every_events=10_000,
                      publish_every_seconds=3600.0, threads=1)
        return OnlineTrainerConfig(**{**fields, **overrides})

    return make


def _append(config: OnlineTrainerConfig, events: list[Event]) -> None:
    with open_event_log(config.event_log) as event_log:
        event_log.append(events)


def _records(config: OnlineTrainerConfig, kind: str) -> list[dict[str, Any]]:
    """Records of ``kind`` in the trainer's JSONL log; a line cut short by SIGKILL is skipped."""
    path = Path(config.state_dir) / METRICS_FILE
    out = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record["kind"] == kind:
            out.append(record)
    return out


def _manifests(config: OnlineTrainerConfig) -> list[dict[str, Any]]:
    registry = ModelRegistry(config.registry)
    return [registry.manifest(info.version) for info in registry.versions()]


def _rank_after(model: torch.nn.Module, history: list[int], target: int) -> int:
    """Rank (0 = best) of ``target`` among all items for a user whose last items are ``history``."""
    with torch.inference_mode():
        scores = model.eval().score_all(torch.tensor([history]))[0, 1:]  # [N]
    return int((scores > scores[target - 1]).sum())


def test_clicks_move_scores_and_new_items_become_scorable(config_for: Any) -> None:
    config = config_for(lr=3e-3, replay_ratio=1.0)
    registry = ModelRegistry(config.registry)
    base = registry.load()
    catalog = Catalog.from_bytes((base.directory / CATALOG_FILE).read_bytes())
    with torch.inference_mode():
        scores = base.model.score_all(torch.tensor([[1]]))[0, 2:]  # [N - 1]: items 2..N after item 1
    item_b = int(scores.argmin()) + 2  # the item the base model least expects after item 1
    rank_before = _rank_after(base.model, [1], item_b)
    raw_a, raw_b = catalog.items.decode([1, item_b])
    pattern = [Event(f"fan-{u}", raw_a if k % 2 == 0 else raw_b, 1000.0 + 100 * u + k)
               for k in range(12) for u in range(10)]
    _append(config, [*pattern, Event("fan-0", "brand-new-item", 5000.0)])
    with OnlineTrainer(config) as trainer:
        summary = trainer.run()
    assert summary["position"] == len(pattern) + 1 and summary["lag"] == 0
    current = registry.load()
    assert rank_before > 10 and _rank_after(current.model, [1], item_b) < 3
    grown = Catalog.from_bytes((current.directory / CATALOG_FILE).read_bytes())
    assert len(grown.items) == len(catalog.items) + 1 == current.model.n_items
    assert grown.items.get("brand-new-item") == current.model.n_items and grown.counts[-1] == 1
    assert current.model.score_all(torch.tensor([[1, 2]])).shape == (1, current.model.n_items + 1)
    extra = current.manifest["extra"]
    assert extra["offset"] == len(pattern) + 1 and extra["trained_through_timestamp"] == 5000.0
    assert current.manifest["parent"] == base.version and current.manifest["model_name"] == "sasrec"


def test_reject_policy_never_grows_the_item_table(config_for: Any) -> None:
    """Before the policy, every invented item id grew the model (1,682 -> 18,754 items in 2 minutes)."""
    config = config_for(unknown_items="reject")
    base = ModelRegistry(config.registry).load()
    raw = Catalog.from_bytes((base.directory / CATALOG_FILE).read_bytes()).items.decode([1, 2])
    flood = [Event(f"u{u}", raw[0] if k == 0 else f"invented-{u}-{k}", 1000.0 + 10 * u + k)
             for u in range(20) for k in range(3)]
    _append(config, [*flood, Event("u0", raw[1], 9000.0)])
    with OnlineTrainer(config) as trainer:
        summary = trainer.run()
    assert summary["position"] == len(flood) + 1 and summary["n_items"] == base.model.n_items
    assert trainer.examples.histories.get("u0")[-2:] == [1, 2]  # known items still train
    with pytest.raises(ValueError, match="unknown_items must be one of"):
        config_for(unknown_items="maybe")


def test_publishes_every_n_events(config_for: Any) -> None:
    config = config_for(events_per_step=5, publish_every_events=10)
    _append(config, [Event(f"u{k % 7}", str(1 + k % 11), float(k)) for k in range(30)])
    with OnlineTrainer(config) as trainer:
        trainer.run()
        assert len(trainer.published) == 3 and trainer.last_publish_time is not None
    manifests = _manifests(config)
    assert [m["extra"]["offset"] for m in manifests[1:]] == [10, 20, 30]
    assert [m["parent"] for m in manifests[1:]] == [m["version"] for m in manifests[:-1]]
    with open_event_log(config.event_log) as event_log:
        assert event_log.committed(config.consumer) == 30


def test_publishes_every_t_seconds_and_only_when_something_is_new(config_for: Any) -> None:
    config = config_for(events_per_step=4, publish_every_seconds=1e-6)
    _append(config, [Event(f"u{k % 5}", str(1 + k % 9), float(k)) for k in range(12)])
    with OnlineTrainer(config) as trainer:
        trainer.run()
    assert [m["extra"]["offset"] for m in _manifests(config)[1:]] == [4, 8, 12]
    idle = config_for(publish_every_seconds=1e-6, stop_when_idle=False, max_seconds=0.3, block_ms=20)
    with OnlineTrainer(idle) as trainer:
        summary = trainer.run()
    assert summary["versions_published"] == [] and len(_manifests(config)) == 4


def test_clean_restart_resumes_exactly(config_for: Any, tmp_path: Path, base_run: Path) -> None:
    events = [Event(f"u{k % 9}", str(1 + (k * 7) % 23), float(k)) for k in range(48)]
    config = config_for(max_events=24)
    _append(config, events)
    with OnlineTrainer(config) as trainer:
        assert trainer.run()["position"] == 24
    with OnlineTrainer(config_for()) as trainer:
        assert trainer.position == 24 and trainer.events_trained == 24
        trainer.run()
        resumed = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trained = [(r["from"], r["to"]) for r in _records(config, "train")]
    assert [r["position"] for r in _records(config, "start")] == [0, 24]
    assert trained == [(k, k + 7) for k in range(1, 48, 8)]  # each event once, in order
    # the same stream without the restart ends with the same weights: the resume is exact
    ModelRegistry(tmp_path / "straight-registry").publish_run(base_run)
    straight = config_for(registry=tmp_path / "straight-registry", state_dir=tmp_path / "straight", consumer="straight")
    with OnlineTrainer(straight) as trainer:
        trainer.run()
        for name, value in trainer.model.state_dict().items():
            torch.testing.assert_close(value, resumed[name], rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_kill_9_at_random_points_loses_no_event(config_for: Any) -> None:
    rng = random.Random(0)
    live = config_for(events_per_step=4, publish_every_events=12, block_ms=50, stop_when_idle=False,
                      max_seconds=60.0, replay_ratio=1.0)
    events = [Event(f"u{k % 13}", str(1 + (k * 5) % 41) if k % 97 else f"new-{k}", float(k)) for k in range(300)]
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["seekrec.online.trainer"])
    committed_at_kill, appended = [], 0
    with open_event_log(live.event_log) as event_log:
        for round_ in range(4):
            child = ctx.Process(target=run_online_trainer, args=(live,), daemon=True)
            child.start()
            deadline = time.monotonic() + 30
            while len(_records(live, "start")) <= round_ and child.is_alive() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert child.is_alive(), f"trainer round {round_} exited early with code {child.exitcode}"
            kill_at = time.monotonic() + rng.uniform(0.2, 0.8)
            while time.monotonic() < kill_at:  # the stream keeps flowing while the trainer runs
                chunk = rng.randint(0, 6)
                event_log.append(events[appended : appended + chunk])
                appended = min(len(events), appended + chunk)
                time.sleep(0.02)
            os.kill(child.pid, signal.SIGKILL)
            child.join()
            committed_at_kill.append((event_log.committed(live.consumer), appended))
        event_log.append(events[appended:])
        end = event_log.end_offset()
        final = ctx.Process(target=run_online_trainer, args=(config_for(stop_when_idle=True, block_ms=0),),
                            daemon=True)
        final.start()
        final.join(60)
        assert final.exitcode == 0
        assert event_log.committed(live.consumer) == end == len(events)
    starts = [r["position"] for r in _records(live, "start")]
    assert len(starts) == 5
    # each restart begins at or after what was committed before its kill: nothing committed is lost
    assert all(start >= committed for start, (committed, _) in zip(starts[1:], committed_at_kill))
    commits = [r["position"] for r in _records(live, "commit")]
    assert commits == sorted(commits) and [c for c, _ in committed_at_kill] == sorted(c for c, _ in committed_at_kill)
    trained: list[int] = []
    for record in _records(live, "train"):
        trained.extend(range(record["from"], record["to"] + 1))
    assert set(trained) == set(range(1, end + 1))  # at least once ...
    assert len(trained) > end  # ... and some uncommitted tail was trained again after a kill
    assert any(committed < appended for committed, appended in committed_at_kill), "no kill landed mid-stream"
    manifests = _manifests(live)
    assert manifests[-1]["extra"]["offset"] == end
    n_new = sum(e.item_id.startswith("new-") for e in events)
    base_items = len(Catalog.from_bytes((Path(live.state_dir) / BASE_CATALOG_FILE).read_bytes()).items)
    assert manifests[-1]["model_config"]["n_items"] == base_items + n_new


def test_growing_the_item_table_keeps_optimizer_state() -> None:
    model = build_model("sasrec", {"dim": 8, "n_layers": 1, "max_len": 4}, 5)
    config = TrainConfig(lr=1e-2, warmup_steps=0)
    optimizer = build_optimizer(model, config)
    model(torch.tensor([[1, 2, 3, 4]])).sum().backward()
    optimizer.step()
    before = {name: {k: v.clone() for k, v in optimizer.state[p].items()} for name, p in model.named_parameters()}
    grown = grow_items_keeping_state(model, optimizer, 7, config)
    assert model.n_items == 7
    for name, param in model.named_parameters():
        state = grown.state[param]
        for key, value in before[name].items():
            if key == "step" or value.shape == param.shape:
                assert torch.equal(state[key], value), (name, key)
            else:  # the item table: old rows carried over, two new rows with zero moments
                assert torch.equal(state[key][:6], value) and not state[key][6:].any(), (name, key)


def test_refuses_unsafe_starts(config_for: Any, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="publish_every_seconds"):
        config_for(publish_every_seconds=0)
    config = config_for()
    _append(config, [Event("u1", "1", 1.0), Event("u1", "2", 2.0)])
    with OnlineTrainer(config) as trainer:
        with pytest.raises(RuntimeError, match="another online trainer"):
            OnlineTrainer(config)
        trainer.run()
    with pytest.raises(ValueError, match="published by an online trainer"):
        OnlineTrainer(config_for(state_dir=tmp_path / "other", consumer="other"))
    with pytest.raises(ValueError, match="holds no checkpoint"):
        OnlineTrainer(config_for(state_dir=tmp_path / "lost"))


def test_a_redis_outage_pauses_training_instead_of_killing_it(config_for: Any, throwaway_redis: Any) -> None:
    import threading

    url = f"{throwaway_redis.url}?stream=faults:events&socket_timeout=0.5"
    config = config_for(event_log=url, stop_when_idle=False, block_ms=100, max_events=16)
    with open_event_log(url) as event_log:
        event_log.append([Event(f"u{k}", "1", 1000.0 + k) for k in range(8)])
    result: dict[str, Any] = {}
    with OnlineTrainer(config) as trainer:
        runner = threading.Thread(target=lambda: result.update(trainer.run()))
        runner.start()
        deadline = time.monotonic() + 60
        while trainer.position < 8:
            assert time.monotonic() < deadline and runner.is_alive()
            time.sleep(0.05)
        throwaway_redis.pause()  # reads time out ...
        time.sleep(2.0)
        throwaway_redis.resume()
        assert runner.is_alive()  # ... and the trainer waits them out
        with open_event_log(url) as event_log:
            event_log.append([Event(f"v{k}", "2", 2000.0 + k) for k in range(8)])
        runner.join(60)
    assert not runner.is_alive() and result["position"] == 16 and result["events_this_run"] == 16
    assert _records(config, "outage") and _records(config, "recovered")


def test_an_outage_between_reads_does_not_stop_training(config_for: Any) -> None:
    """The log can go away after a read succeeded, while the step is logged (the soak found this: the
    step's lag figure asked the log for its end and the trainer died with exit code 2)."""
    config = config_for(stop_when_idle=True, max_events=8)
    with open_event_log(config.event_log) as event_log:
        event_log.append([Event(f"u{k}", "1", 1000.0 + k) for k in range(8)])
    with OnlineTrainer(config) as trainer:
        def unavailable() -> int:
            raise EventLogUnavailableError("the log is down between two reads")

        trainer.events.end_offset = unavailable  # type: ignore[method-assign]
        result = trainer.run()
    assert result["position"] == 8 and result["lag"] is None
    assert all(r.get("lag") is None for r in _records(config, "train"))


def test_a_trainer_started_before_redis_waits_for_it(config_for: Any, throwaway_redis: Any) -> None:
    import threading

    url = f"{throwaway_redis.url}?stream=start:events&socket_timeout=0.5"
    with open_event_log(url) as event_log:
        event_log.append([Event(f"u{k}", "1", 1000.0 + k) for k in range(4)])
    throwaway_redis.pause()  # down when the trainer starts
    result: dict[str, Any] = {}
    config = config_for(event_log=url, stop_when_idle=True, block_ms=100, max_events=4)
    runner = threading.Thread(target=lambda: result.update(run_online_trainer(config)))
    runner.start()
    time.sleep(2.0)
    assert runner.is_alive() and not result, "it waits instead of exiting"
    throwaway_redis.resume()
    runner.join(60)
    assert not runner.is_alive() and result["position"] == 4


CONTEXT_FLAGS = ["model.time_features=true", "model.action_features=true", "model.relative_time_bias=true"]


def test_context_windows_align_times_and_values_with_items() -> None:
    """Each online example of a model with event-time inputs carries its events' times and values at the same
    positions as their items, and as query time the time of the event each position predicts (the target's
    time at the last), as ``SequenceDataset.batch`` builds offline windows."""
    from seekrec.data.schema import IdMap
    from seekrec.online.event_log import LoggedEvent
    from seekrec.online.histories import UserHistories
    from seekrec.online.updates import ReplayBuffer, consume_events, rows_to_batch

    catalog = Catalog.from_data(IdMap.fit(["a", "b", "c"]), torch.tensor([1]).numpy())
    hist = UserHistories(4)
    events = [LoggedEvent("u", item, 100.0 * (k + 1), value=float(k + 1), offset=k + 1)
              for k, item in enumerate(["a", "b", "c", "a", "b"])]
    rows, max_ts = consume_events(events, hist, catalog, width=4, with_context=True)
    assert max_ts == 500.0 and len(rows) == 4  # the first event has no history: no row
    assert rows.items[-1].tolist() == [2, 3, 1, 2] and rows.times[-1].tolist() == [200, 300, 400, 500]
    assert rows.values[-1].tolist() == [2.0, 3.0, 4.0, 5.0] and rows.items[0].tolist() == [0, 0, 1, 2]
    batch = rows_to_batch(rows)
    assert batch.context is not None and batch.target_ids[:, :-1].eq(0).all()
    assert batch.context.times[0].tolist() == [0, 0, 100] and batch.context.query_times[0].tolist() == [0, 0, 200]
    assert batch.context.query_times[-1].tolist() == [300, 400, 500]  # each position: its next event's time
    assert batch.context.values[-1].tolist() == [2.0, 3.0, 4.0]
    plain, _ = consume_events([LoggedEvent("v", "a", 1.0, offset=6), LoggedEvent("v", "b", 2.0, offset=7)], hist,
                              catalog, width=4)
    assert plain.times is None and rows_to_batch(plain).context is None  # id-only models: rows as before
    buffer = ReplayBuffer(3, 4, with_context=True)
    buffer.push(rows)
    sampled = buffer.sample(5, torch.Generator().manual_seed(0))
    assert len(buffer) == 3 and all(sampled.times[r, -1] == 100 * (sampled.items[r, -1] % 3 + 3) for r in range(5))


def test_trains_and_publishes_a_model_with_event_time_inputs(tmp_path: Path, sim_data_dir: Path) -> None:
    run = tmp_path / "context-run"
    train_experiment(ExperimentConfig.load(None, [*BASE_OVERRIDES, *CONTEXT_FLAGS]), sim_data_dir, run)
    ModelRegistry(tmp_path / "registry").publish_run(run)
    config = OnlineTrainerConfig(registry=tmp_path / "registry", event_log=f"sqlite://{tmp_path / 'events.db'}",
                                 dataset=sim_data_dir, state_dir=tmp_path / "state", device="cpu", block_ms=0,
                                 stop_when_idle=True, events_per_step=8, publish_every_events=20,
                                 publish_every_seconds=3600.0, threads=1, replay_ratio=1.0)
    catalog = Catalog.from_bytes((ModelRegistry(config.registry).load().directory / CATALOG_FILE).read_bytes())
    raw = catalog.items.decode([1, 2, 3])
    _append(config, [Event(f"ctx-{u}", raw[k % 3], 2_000_000_000.0 + 3600 * k, value=float(k % 5))
                     for k in range(6) for u in range(4)] + [Event("ctx-0", "new-item", 2_000_100_000.0)])
    with OnlineTrainer(config) as trainer:
        summary = trainer.run()
        assert trainer.examples.replay.rows.times is not None
    assert summary["position"] == 25 and summary["steps"] >= 2 and summary["versions_published"]
    current = ModelRegistry(config.registry).load()
    assert current.model.config.needs_context and current.model.n_items == len(catalog.items) + 1
    assert all(math.isfinite(r["loss"]) for r in _records(config, "train") if "loss" in r)


def test_trains_grows_and_resumes_a_model_with_item_side_features(tmp_path: Path, sim_data_dir: Path) -> None:
    run = tmp_path / "side-run"
    train_experiment(ExperimentConfig.load(None, [*BASE_OVERRIDES, "model.use_item_features=true"]), sim_data_dir, run)
    ModelRegistry(tmp_path / "registry").publish_run(run)
    config = OnlineTrainerConfig(registry=tmp_path / "registry", event_log=f"sqlite://{tmp_path / 'events.db'}",
                                 dataset=sim_data_dir, state_dir=tmp_path / "state", device="cpu", block_ms=0,
                                 stop_when_idle=True, events_per_step=8, publish_every_events=10,
                                 publish_every_seconds=3600.0, threads=1, replay_ratio=1.0)
    base = ModelRegistry(config.registry).load()
    raw = Catalog.from_bytes((base.directory / CATALOG_FILE).read_bytes()).items.decode([1, 2, 3])
    _append(config, [Event(f"side-{u}", raw[k % 3], 1000.0 + 10 * k) for k in range(4) for u in range(3)]
            + [Event("side-0", "new-item", 2000.0)])
    with OnlineTrainer(config) as trainer:
        trainer.run()
    _append(config, [Event("side-1", raw[0], 3000.0 + k) for k in range(10)])
    with OnlineTrainer(config) as trainer:  # resumes: the model is rebuilt and the buffer comes from the checkpoint
        summary = trainer.run()
    assert summary["position"] == 23
    current = ModelRegistry(config.registry).load()
    n = base.model.n_items
    assert current.model.n_items == n + 1 and base.model.item_features.sum() > 0
    assert torch.equal(current.model.item_features[: n + 1], base.model.item_features)
    assert torch.equal(current.model.item_features[n + 1], torch.zeros(base.model.item_features.shape[1]))


class _Odd:
    """A user filter (``UserFilter``): the users whose id ends in an odd digit."""

    name = "test=odd"

    def __call__(self, user_id: str) -> bool:
        return int(user_id[-1]) % 2 == 1


def test_a_per_arm_learner_trains_on_its_users_and_publishes_to_its_channel(config_for: Any, tmp_path: Path) -> None:
    events = [Event(f"u{k % 10}", str(1 + (k * 7) % 23), float(k)) for k in range(60)]
    config = config_for(channel="odd", consumer="odd", events_per_step=60)
    _append(config, [*events, Event("u0", "seen-by-an-even-user-only", 99.0)])
    registry = ModelRegistry(config.registry)
    base = registry.current()
    with OnlineTrainer(config, _Odd()) as trainer:
        summary = trainer.run()
        histories = trainer.examples.histories
        assert histories.get("u0") and histories.get("u1")  # every user's events still build histories
    # each user's first event has no history to condition on: 5 odd users x (6 - 1) examples
    assert [r["examples"] for r in _records(config, "train")] == [25, 0]  # then u0's event: an even user
    assert registry.current() == base  # CURRENT is left to the shared learner
    assert registry.channel("odd") == summary["current_version"] != base
    manifest = registry.manifest(registry.channel("odd"))
    assert manifest["extra"]["traffic"] == "test=odd"
    assert summary["n_items"] == base_items(registry, base) + 1  # ids match an unfiltered replay
    with pytest.raises(ValueError, match="trained on the traffic of test=odd, not every user"):
        OnlineTrainer(config)
    with pytest.raises(ValueError, match="channel name"):
        config_for(channel="no/slashes")


def base_items(registry: ModelRegistry, version: str) -> int:
    return int(registry.manifest(version)["model_config"]["n_items"])


def test_metrics_port_exports_throughput_loss_lag_and_publishing(config_for: Any) -> None:
    import httpx

    from seekrec.serving.process import free_port

    port = free_port()
    config = config_for(events_per_step=5, publish_every_events=10, metrics_port=port)
    _append(config, [Event(f"u{k % 7}", str(1 + k % 11), float(k)) for k in range(30)])
    with OnlineTrainer(config) as trainer:
        trainer.run()
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    assert float(samples["seekrec_trainer_events_total"]) == 30
    assert 0 < float(samples["seekrec_trainer_steps_total"]) <= 6  # a read whose events make no example: no step
    assert float(samples["seekrec_trainer_versions_published_total"]) == 3
    assert float(samples["seekrec_trainer_position"]) == 30 and float(samples["seekrec_trainer_lag"]) == 0
    assert time.time() - float(samples["seekrec_trainer_last_publish_timestamp_seconds"]) < 60
    assert math.isfinite(float(samples["seekrec_trainer_loss"])) and float(samples["process_cpu_seconds_total"]) > 0
    with pytest.raises(httpx.ConnectError):  # closing the trainer closes its port
        httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
