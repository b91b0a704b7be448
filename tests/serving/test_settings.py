"""Serve settings fail at construction with the field's name, and load from TOML with CLI overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from seekrec.serving.settings import ArmSettings, ServeSettings


def test_defaults_and_types(tmp_path: Path) -> None:
    s = ServeSettings(registry=str(tmp_path), event_log="events.db")  # type: ignore[arg-type]
    assert s.registry == tmp_path and s.default_k == 10 and s.ann_threshold == 50_000
    assert [a.version for a in s.experiment.arms] == ["current"]


@pytest.mark.parametrize("field,value", [("default_k", 0), ("default_k", 1001), ("candidates", 0),
                                         ("max_batch", 0), ("max_wait_ms", -1.0), ("poll_interval_s", 0),
                                         ("port", 70000), ("event_log", ""), ("history_len", True),
                                         ("quantize", "int4"), ("quantize", "INT8"), ("index_codec", "pq")])
def test_bad_values_name_the_field(tmp_path: Path, field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        ServeSettings(**{"registry": tmp_path, "event_log": "e.db", field: value})  # type: ignore[arg-type]


def test_int8_encoder_is_refused_off_the_cpu(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"ServeSettings.quantize='int8' runs on CPU only.*'cuda'"):
        ServeSettings(registry=tmp_path, event_log="e.db", device="cuda", quantize="int8")
    s = ServeSettings(registry=tmp_path, event_log="e.db", device="cuda", index_codec="sq8")  # FAISS runs on the CPU
    assert (s.quantize, s.index_codec) == ("none", "sq8")


def test_load_toml_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "serve.toml"
    path.write_text(
        '[serve]\nregistry = "reg"\nevent_log = "sqlite:///tmp/e.db"\nport = 9000\n'
        '[serve.experiment]\nname = "exp1"\n'
        'arms = [{name = "control", version = "v2", weight = 0.5}, {name = "live", version = "current", weight = 0.5}]\n'
    )
    s = ServeSettings.load(path, port=9100, host=None)
    assert s.port == 9100 and s.host == "127.0.0.1" and s.experiment.name == "exp1"
    assert s.experiment.arms == (ArmSettings("control", "v000002", 0.5), ArmSettings("live", "current", 0.5))
    path.write_text('registry = "reg"\nevent_log = "e.db"\ntypo = 1\n')
    with pytest.raises(ValueError, match="typo"):
        ServeSettings.load(path)


def test_load_without_file_uses_overrides(tmp_path: Path) -> None:
    s = ServeSettings.load(None, registry=tmp_path, event_log="e.db", data_dir=None, max_batch=8)
    assert s.registry == tmp_path and s.data_dir is None and s.max_batch == 8
    with pytest.raises(ValueError, match="--registry and --event-log"):
        ServeSettings.load(None)
