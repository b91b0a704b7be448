"""Every predictor kind satisfies the one ``Predictor`` protocol the server relies on."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekrec.registry import MODEL_KIND, ModelRegistry, RegistryError
from seekrec.serving.loading import PREDICTOR_KINDS, load_predictor
from seekrec.serving.pipeline_predictor import PipelinePredictor
from seekrec.serving.predictor import ItemsNotAddableError, LoadContext, Predictor, Query
from seekrec.serving.sequence_predictor import SequencePredictor


def test_both_kinds_load_through_one_table_and_satisfy_the_protocol(registry: ModelRegistry, pipeline_bundle: Path,
                                                                   sim_data_dir: Path) -> None:
    pipeline_version = registry.publish_bundle(pipeline_bundle, kind="pipeline", name="p", promote=False)
    context = LoadContext(data_dir=sim_data_dir)
    sequence = load_predictor(registry, "v000001", context)
    pipeline = load_predictor(registry, pipeline_version, context)
    assert type(sequence) is SequencePredictor and type(pipeline) is PipelinePredictor
    assert set(PREDICTOR_KINDS) == {MODEL_KIND, "pipeline", "llm_rerank"}  # llm_rerank: test_llm_predictor.py
    for predictor in (sequence, pipeline):
        assert isinstance(predictor, Predictor)
        facts = predictor.describe()
        assert facts["version"] == predictor.version and facts["n_items"] == predictor.n_items
        cold, warm = predictor.recommend([Query("nobody", (), 3), Query("someone", (1, 2), 3)])
        assert cold.fallback and not warm.fallback and len(cold.item_ids) == 3
    with pytest.raises(ItemsNotAddableError, match="pipeline"):
        sequence.add_items({"new": {"title": "t"}})
    assert sequence.replay(None) == 0  # type: ignore[arg-type]  # nothing to catch up with: never reads


def test_an_unknown_kind_is_refused_by_name(registry: ModelRegistry, tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.json").write_text("{}")
    version = registry.publish_bundle(tmp_path / "b", kind="llm", name="x", promote=False)
    with pytest.raises(RegistryError, match="'llm'"):
        load_predictor(registry, version, LoadContext())
