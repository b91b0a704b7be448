import pytest
import torch

from seekrec.training.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint, save_checkpoint


def _model_and_optim(seed):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    optim = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(5, 4)).sum().backward()
    optim.step()
    return model, optim


def test_round_trip_restores_model_optimizer_rng_and_extras(tmp_path):
    model, optim = _model_and_optim(0)
    torch.manual_seed(123)
    gen = torch.Generator().manual_seed(9)
    path = save_checkpoint(tmp_path, 7, model, optim, {"epoch": 2, "batch": 3}, {"gen": gen.get_state()})
    expected_draw = torch.rand(3)
    other, other_optim = _model_and_optim(1)
    state, extra = load_checkpoint(path, other, other_optim)
    assert state["epoch"] == 2 and state["step"] == 7
    assert torch.equal(torch.rand(3), expected_draw), "global RNG must continue where it was saved"
    for a, b in zip(model.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(optim.state_dict()["state"][0]["exp_avg"], other_optim.state_dict()["state"][0]["exp_avg"])
    restored = torch.Generator()
    restored.set_state(extra["gen"])
    assert torch.equal(torch.rand(2, generator=restored), torch.rand(2, generator=gen))


def test_latest_pointer_and_pruning(tmp_path):
    model, optim = _model_and_optim(0)
    for step in (1, 2, 3):
        save_checkpoint(tmp_path, step, model, optim, {}, keep=2)
    assert latest_checkpoint(tmp_path).name == "step-000000003"
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-000000002", "step-000000003"]
    assert latest_checkpoint(tmp_path / "none") is None


def test_corrupted_checkpoint_is_a_clear_error(tmp_path):
    model, optim = _model_and_optim(0)
    path = save_checkpoint(tmp_path, 1, model, optim, {})
    (path / "model.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path, model, optim)
    (tmp_path / "LATEST").write_text("step-999")
    with pytest.raises(CheckpointError, match="does not exist"):
        latest_checkpoint(tmp_path)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    model, optim = _model_and_optim(0)
    path = save_checkpoint(tmp_path, 1, model, optim, {})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(path, torch.nn.Linear(4, 3))
