from __future__ import annotations

import math

import pytest
import torch

from seekrec.models.negatives import NegativeSampler


def test_seeded_generator_makes_sampling_reproducible() -> None:
    counts = torch.arange(11.0)
    for sampler in (NegativeSampler("uniform", 10), NegativeSampler("popularity", 10, item_counts=counts)):
        first = sampler.sample((50,), torch.Generator().manual_seed(3))
        again = sampler.sample((50,), torch.Generator().manual_seed(3))
        other = sampler.sample((50,), torch.Generator().manual_seed(4))
        assert torch.equal(first, again)
        assert not torch.equal(first, other)
        assert first.min() >= 1 and first.max() <= 10, "never padding, never out of range"


def test_popularity_frequencies_and_log_q() -> None:
    counts = torch.tensor([0.0, 0.0, 9.0, 29.0, 59.0])  # index 0 = padding
    sampler = NegativeSampler("popularity", 4, item_counts=counts)
    expected = torch.tensor([1.0, 10.0, 30.0, 60.0]) / 101.0  # add-one smoothing
    draws = sampler.sample((200_000,), torch.Generator().manual_seed(0))
    freq = torch.bincount(draws, minlength=5)[1:].double() / draws.numel()
    torch.testing.assert_close(freq, expected.double(), atol=5e-3, rtol=0)
    torch.testing.assert_close(sampler.log_q(torch.tensor([1, 2, 3, 4])), expected.log())
    assert sampler.log_q(torch.tensor(0)).item() == -math.inf


def test_uniform_log_q() -> None:
    sampler = NegativeSampler("uniform", 8)
    assert sampler.log_q(torch.tensor([1, 8])).tolist() == pytest.approx([-math.log(8)] * 2)


def test_sampler_errors() -> None:
    with pytest.raises(ValueError, match="item_counts"):
        NegativeSampler("popularity", 4)
    with pytest.raises(ValueError, match="shape"):
        NegativeSampler("popularity", 4, item_counts=torch.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        NegativeSampler("popularity", 2, item_counts=torch.tensor([0.0, -1.0, 2.0]))
    with pytest.raises(ValueError, match="uniform"):
        NegativeSampler("uniform", 2, item_counts=torch.ones(3))
    with pytest.raises(ValueError, match="sampler"):
        NegativeSampler("zipf", 2)
    with pytest.raises(ValueError, match="Generator"):
        NegativeSampler("uniform", 2).sample((3,), None)
