"""The only name -> class dispatch for models and losses.

Configs arrive as plain dicts (from TOML / checkpoint manifests); the factory turns them into the
validated config dataclass and the module. A sequence model's module is imported when it is first
asked for, so validating or building a SASRec never pays for ``transformers`` (the DeepSeek model's). Sequence models ("sasrec", "deepseek") are sized by the
data's ``n_items``; feature models ("two_tower", "din") by the fitted feature spec's per-side
``FeatureSchema`` and consume ``FeatureBatch`` inputs, so they have their own table and builder.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from seekrec.features.batch import FeatureBatch, FeatureSchema
from seekrec.models.din import DIN, DINConfig
from seekrec.models.layers.features import as_feature_schema
from seekrec.models.losses import (
    BCELoss,
    FullSoftmaxLoss,
    LossConfig,
    RetrievalLossConfig,
    RetrievalSoftmaxLoss,
    SampledSoftmaxLoss,
)
from seekrec.models.negatives import NegativeSampler
from seekrec.models.two_tower import TwoTower, TwoTowerConfig


@dataclass(frozen=True)
class _ModelEntry:
    """A sequence model by module and class names: ``<module>.<model_name>`` and its ``<model_name>Config``."""

    module: str
    model_name: str
    takes_item_features: bool

    @property
    def model_class(self) -> type[nn.Module]:
        return getattr(importlib.import_module(self.module), self.model_name)

    @property
    def config_class(self) -> type:
        return getattr(importlib.import_module(self.module), f"{self.model_name}Config")


_MODELS: dict[str, _ModelEntry] = {
    "sasrec": _ModelEntry("seekrec.models.sasrec", "SASRec", takes_item_features=True),
    "deepseek": _ModelEntry("seekrec.models.deepseek_rec", "DeepSeekRec", takes_item_features=True),
}


def model_names() -> tuple[str, ...]:
    """Registered model names."""
    return tuple(_MODELS)


def _entry(name: str) -> _ModelEntry:
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(_MODELS)}")
    return _MODELS[name]


def model_takes_item_features(name: str) -> bool:
    """Whether model ``name`` accepts ``item_features`` (side features per item)."""
    return _entry(name).takes_item_features


def model_config_class(name: str) -> type:
    """The config dataclass of model ``name``."""
    return _entry(name).config_class


def _check_keys(config_class: type, config_dict: Mapping[str, Any], what: str) -> None:
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(config_dict) - fields)
    if unknown:
        raise ValueError(f"unknown {what} config keys {unknown}; valid keys: {sorted(fields)}")


def build_model_config(name: str, config_dict: Mapping[str, Any], n_items: int) -> Any:
    """Validated config for ``name``; ``n_items`` comes from the data, and a conflicting
    ``n_items`` in ``config_dict`` is an error. Unknown keys are rejected by name."""
    config_class = _entry(name).config_class
    _check_keys(config_class, config_dict, name)
    if "n_items" in config_dict and config_dict["n_items"] != n_items:
        raise ValueError(
            f"{name} config has n_items={config_dict['n_items']} but the data has n_items={n_items}; "
            "drop n_items from the config or rebuild the vocabulary"
        )
    return config_class(**{**config_dict, "n_items": n_items})


def build_model(
    name: str, config_dict: Mapping[str, Any], n_items: int, *, item_features: Tensor | None = None
) -> nn.Module:
    """Model ``name`` ("sasrec" | "deepseek") from a plain config dict.

    ``item_features [N + 1, G]`` (multi-hot side features) is accepted by models that use them.
    """
    entry = _entry(name)
    config = build_model_config(name, config_dict, n_items)
    if item_features is None:
        return entry.model_class(config)
    if not entry.takes_item_features:
        raise ValueError(
            f"model {name!r} does not use item_features; drop them or pick one of "
            f"{[n for n, e in _MODELS.items() if e.takes_item_features]}"
        )
    return entry.model_class(config, item_features=item_features)


def _sampler(config: LossConfig, n_items: int, item_counts: Tensor | None) -> NegativeSampler:
    counts = item_counts if config.sampler == "popularity" else None
    return NegativeSampler(config.sampler, n_items, item_counts=counts)


_LOSSES: dict[str, Callable[[LossConfig, int, Tensor | None], nn.Module]] = {
    "bce": lambda c, n, counts: BCELoss(_sampler(c, n, counts), remove_accidental_hits=c.remove_accidental_hits),
    "sampled_softmax": lambda c, n, counts: SampledSoftmaxLoss(
        _sampler(c, n, counts),
        c.n_negatives,
        logq_correction=c.logq_correction,
        remove_accidental_hits=c.remove_accidental_hits,
    ),
    "full_softmax": lambda c, n, counts: FullSoftmaxLoss(),
}


def build_loss(config: LossConfig | Mapping[str, Any], n_items: int, *, item_counts: Tensor | None = None) -> nn.Module:
    """Loss module for ``config``; ``item_counts [N + 1]`` feed the popularity sampler (ignored
    otherwise, so a trainer may always pass them)."""
    if not isinstance(config, LossConfig):
        _check_keys(LossConfig, config, "loss")
        config = LossConfig(**config)
    return _LOSSES[config.name](config, n_items, item_counts)


@dataclass(frozen=True)
class _FeatureModelEntry:
    model_class: type[nn.Module]
    config_class: type
    takes_catalog: bool


_FEATURE_MODELS: dict[str, _FeatureModelEntry] = {
    "two_tower": _FeatureModelEntry(TwoTower, TwoTowerConfig, takes_catalog=False),
    "din": _FeatureModelEntry(DIN, DINConfig, takes_catalog=True),
}


def feature_model_names() -> tuple[str, ...]:
    """Registered models over ``FeatureBatch`` inputs."""
    return tuple(_FEATURE_MODELS)


def _feature_entry(name: str) -> _FeatureModelEntry:
    if name not in _FEATURE_MODELS:
        raise ValueError(f"unknown feature model {name!r}; valid names: {', '.join(_FEATURE_MODELS)}")
    return _FEATURE_MODELS[name]


def build_feature_model_config(
    name: str, config_dict: Mapping[str, Any], *, user: FeatureSchema, item: FeatureSchema
) -> Any:
    """Validated config for feature model ``name``; the schemas come from the fitted feature spec, and
    a conflicting ``user`` / ``item`` in ``config_dict`` (e.g. from an old manifest) is an error."""
    config_class = _feature_entry(name).config_class
    _check_keys(config_class, config_dict, name)
    for side, schema in (("user", user), ("item", item)):
        if side in config_dict and as_feature_schema(config_dict[side], f"{name}.{side}") != schema:
            raise ValueError(f"{name} config has a {side} schema that differs from the feature spec's; drop "
                             f"{side!r} from the config or refit the features")
    return config_class(**{**config_dict, "user": user, "item": item})


def build_feature_model(
    name: str,
    config_dict: Mapping[str, Any],
    *,
    user: FeatureSchema,
    item: FeatureSchema,
    catalog: FeatureBatch | None = None,
) -> nn.Module:
    """Feature model ``name`` ("two_tower" | "din") from a plain config dict and the per-side schemas.

    ``catalog`` (item features of ids ``0..N``, row i = item i) is passed to models that keep one
    (DIN, for the features of history items).
    """
    entry = _feature_entry(name)
    config = build_feature_model_config(name, config_dict, user=user, item=item)
    if catalog is None:
        return entry.model_class(config)
    if not entry.takes_catalog:
        raise ValueError(f"model {name!r} does not keep an item catalog; drop catalog= (pass it to the task) "
                         f"or use one of {[n for n, e in _FEATURE_MODELS.items() if e.takes_catalog]}")
    return entry.model_class(config, catalog=catalog)


def build_retrieval_loss(
    config: RetrievalLossConfig | Mapping[str, Any], n_items: int, *, item_counts: Tensor | None = None
) -> RetrievalSoftmaxLoss:
    """The two-tower loss; ``item_counts [N + 1]`` (training frequency) feed the log-Q correction and the
    popularity sampler."""
    if not isinstance(config, RetrievalLossConfig):
        _check_keys(RetrievalLossConfig, config, "retrieval loss")
        config = RetrievalLossConfig(**config)
    return RetrievalSoftmaxLoss(config, n_items, item_counts=item_counts)
