"""``load_weights``: a file that does not fit its module is an error naming the file, never a half load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file, save_model
from torch import nn

from seekrec.models.weights import WeightsError, load_weights


def test_loads_a_fitting_file_exactly(tmp_path: Path) -> None:
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    save_model(source, str(tmp_path / "w.safetensors"))
    assert load_weights(target, tmp_path / "w.safetensors") is target
    torch.testing.assert_close(target.weight, source.weight, rtol=0, atol=0)


@pytest.mark.parametrize(("tensors", "message"), [
    ({"weight": torch.zeros(2, 3)}, r"missing \['bias'\]"),
    ({"weight": torch.zeros(2, 3), "bias": torch.zeros(2), "extra": torch.zeros(1)}, r"unexpected \['extra'\]"),
    ({"weight": torch.zeros(4, 3), "bias": torch.zeros(4)}, "does not fit"),
])
def test_a_file_that_does_not_fit_is_named(tmp_path: Path, tensors: dict[str, torch.Tensor], message: str) -> None:
    path = tmp_path / "w.safetensors"
    save_file(tensors, str(path))
    with pytest.raises(WeightsError, match=message) as info:
        load_weights(nn.Linear(3, 2), path)
    assert str(path) in str(info.value)


def test_missing_and_garbage_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="missing"):
        load_weights(nn.Linear(3, 2), tmp_path / "absent.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(WeightsError, match="junk.safetensors: unreadable"):
        load_weights(nn.Linear(3, 2), tmp_path / "junk.safetensors")
