"""An ``llm_rerank`` version (SASRec retrieval -> fine-tuned LLM re-ranking): published from an LLM run, loaded,
served beside a sequence model through the HTTP app; runs whose prompts need more than item ids are refused."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from seekrec.data.schema import InteractionData
from seekrec.publish import publish_path
from seekrec.registry import ModelRegistry, RegistryError
from seekrec.serving.app import create_app
from seekrec.serving.loading import load_predictor
from seekrec.serving.predictor import ItemsNotAddableError, LoadContext, Predictor, Query
from seekrec.serving.settings import ArmSettings, ExperimentSettings, ServeSettings
from tests.pipeline.llm_helpers import one_torch_thread, write_llm_run

pytest.importorskip("transformers")

R = 10  # candidates the LLM re-ranks


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def llm_run(sim_data_dir: Path, trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fine-tuned LLM run (tiny random DeepSeek-V3) whose retriever is the serving tests' SASRec run."""
    return write_llm_run(tmp_path_factory.mktemp("llm-run"), InteractionData.read(sim_data_dir), trained_run,
                         n_candidates=R, weight=0.5)


def _histories(data_dir: Path, n: int) -> dict[str, list[str]]:
    """The first 8 raw items of the first ``n`` users (raw user id -> raw item ids, oldest first)."""
    data = InteractionData.read(data_dir)
    users, items, timestamps = data.interactions()
    out = {}
    for user in range(1, n + 1):
        mine = np.flatnonzero(users == user)
        mine = mine[np.argsort(timestamps[mine], kind="stable")][:8]
        out[str(data.user_ids.raw[user - 1])] = [str(r) for r in data.item_ids.raw[items[mine] - 1].tolist()]
    return out


def test_published_llm_run_loads_and_reranks_the_retrievers_candidates(registry: ModelRegistry, llm_run: Path,
                                                                       sim_data_dir: Path) -> None:
    from seekrec.llm.prompts import History
    from seekrec.serving.llm_predictor import LLMPredictor

    version = publish_path(registry, llm_run, promote=False)
    manifest = registry.manifest(version)
    assert manifest["kind"] == "llm_rerank" and manifest["model_name"] == "sasrec->llm(causal)"
    assert {"retriever.safetensors", "catalog.json", "llm/llm.json", "llm/items.json"} <= set(manifest["files"])
    assert manifest["extra"]["n_candidates"] == R and manifest["extra"]["weight"] == 0.5
    predictor = load_predictor(registry, version, LoadContext(data_dir=sim_data_dir))
    assert isinstance(predictor, LLMPredictor) and isinstance(predictor, Predictor)
    facts = predictor.describe()
    assert facts["version"] == version and facts["n_items"] == predictor.n_items and facts["index"].endswith(
        f"top {R} -> llm")

    queries = [Query(user, tuple(predictor.catalog.items.encode(raws)), 5)
               for user, raws in _histories(sim_data_dir, 4).items()]
    recs = predictor.recommend(queries)
    for query, rec in zip(queries, recs, strict=True):
        assert not rec.fallback and rec.model_version == version and len(rec.item_ids) == 5
        assert not set(predictor.catalog.items.encode(list(rec.item_ids)).tolist()) & set(query.history)
        assert list(rec.scores) == sorted(rec.scores, reverse=True)
        # the list is the retriever's top R re-ordered by llm score + w * retrieval logit
        retrieved = predictor.retrieval.recommend([Query(query.user_id, query.history, R)])[0]
        ids = predictor.catalog.items.encode(list(retrieved.item_ids))
        items, scores = predictor.reranker.rerank(History(np.array(query.history)), ids,
                                                  np.array(retrieved.scores))
        assert list(rec.item_ids) == predictor.catalog.items.decode(items[:5])
        np.testing.assert_allclose(rec.scores, scores[:5], rtol=1e-5)
        alone = predictor.recommend([query])[0]  # batched as alone
        assert alone.item_ids == rec.item_ids and np.allclose(alone.scores, rec.scores, rtol=1e-5)
    wide = predictor.recommend([Query("wide", queries[0].history, R + 5)])[0]
    assert len(wide.item_ids) == R + 5  # k > R: the LLM re-ranks k candidates
    assert predictor.recommend([Query("cold", (), 5)])[0].fallback  # no history: popular items

    with pytest.raises(ItemsNotAddableError, match="re-ranks"):
        predictor.add_items({"new": {"title": "A New Film"}})
    predictor.observe([])
    predictor.follow_restarted_log()
    assert predictor.replay(None) == 0  # type: ignore[arg-type]  # nothing to catch up with: never reads


