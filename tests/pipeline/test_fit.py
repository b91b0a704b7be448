import pytest
import torch

from seekrec.pipeline.fit import ExampleEpochs, fit_feature_model
from seekrec.training.config import TrainConfig


class Numbers:
    """Examples 0..n-1; a batch is its indices plus one draw from the generator (a stand-in negative)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple[list[int], int]:
        return index.tolist(), int(torch.randint(1000, (1,), generator=generator))


def test_epochs_are_seeded_micro_batched_and_resumable_at_any_batch() -> None:
    epochs = ExampleEpochs(Numbers(10), TrainConfig(batch_size=4, grad_accum=2, seed=3))
    first = list(epochs.epoch(1, 0))
    assert epochs.steps_per_epoch == 3 == len(first)
    assert [len(group) for group in first] == [2, 2, 1] and all(len(m[0]) <= 2 for g in first for m in g)
    assert sorted(i for group in first for micro in group for i in micro[0]) == list(range(10))
    assert list(epochs.epoch(1, 0)) == first, "the order and the draws depend on seed + epoch alone"
    assert list(epochs.epoch(1, 2)) == first[2:]
    assert list(epochs.epoch(2, 0)) != first


def test_feature_runs_refuse_what_they_cannot_do(tmp_path) -> None:
    with pytest.raises(ValueError, match="train.checkpoint_every"):
        fit_feature_model(torch.nn.Linear(2, 1), object(), Numbers(4), dict, TrainConfig(checkpoint_every=5), tmp_path)
    with pytest.raises(ValueError, match="train.compile"):
        fit_feature_model(torch.nn.Linear(2, 1), object(), Numbers(4), dict, TrainConfig(compile=True), tmp_path)
    with pytest.raises(ValueError, match="training split is empty"):
        fit_feature_model(torch.nn.Linear(2, 1), object(), Numbers(0), dict, TrainConfig(), tmp_path)
