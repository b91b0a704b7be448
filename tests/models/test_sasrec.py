from __future__ import annotations

from typing import Any

import pytest
import torch

from seekrec.models.sasrec import SASRec, SASRecConfig

from .helpers import N_ITEMS, left_pad


def test_post_norm_variant_and_rmsnorm_run() -> None:
    torch.manual_seed(0)
    for overrides in ({"norm_first": False}, {"norm": "rmsnorm"}, {"ffn_dim": 48, "init": "default"}):
        model = SASRec(SASRecConfig(n_items=N_ITEMS, dim=16, max_len=8, **overrides)).eval()
        hidden = model(left_pad([[1, 2, 3], []], 5))
        assert torch.isfinite(hidden).all() and (hidden[:, :2] == 0).all()


def test_item_table_is_shared_between_input_and_output() -> None:
    model = SASRec(SASRecConfig(n_items=N_ITEMS, dim=16, max_len=8))
    torch.testing.assert_close(model.encode_items(torch.arange(N_ITEMS + 1)), model.embedding.item_table.weight)
    assert (model.encode_items(torch.tensor(0)) == 0).all(), "padding row stays zero after xavier init"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_items": 0}, "n_items"),
        ({"dim": 30, "n_heads": 4}, "divisible"),
        ({"dropout": -0.1}, "dropout"),
        ({"norm": "batchnorm"}, "norm"),
        ({"similarity": "l2"}, "similarity"),
        ({"temperature": 0.0}, "temperature"),
        ({"ffn_dim": 0}, "ffn_dim"),
        ({"init": "kaiming"}, "init"),
    ],
)
def test_config_validation(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SASRecConfig(**{"n_items": N_ITEMS, **overrides})


@pytest.mark.parametrize("norm_first", [True, False], ids=["pre-norm", "post-norm"])
@pytest.mark.parametrize("n_layers", [1, 3])
def test_encode_users_fast_path_equals_last_position_of_forward(norm_first: bool, n_layers: int) -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=N_ITEMS, dim=16, n_layers=n_layers, n_heads=2, max_len=8,
                                norm_first=norm_first)).eval()
    ids = torch.randint(1, N_ITEMS + 1, (5, 8))
    ids[1, :6] = 0  # left padding
    ids[2, :] = 0  # nothing at all
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_users(ids), model.forward(ids)[:, -1], rtol=1e-5, atol=1e-6)
