import dataclasses
import io

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from seekrec.data.schema import EVENTS_SCHEMA, InteractionData
from seekrec.data.simulator import SECONDS_PER_DAY, Simulator, SimulatorConfig, click_logit

SMALL = SimulatorConfig(n_users=300, n_items=500, n_genres=12, mean_events_per_user=40, seed=7)


@pytest.fixture(scope="module")
def small() -> tuple[Simulator, InteractionData]:
    sim = Simulator(SMALL)
    return sim, sim.generate()


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _sequences(data: InteractionData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(user, item, timestamp) sorted by user then time."""
    users, items, ts = data.interactions()
    order = np.lexsort((ts, users))
    return users[order], items[order], ts[order]


def _follow_up_and_repeat_rates(sim: Simulator, data: InteractionData) -> tuple[float, float]:
    """Share of next items that are a hidden sequel of the previous one / one of the user's recent items."""
    users, items, _ = _sequences(data)
    same_user = users[1:] == users[:-1]
    sequel = (sim.truth.follow_ups[items[:-1]] == items[1:, None]).any(axis=1) & same_user
    recent = np.zeros(len(items), bool)
    for lag in range(1, sim.config.repeat_window + 1):
        recent[lag:] |= (items[lag:] == items[:-lag]) & (users[lag:] == users[:-lag])
    return sequel.sum() / same_user.sum(), recent[1:][same_user].mean()


def test_same_seed_gives_identical_tables_and_other_seeds_differ(small):
    _, data = small
    again = Simulator(SMALL).generate()
    other = Simulator(dataclasses.replace(SMALL, seed=8)).generate()
    for name in ("events", "items", "users"):
        assert _ipc_bytes(getattr(data, name)) == _ipc_bytes(getattr(again, name)), name
    assert not data.events.equals(other.events)
    assert data.items.column("title").to_pylist() != other.items.column("title").to_pylist()


def test_tables_follow_the_canonical_schema(small):
    _, data = small
    assert data.events.schema == EVENTS_SCHEMA and data.source == "simulator"
    assert set(data.events.column("event_type").to_pylist()) == {"click"}
    assert np.all(data.events.column("value").to_numpy() == 1.0)
    assert data.items.column_names == ["item_id", "title", "genres", "year"]
    assert data.items.schema.field("genres").type == pa.list_(pa.string())
    assert data.items.schema.field("year").type == pa.int32()
    assert data.users.column_names == ["user_id", "age", "segment"]
    assert data.users.schema.field("age").type == pa.int32()
    assert set(data.users.column("segment").to_pylist()) <= {"light", "regular", "heavy"}
    assert data.user_ids.decode([1, SMALL.n_users]).tolist() == [1, SMALL.n_users]  # the id map is the identity
    assert data.item_ids.decode([1, SMALL.n_items]).tolist() == [1, SMALL.n_items]
    users, items, ts = data.interactions()
    assert set(np.unique(users)) == set(range(1, SMALL.n_users + 1))
    assert items.min() >= 1 and items.max() <= SMALL.n_items
    assert np.all(np.diff(ts) >= 0), "the event log is in time order"
    genres = data.items.column("genres").to_pylist()
    assert all(1 <= len(g) <= 3 and len(set(g)) == len(g) for g in genres)
    titles = data.items.column("title").to_pylist()
    assert len(set(titles)) == len(titles) and all(t[0].isupper() for t in titles)


def test_activity_is_heavy_tailed_with_the_configured_mean(small):
    _, data = small
    counts = np.bincount(data.interactions()[0])[1:]
    assert counts.min() >= SMALL.min_events_per_user
    assert 0.8 * SMALL.mean_events_per_user < counts.mean() < 1.2 * SMALL.mean_events_per_user
    assert counts.max() > 4 * np.median(counts)


def test_item_popularity_follows_a_power_law():
    def top_decile_share(exponent: float) -> float:
        cfg = dataclasses.replace(SMALL, popularity_exponent=exponent)
        clicks = np.sort(np.bincount(Simulator(cfg).generate().interactions()[1], minlength=cfg.n_items + 1)[1:])
        return clicks[::-1][: cfg.n_items // 10].sum() / clicks.sum()

    flat, default, steep = top_decile_share(0.0), top_decile_share(0.7), top_decile_share(1.0)
    assert flat < 0.25 and default > 0.3 and steep > default + 0.1  # the top 10% get 3-5x their share


def test_sessions_have_increasing_timestamps_and_configured_gaps(small):
    _, data = small
    users, _, ts = _sequences(data)
    same_user = users[1:] == users[:-1]
    gaps = np.diff(ts)[same_user]
    assert np.all(gaps >= 1), "a user's timestamps strictly increase"
    assert ts.min() >= SMALL.start_timestamp
    new_session = gaps > 3600  # within-session gaps average 4 minutes, between-session ones 2 days
    assert abs(new_session.mean() - 1 / SMALL.session_length) < 0.03
    assert 0.5 * SMALL.event_gap_seconds < np.median(gaps[~new_session]) < 1.5 * SMALL.event_gap_seconds


@pytest.mark.parametrize("follow_up_prob", [0.0, 0.5])
def test_follow_ups_appear_at_the_configured_rate(follow_up_prob):
    sim = Simulator(dataclasses.replace(SMALL, follow_up_prob=follow_up_prob))
    sequel_rate, _ = _follow_up_and_repeat_rates(sim, sim.generate())
    assert abs(sequel_rate - follow_up_prob) < 0.04


@pytest.mark.parametrize("repeat_prob", [0.0, 0.3])
def test_repeats_appear_at_the_configured_rate(repeat_prob):
    sim = Simulator(dataclasses.replace(SMALL, repeat_prob=repeat_prob))
    _, repeat_rate = _follow_up_and_repeat_rates(sim, sim.generate())
    assert abs(repeat_rate - repeat_prob) < 0.03


def test_taste_drift_grows_with_the_drift_rate():
    def mean_change(drift: float, days: float = 30.0) -> float:
        sim = Simulator(dataclasses.replace(SMALL, n_users=50, drift_per_day=drift))
        t0 = sim.history_end
        changes = [np.linalg.norm(sim.taste(u, t0 + days * SECONDS_PER_DAY) - sim.taste(u, t0)) / np.linalg.norm(sim.taste(u, t0))
                   for u in range(1, 51)]
        return float(np.mean(changes))

    assert mean_change(0.0) == 0.0
    slow, fast = mean_change(0.01), mean_change(0.2)
    assert fast > 4 * slow and fast > 0.5


def test_live_time_scale_makes_drift_material_within_minutes():
    def change_in_five_minutes(scale: float) -> float:
        sim = Simulator(dataclasses.replace(SMALL, n_users=30, live_time_scale=scale))
        t0 = sim.history_end
        return float(np.mean([np.linalg.norm(sim.taste(u, t0 + 300) - sim.taste(u, t0)) / np.linalg.norm(sim.taste(u, t0))
                              for u in range(1, 31)]))

    assert change_in_five_minutes(1.0) < 0.01
    assert change_in_five_minutes(28_800.0) > 0.2
    sim = Simulator(dataclasses.replace(SMALL, n_users=30, live_time_scale=28_800.0))
    assert np.linalg.norm(sim.trend(sim.history_end + 600) - sim.trend(sim.history_end)) > 0.1


def test_click_probabilities_are_bounded_and_have_no_side_effects(small):
    sim, _ = small
    t = sim.history_end + 60
    items = np.arange(1, SMALL.n_items + 1)
    p = sim.click_probabilities(3, items, t)
    assert p.shape == (SMALL.n_items,) and np.all((p >= 0) & (p <= 1))
    assert np.array_equal(p, sim.click_probabilities(3, items, t))
    fresh = Simulator(SMALL)
    slate = np.argsort(-p)[:10] + 1
    assert np.array_equal(sim.respond(3, slate, t, np.random.default_rng(1)),
                          fresh.respond(3, slate, t, np.random.default_rng(1)))


def test_click_probabilities_are_the_documented_logistic_and_continue_the_history(small):
    sim, data = small
    users, items, _ = _sequences(data)
    user = 5
    history = items[users == user]
    t = sim.history_end + 120
    candidates = np.unique(np.concatenate([sim.truth.follow_ups[history[-1]], history[-3:], np.arange(1, 40)]))
    query = sim.taste(user, t) + SMALL.trend_weight * sim.trend(t)
    truth = sim.truth
    logit = click_logit(SMALL, query, truth.item_vecs[candidates].astype(np.float64), truth.popularity_bias[candidates],
                        follow_up=np.isin(candidates, truth.follow_ups[history[-1]]),
                        recent=np.isin(candidates, history[-SMALL.repeat_window :]))
    assert np.allclose(sim.click_probabilities(user, candidates, t), 1 / (1 + np.exp(-logit)))


def test_respond_is_deterministic_with_a_seeded_rng():
    def run(sim: Simulator) -> list[list[bool]]:
        rng = np.random.default_rng(42)
        t0 = sim.history_end
        return [sim.respond(u, np.arange(1, 11) + u, t0 + 10 * u, rng).tolist() for u in range(1, 40)]

    assert run(Simulator(SMALL)) == run(Simulator(SMALL))
    assert run(Simulator(SMALL)) == run(Simulator(SMALL)), "the default stream is seeded too"


def test_position_bias_lowers_clicks_further_down_the_slate(small):
    sim, _ = small
    rng = np.random.default_rng(0)
    popular = np.argsort(-sim.truth.popularity_bias[1:])[:10] + 1
    clicks = np.zeros(10)
    for user in range(SMALL.n_users + 1, SMALL.n_users + 1501):  # fresh users, so no memory carries over
        clicks += sim.respond(user, rng.permutation(popular), sim.history_end + 60, rng)
    assert clicks[0] > 3 * clicks[9] > 0


def test_clicks_enter_the_users_memory():
    sim = Simulator(SMALL)
    user, t = SMALL.n_users + 7, sim.history_end + 60
    item = int(np.argmax(sim.click_probabilities(user, np.arange(1, SMALL.n_items + 1), t))) + 1
    sequels = sim.truth.follow_ups[item]
    before = sim.click_probabilities(user, sequels, t)
    rng = np.random.default_rng(0)
    while not sim.respond(user, [item], t, rng)[0]:
        pass
    after = sim.click_probabilities(user, sequels, t)
    assert np.all(after > before), "a clicked item's sequels get the follow-up bonus"
    others = [i for i in range(1, SMALL.n_items + 1) if i not in set(sequels) | {item}][:20]
    assert np.allclose(sim.click_probabilities(user, others, t), Simulator(SMALL).click_probabilities(user, others, t))


def test_new_users_are_drawn_from_the_seed_and_their_id(small):
    sim, _ = small
    t = sim.history_end + 60
    new = SMALL.n_users + 1000
    taste = sim.taste(new, t)
    assert np.array_equal(taste, Simulator(SMALL).taste(new, t))
    assert not np.allclose(taste, sim.taste(new + 1, t))
    assert 0.75 * SMALL.taste_strength <= np.linalg.norm(taste) <= 1.25 * SMALL.taste_strength
    assert sim.respond(new, [1, 2, 3], t).shape == (3,)


def test_live_calls_do_not_change_the_generated_history():
    sim = Simulator(SMALL)
    before = sim.generate()
    sim.respond(1, np.arange(1, 11), sim.history_end + 5)
    assert sim.generate().events.equals(before.events)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_items": 2.5}, "n_items"),
        ({"dim": True}, "dim"),
        ({"repeat_prob": 1.5}, "repeat_prob"),
        ({"follow_up_prob": -0.1}, "follow_up_prob"),
        ({"repeat_prob": 0.6, "follow_up_prob": 0.6}, "repeat_prob \\+ follow_up_prob"),
        ({"n_follow_ups": 500}, "n_follow_ups"),
        ({"live_time_scale": 0.0}, "live_time_scale"),
        ({"drift_per_day": float("nan")}, "drift_per_day"),
        ({"mean_events_per_user": 3.0}, "mean_events_per_user"),
        ({"seed": -1}, "seed"),
    ],
)
def test_config_validation_names_the_field(change, field):
    with pytest.raises(ValueError, match=f"SimulatorConfig.{field}"):
        dataclasses.replace(SMALL, **change)


