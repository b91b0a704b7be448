"""Registry version -> ``Predictor``: the one place that maps a manifest's ``kind`` to the class that
serves it. A new predictor kind is its class (with ``kind`` and ``load``) and one entry here."""

from __future__ import annotations

from seekrec.registry import ModelRegistry, RegistryError
from seekrec.serving.llm_predictor import LLMPredictor
from seekrec.serving.pipeline_predictor import PipelinePredictor
from seekrec.serving.predictor import LoadContext, Predictor
from seekrec.serving.sequence_predictor import SequencePredictor

PREDICTOR_KINDS = {cls.kind: cls for cls in (SequencePredictor, PipelinePredictor, LLMPredictor)}


def load_predictor(registry: ModelRegistry, version: str, context: LoadContext) -> Predictor:
    """Load (and checksum, and smoke-test) ``version`` with the predictor its manifest's kind names."""
    kind = registry.kind(version)
    predictor = PREDICTOR_KINDS.get(kind)
    if predictor is None:
        raise RegistryError(f"{version} is a {kind!r} artifact; this server serves {sorted(PREDICTOR_KINDS)}: "
                            "promote another version or upgrade seekrec")
    return predictor.load(registry, version, context)
