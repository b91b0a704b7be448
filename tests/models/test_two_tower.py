from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seekrec.features.batch import FeatureBatch, FeatureSchema
from seekrec.models.losses import RetrievalLossConfig, RetrievalSoftmaxLoss, retrieval_softmax_logits
from seekrec.models.factory import build_retrieval_loss
from seekrec.models.retrieval_task import RetrievalBatch, RetrievalTask
from seekrec.models.two_tower import TwoTower, TwoTowerConfig
from seekrec.training.config import TrainConfig
from seekrec.training.distributed import DistContext
from seekrec.training.step import TrainStep, build_optimizer, count_targets

from .feature_helpers import ITEM, N_ITEMS, USER, make_feature_model, random_batch, random_catalog

# --- model ---------------------------------------------------------------------------------------------


def test_towers_give_unit_vectors_and_scores_divide_by_the_temperature() -> None:
    model = make_feature_model("two_tower").eval()
    user, item = random_batch(USER, 5, seed=0), random_batch(ITEM, 7, seed=1)
    with torch.no_grad():
        users, items = model.encode_users(user), model.encode_items(item)
        out = model(user, item)
    assert users.shape == (5, 16) and items.shape == (7, 16)
    torch.testing.assert_close(users.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(out.users, users)
    torch.testing.assert_close(model.score(users, items), users @ items.T / 0.05)
    with torch.no_grad():
        model.log_temperature.fill_(-100.0)
    assert model.temperature.item() == pytest.approx(0.01), "clamped at min_temperature"


def test_encode_catalog_in_chunks_equals_one_pass() -> None:
    model = make_feature_model("two_tower").eval()
    catalog = random_catalog(seed=2)
    with torch.no_grad():
        whole = model.encode_items(catalog)
    torch.testing.assert_close(model.encode_catalog(catalog, chunk_size=7), whole)


def test_id_dropout_only_in_training() -> None:
    model = make_feature_model("two_tower", id_dropout=0.5)
    with torch.no_grad():  # give ids an effect (the table starts at zero)
        model.item_features.embeddings["item_id"].weight[1:].normal_()
    item = random_batch(ITEM, 64, seed=3)
    no_id = FeatureBatch({**item.categorical, "item_id": torch.zeros_like(item.categorical["item_id"])},
                         item.dense, item.text)
    model.eval()
    with torch.no_grad():
        with_ids, without_ids = model.encode_items(item), model.encode_items(no_id)
        torch.testing.assert_close(model.encode_items(item), with_ids, msg="eval is deterministic")
        model.train()
        torch.manual_seed(0)
        dropped = torch.isclose(model.encode_items(item), without_ids, atol=1e-6).all(dim=-1)
    assert 16 < int(dropped.sum()) < 48, "about half the rows encoded as if the id were missing"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sequence_pooling": "max"}, "sequence_pooling"),
        ({"embed_dim": 6, "n_heads": 4}, "divisible"),
        ({"id_dropout": 1.0}, "id_dropout"),
        ({"item_id_column": "movie"}, "item_id_column"),
        ({"temperature": 5.0}, "max_temperature"),
        ({"hidden_dims": [0]}, "hidden_dims"),
    ],
)
def test_config_errors_say_what_to_change(overrides: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TwoTowerConfig(USER, ITEM, **overrides)


# --- loss ----------------------------------------------------------------------------------------------


def test_logq_correction_on_a_hand_made_batch() -> None:
    scores = torch.tensor([[2.0, 0.0], [1.0, 3.0]])  # user i vs the positive of row j
    q = torch.tensor([0.75, 0.25])  # item 1 is three times as frequent as item 2
    logits = retrieval_softmax_logits(scores, torch.tensor([1, 2]), log_count_batch=q.log())
    expected_row0 = -(2 - math.log(0.75)) + math.log(math.exp(2 - math.log(0.75)) + math.exp(0 - math.log(0.25)))
    expected_row1 = -(3 - math.log(0.25)) + math.log(math.exp(1 - math.log(0.75)) + math.exp(3 - math.log(0.25)))
    loss = F.cross_entropy(logits, torch.arange(2), reduction="none")
    torch.testing.assert_close(loss, torch.tensor([expected_row0, expected_row1]))
    plain = F.cross_entropy(scores, torch.arange(2), reduction="none")
    assert loss[0] > plain[0], "a popular positive is no longer favoured by its popularity"
    assert loss[1] < plain[1], "the popular item's in-batch negative pressure is discounted"
    # the loss module: add-one smoothed counts (2, 0) give the same q; log B shifts every logit alike
    module = RetrievalSoftmaxLoss(RetrievalLossConfig(), 2, item_counts=torch.tensor([0.0, 2.0, 0.0]))
    torch.testing.assert_close(module(scores, torch.tensor([1, 2])), loss.mean())
    off = RetrievalSoftmaxLoss(RetrievalLossConfig(logq_correction=False), 2)
    torch.testing.assert_close(off(scores, torch.tensor([1, 2])), plain.mean())


def test_mixed_negatives_are_corrected_by_expected_counts() -> None:
    counts = torch.tensor([0.0, 5.0, 1.0, 0.0, 2.0])  # q = (6, 2, 1, 3) / 12 for items 1..4
    loss = build_retrieval_loss({"n_negatives": 8, "sampler": "uniform"}, 4, item_counts=counts)
    ids = torch.tensor([1, 3])
    q = torch.tensor([6.0, 1.0]) / 12
    torch.testing.assert_close(loss.log_counts(ids, batch_size=4), torch.log(4 * q + 8 * 0.25))
    in_batch_only = build_retrieval_loss({}, 4, item_counts=counts)
    torch.testing.assert_close(in_batch_only.log_counts(ids, batch_size=4), torch.log(4 * q))
    with pytest.raises(ValueError, match="item_counts"):
        build_retrieval_loss({}, 4)
    with pytest.raises(ValueError, match="no negatives"):
        RetrievalLossConfig(in_batch=False, n_negatives=0)


def test_accidental_hits_are_removed() -> None:
    scores = torch.randn(3, 3)
    sampled = torch.randn(3, 2)
    ids, sampled_ids = torch.tensor([5, 5, 7]), torch.tensor([5, 9])
    logits = retrieval_softmax_logits(scores, ids, sampled, sampled_ids)
    masked = logits == torch.finfo(logits.dtype).min
    expected = torch.tensor([[0, 1, 0, 1, 0], [1, 0, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(masked, expected)
    # a masked column changes nothing but its own disappearance
    loss_row0 = F.cross_entropy(logits[:1], torch.tensor([0]))
    reference = F.cross_entropy(torch.cat([scores[0, [0, 2]], sampled[0, 1:]])[None], torch.tensor([0]))
    torch.testing.assert_close(loss_row0, reference)
    kept = retrieval_softmax_logits(scores, ids, sampled, sampled_ids, remove_accidental_hits=False)
    assert not (kept == torch.finfo(kept.dtype).min).any()
    sampled_only = retrieval_softmax_logits(scores, ids, sampled, sampled_ids, in_batch=False)
    assert (sampled_only[:, :3] == torch.finfo(logits.dtype).min).sum() == 6, "only the diagonal stays"


# --- task and training ----------------------------------------------------------------------------------


def retrieval_batch(size: int, seed: int) -> RetrievalBatch:
    item = random_batch(ITEM, size, seed=seed + 1)
    return RetrievalBatch(random_batch(USER, size, seed=seed), item, item.categorical["item_id"][:, 0])


def test_task_stats_and_resumable_negatives() -> None:
    model = make_feature_model("two_tower")
    loss = build_retrieval_loss({"n_negatives": 6}, N_ITEMS, item_counts=torch.ones(N_ITEMS + 1))
    task = RetrievalTask(model, loss, catalog=random_catalog(seed=0), seed=3)
    batch = retrieval_batch(8, seed=0)
    result = task.step_loss(batch)
    assert result.loss.requires_grad and result.stats["n_targets"].item() == 8 == count_targets(batch)
    assert result.stats["n_negatives"].item() == 6
    state = task.state_dict()
    model.eval()
    expected = task.step_loss(batch).loss
    resumed = RetrievalTask(model, loss, catalog=random_catalog(seed=0), seed=0)
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.step_loss(batch).loss, expected)
    with pytest.raises(ValueError, match="catalog"):
        RetrievalTask(model, loss)


def test_train_step_runs_retrieval_micro_batches() -> None:
    model = make_feature_model("two_tower")
    loss = build_retrieval_loss({"n_negatives": 4}, N_ITEMS, item_counts=torch.ones(N_ITEMS + 1))
    task = RetrievalTask(model, loss, catalog=random_catalog(seed=0))
    config = TrainConfig(lr=1e-2, warmup_steps=1, device="cpu")
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    step = TrainStep(model, task, optimizer, scheduler, config, DistContext(0, 1, 0, torch.device("cpu")))
    stats = step([retrieval_batch(8, seed=0), retrieval_batch(4, seed=10)])
    assert stats.tokens == 12 and stats.sequences == 12 and math.isfinite(stats.loss)
    assert "temperature" in stats.extra


# --- synthetic learning: a planted category pattern and cold-start items --------------------------------

N_PLANTED, N_GENRES = 60, 6
COLD = torch.arange(55, N_PLANTED + 1)  # never seen in training
PLANTED_USER = FeatureSchema(categorical=(("pref", N_GENRES + 1),))
PLANTED_ITEM = FeatureSchema(categorical=(("item_id", N_PLANTED + 1), ("genre", N_GENRES + 1)))


def genre_of(ids: torch.Tensor) -> torch.Tensor:
    return (ids - 1) % N_GENRES + 1


def planted_items(ids: torch.Tensor) -> FeatureBatch:
    return FeatureBatch({"item_id": ids[:, None], "genre": genre_of(ids)[:, None]})


def planted_batch(size: int, g: torch.Generator) -> RetrievalBatch:
    """Users whose ``pref`` is genre k click a random warm item of genre k."""
    prefs = torch.randint(1, N_GENRES + 1, (size,), generator=g)
    slot = torch.randint(0, (COLD[0].item() - 1) // N_GENRES, (size,), generator=g)
    ids = slot * N_GENRES + prefs  # genre_of(ids) == prefs, ids < COLD[0]
    return RetrievalBatch(FeatureBatch({"pref": prefs[:, None]}), planted_items(ids), ids)


@pytest.fixture(scope="module")
def planted_model() -> TwoTower:
    torch.manual_seed(0)
    config = TwoTowerConfig(PLANTED_USER, PLANTED_ITEM, dim=16, embed_dim=16, hidden_dims=(32,), dropout=0.0,
                            id_dropout=0.3)
    model = TwoTower(config)
    counts = torch.zeros(N_PLANTED + 1)
    counts[1 : COLD[0]] = 1.0
    loss = build_retrieval_loss({}, N_PLANTED, item_counts=counts)  # in-batch only: cold ids are never drawn
    task = RetrievalTask(model, loss)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    for _ in range(150):
        optimizer.zero_grad()
        task.step_loss(planted_batch(64, g)).loss.backward()
        optimizer.step()
    return model.eval()


def test_learns_the_planted_pattern(planted_model: TwoTower) -> None:
    g = torch.Generator().manual_seed(99)
    batch = planted_batch(300, g)
    with torch.no_grad():
        items = planted_model.encode_catalog(planted_items(torch.arange(1, N_PLANTED + 1)), chunk_size=25)
        scores = planted_model.score(planted_model.encode_users(batch.user), items)  # [B, N]
    ranks = (scores > scores.gather(1, batch.item_ids[:, None] - 1)).sum(dim=1)
    recall_at_10 = (ranks < 10).float().mean().item()
    assert recall_at_10 > 0.6, f"recall@10 {recall_at_10:.2f}; random is {10 / N_PLANTED:.2f}"


def test_cold_items_get_content_vectors_near_their_genre(planted_model: TwoTower) -> None:
    table = planted_model.item_features.embeddings["item_id"].weight
    assert (table[COLD] == 0).all(), "ids unseen in training keep their zero rows"
    with torch.no_grad():
        cold = planted_model.encode_items(planted_items(COLD))  # [6, D]
        missing = planted_model.encode_items(FeatureBatch({"item_id": torch.zeros(len(COLD), 1, dtype=torch.long),
                                                           "genre": genre_of(COLD)[:, None]}))
        warm_ids = torch.arange(1, COLD[0].item())
        warm = planted_model.encode_items(planted_items(warm_ids))
    assert torch.isfinite(cold).all()
    torch.testing.assert_close(cold, missing, msg="an unseen id is encoded as a missing id")
    similarity = cold @ warm.T  # [6, W]
    same = genre_of(COLD)[:, None] == genre_of(warm_ids)[None, :]
    nearest_same = similarity.masked_fill(~same, -2).max(dim=1).values
    nearest_other = similarity.masked_fill(same, -2).max(dim=1).values
    assert (nearest_same > nearest_other).all()
    assert (similarity[same].mean() - similarity[~same].mean()) > 0.5


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_learns_a_pattern_planted_in_the_history(pooling: str) -> None:
    """No user features: the genre to retrieve is that of the user's recent history."""
    user_schema = FeatureSchema(sequence_len=6, n_items=N_PLANTED)
    torch.manual_seed(0)
    model = TwoTower(TwoTowerConfig(user_schema, PLANTED_ITEM, dim=16, embed_dim=16, hidden_dims=(32,), dropout=0.0,
                                    sequence_pooling=pooling, n_heads=2))
    task = RetrievalTask(model, build_retrieval_loss({"logq_correction": False}, N_PLANTED))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def history_batch(size: int, g: torch.Generator) -> RetrievalBatch:
        planted = planted_batch(size, g)
        genres = planted.user.categorical["pref"]  # [B, 1]
        slots = torch.randint(0, N_PLANTED // N_GENRES, (size, 6), generator=g)
        history = (slots * N_GENRES + genres).masked_fill(torch.rand(size, 6, generator=g) < 0.4, 0)
        history = history.sort(dim=1, stable=True, descending=False).values  # zeros first: left padding
        recency = torch.rand(size, 6, generator=g).masked_fill(history == 0, 0.0)
        return RetrievalBatch(FeatureBatch(sequence=history, recency=recency), planted.item, planted.item_ids)

    g = torch.Generator().manual_seed(2)
    for _ in range(120):
        optimizer.zero_grad()
        task.step_loss(history_batch(64, g)).loss.backward()
        optimizer.step()
    model.eval()
    batch = history_batch(300, torch.Generator().manual_seed(98))
    with torch.no_grad():
        items = model.encode_items(planted_items(torch.arange(1, N_PLANTED + 1)))
        scores = model.score(model.encode_users(batch.user), items)
    ranks = (scores > scores.gather(1, batch.item_ids[:, None] - 1)).sum(dim=1)
    has_history = (batch.user.sequence > 0).any(dim=1)
    recall_at_10 = (ranks[has_history] < 10).float().mean().item()
    assert recall_at_10 > 0.6, f"{pooling}: recall@10 {recall_at_10:.2f}; random is {10 / N_PLANTED:.2f}"


def test_weights_saved_with_a_scalar_temperature_still_load(tmp_path) -> None:
    """``log_temperature`` became shape [1] (FSDP shards on dim 0); files written when it was a scalar load."""
    from safetensors.torch import save_file

    from seekrec.models.weights import load_weights

    model = make_feature_model("two_tower")
    with torch.no_grad():
        model.log_temperature.fill_(-2.0)
    state = {name: t.contiguous() for name, t in model.state_dict().items()}
    state["log_temperature"] = state["log_temperature"].reshape(())
    save_file(state, str(tmp_path / "old.safetensors"))
    fresh = load_weights(make_feature_model("two_tower", seed=1), tmp_path / "old.safetensors")
    assert fresh.log_temperature.shape == (1,) and torch.equal(fresh.log_temperature, model.log_temperature)
    assert fresh.temperature.dim() == 0 and fresh.temperature.item() == pytest.approx(math.exp(-2.0))