def test_live_calls_reject_bad_ids(small):
    sim, _ = small
    with pytest.raises(ValueError, match="user_id"):
        sim.click_probabilities(0, [1], sim.history_end)
    with pytest.raises(ValueError, match="outside 1..500"):
        sim.respond(1, [1, 501], sim.history_end)


def test_simulated_data_round_trips_through_parquet(small, tmp_path):
    _, data = small
    manifest = data.write(tmp_path)
    back = InteractionData.read(tmp_path)
    assert back.events.equals(data.events) and back.items.equals(data.items) and back.users.equals(data.users)
    assert manifest["options"]["simulator"]["seed"] == SMALL.seed
    assert back.options["simulator"] == dataclasses.asdict(SMALL)


@pytest.mark.slow
@settings(max_examples=25, deadline=None)
# a repeat whose recent window held only the last item once picked the empty slot, id 0
@example(n_users=12, n_items=5, n_genres=10, mean_events=5.0, shares=(0.25, 0.0), session_length=1.0, seed=0)
@given(
    n_users=st.integers(1, 15),
    n_items=st.integers(5, 60),
    n_genres=st.integers(1, 25),
    mean_events=st.floats(5, 20),
    shares=st.tuples(st.floats(0, 0.5), st.floats(0, 0.5)),
    session_length=st.floats(1, 6),
    seed=st.integers(0, 2**32),
)
def test_any_valid_config_gives_well_formed_data(n_users, n_items, n_genres, mean_events, shares, session_length, seed):
    cfg = SimulatorConfig(n_users=n_users, n_items=n_items, n_genres=n_genres, mean_events_per_user=mean_events,
                          repeat_prob=shares[0], follow_up_prob=shares[1], session_length=session_length, seed=seed)
    sim = Simulator(cfg)
    data = sim.generate()
    users, items, ts = _sequences(data)
    assert np.bincount(users, minlength=n_users + 1)[1:].min() >= cfg.min_events_per_user
    assert items.min() >= 1 and items.max() <= n_items
    assert np.all(np.diff(ts)[users[1:] == users[:-1]] >= 1)
    assert data.items.num_rows == n_items and data.users.num_rows == n_users
    assert np.all(sim.truth.follow_ups[1:] != np.arange(1, n_items + 1)[:, None])
    p = sim.click_probabilities(1, np.arange(1, n_items + 1), sim.history_end + 1)
    assert np.all((p >= 0) & (p <= 1))