def test_runs_whose_prompts_need_ratings_or_times_are_refused(registry: ModelRegistry, llm_run: Path,
                                                              sim_data_dir: Path, trained_run: Path,
                                                              tmp_path: Path) -> None:
    from seekrec.pipeline.llm_bundle import LLM_DIR, LLM_RERANK_KIND, write_llm_bundle

    rated = write_llm_run(tmp_path / "rated", InteractionData.read(sim_data_dir), trained_run,
                          history_fields=("title", "rating"))
    with pytest.raises(RegistryError, match=r"render \['rating'\].*item ids only"):
        publish_path(registry, rated)
    # a bundle changed after its checks (an older seekrec, a hand edit) is refused at load, before the LLM loads
    bundle = write_llm_bundle(llm_run, tmp_path / "bundle")
    info = json.loads((bundle / LLM_DIR / "llm.json").read_text())
    info["prompt"]["history_fields"] = ["title", "recency"]
    (bundle / LLM_DIR / "llm.json").write_text(json.dumps(info))
    version = registry.publish_bundle(bundle, kind=LLM_RERANK_KIND, name="edited", promote=False)
    with pytest.raises(RegistryError, match=r"render \['recency'\]"):
        load_predictor(registry, version, LoadContext(data_dir=sim_data_dir))
    shutil.rmtree(bundle)


@pytest.fixture
def llm_ab_client(tmp_path: Path, registry: ModelRegistry, llm_run: Path, sim_data_dir: Path) -> TestClient:
    """Arm "sequence" serves the SASRec version v000001, arm "llm" the llm_rerank version (CURRENT)."""
    assert publish_path(registry, llm_run) == "v000002"
    settings = ServeSettings(registry=registry.root, event_log=str(tmp_path / "events.db"), data_dir=sim_data_dir,
                             poll_interval_s=0.05, max_wait_ms=1.0, background_start=False,
                             experiment=ExperimentSettings("seq-vs-llm", (ArmSettings("sequence", "v000001", 0.5),
                                                                          ArmSettings("llm", "current", 0.5))))
    with TestClient(create_app(settings)) as client:
        yield client


def test_the_llm_arm_serves_beside_a_sequence_model(llm_ab_client: TestClient, sim_data_dir: Path) -> None:
    client = llm_ab_client
    assert client.get("/readyz").json()["versions"] == {"sequence": "v000001", "llm": "v000002"}
    arms = {a["name"]: a for a in client.get("/version").json()["arms"]}
    assert arms["llm"]["index"].endswith("-> llm") and arms["sequence"]["version"] == "v000001"
    served = {"llm": None, "sequence": None}
    for user in range(1, 121):
        body = client.post("/recommend", json={"user_id": str(user), "k": 6}).json()
        served[body["arm"]] = served[body["arm"]] or (str(user), body)
        if all(served.values()):
            break
    user, body = served["llm"]
    assert body["model_version"] == "v000002" and not body["fallback"] and len(body["items"]) == 6
    ids = [item["item_id"] for item in body["items"]]
    assert len(set(ids)) == 6
    top = ids[0]
    response = client.post("/events", json={"events": [{"user_id": user, "item_id": top}]})
    assert response.status_code == 200
    again = client.post("/recommend", json={"user_id": user, "k": 6}).json()
    assert again["arm"] == "llm" and top not in [item["item_id"] for item in again["items"]]  # seen now
    refused = client.post("/items", json={"items": [{"item_id": "fresh", "title": "A Fresh Release"}]})
    assert refused.status_code == 409  # neither arm adds items by content


@pytest.mark.slow
def test_a_lora_finetune_run_publishes_merged_and_serves(registry: ModelRegistry, llm_run: Path, trained_run: Path,
                                                         sim_data_dir: Path, tmp_path: Path) -> None:
    """The real path: `seekrec llm finetune` (LoRA on the tiny DeepSeek-V3) -> publish (adapter merged) -> serve."""
    from seekrec.llm.finetune import FinetuneConfig, finetune
    from seekrec.llm.rerank import LLMReranker

    config = FinetuneConfig.load(None, [
        f"model.path={llm_run / 'model'}", f"retriever_run={trained_run}", "n_candidates=6", "n_negatives=3",
        "positions_per_user=1", "valid_users=12", "prompt.max_history=4", "prompt.token_budget=200", "lora.rank=4",
        "train.batch_size=32", "train.max_epochs=1", "train.warmup_steps=1", "train.device=cpu",
        "weights=[0.0, 0.5]"])
    run = tmp_path / "finetuned"
    finetune(config, sim_data_dir, run)
    version = publish_path(registry, run)
    manifest = registry.manifest(version)
    assert manifest["kind"] == "llm_rerank" and "llm/model/model.safetensors" in manifest["files"]
    assert not any(name.startswith("llm/adapter") for name in manifest["files"])  # merged for serving
    assert any(key.startswith("llm/test/") for key in manifest["metrics"])
    predictor = load_predictor(registry, version, LoadContext(data_dir=sim_data_dir))
    history = tuple(predictor.catalog.items.encode(next(iter(_histories(sim_data_dir, 1).values()))))
    rec = predictor.recommend([Query("u", history, 4)])[0]
    assert len(rec.item_ids) == 4 and not rec.fallback
    # the served LLM scores as the run itself does (merging and exporting changed nothing)
    from seekrec.llm.prompts import History

    original, served = LLMReranker.load(run), predictor.reranker
    items = np.arange(1, 7)
    np.testing.assert_allclose(served.scores(History(np.array(history)), items),
                               original.scores(History(np.array(history)), items), atol=1e-4)