def test_live_releases_leave_the_history_unchanged_and_come_out_over_time(small):
    sim, data = small
    with_releases = Simulator(dataclasses.replace(SMALL, live_new_items=20, release_every_seconds=2.0,
                                                  new_item_bias=-1.0))
    assert _ipc_bytes(with_releases.generate().events) == _ipc_bytes(data.events)
    truth, end = with_releases.live_truth, with_releases.history_end
    assert truth.item_vecs.shape[0] == SMALL.n_items + 21
    assert np.allclose(truth.popularity_bias[SMALL.n_items + 1 :], -1.0)
    assert len(set(truth.titles)) == len(truth.titles)
    assert (truth.follow_ups[SMALL.n_items + 1 :] <= SMALL.n_items).all()  # sequels are catalog items
    assert [with_releases.released(t) for t in (end - 1, end, end + 1.9, end + 2.0, end + 1e6)] == [0, 1, 1, 2, 20]
    assert sim.released(end + 1e6) == 0


def test_browse_finds_only_what_is_out_and_remembers_it():
    sim = Simulator(dataclasses.replace(SMALL, live_new_items=30, release_every_seconds=10.0, new_item_bias=2.0))
    rng = np.random.default_rng(0)
    end = sim.history_end
    early = [sim.browse(u, end + 5.0, rng=rng) for u in range(1, 201)]
    assert max(early) <= SMALL.n_items + 1  # one release is out in the first 10 s
    late = [sim.browse(u, end + 1000.0, rng=rng) for u in range(1, 201)]
    assert max(late) <= SMALL.n_items + 30
    assert sum(i > SMALL.n_items for i in late) > 20  # popular releases get found
    user = 7
    item = sim.browse(user, end + 1000.0, rng=rng)
    assert sim._peek_memory(user).last == item and item in sim._peek_memory(user).recent
    # a released item can be shown and clicked like any other
    assert sim.click_probabilities(user, [SMALL.n_items + 30], end + 1000.0).shape == (1,)
    with pytest.raises(ValueError, match="outside"):
        sim.respond(user, [SMALL.n_items + 31], end + 1000.0)
