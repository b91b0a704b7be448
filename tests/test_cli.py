import json
from pathlib import Path

import pytest

from seekrec.cli import build_parser, main


@pytest.mark.parametrize("argv", [[], ["data"], ["data", "prepare"], ["data", "simulate"], ["evaluate"],
                                  ["llm", "pretrain"], ["llm", "finetune"], ["llm", "evaluate"], ["llm", "export"],
                                  ["llm", "distill"]])
def test_help_shows_examples(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*argv, "--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out


def test_simulate_then_evaluate_writes_results(tmp_path, capsys):
    data = tmp_path / "sim"
    assert main(["data", "simulate", "--out", str(data), "--users", "60", "--items", "40", "--seed", "3"]) == 0
    out_json = tmp_path / "pop.json"
    assert main(["evaluate", "--data", str(data), "--model", "pop", "--json", str(out_json)]) == 0
    record = json.loads(out_json.read_text())
    assert set(record) >= {"dataset", "model", "split", "metrics", "n_users", "n_items", "seconds"}
    assert record["model"] == "pop" and record["split"] == "test" and record["n_items"] == 40
    assert {"hr@10", "hr@50", "hr@200", "ndcg@10", "ndcg@50", "ndcg@200", "mrr"} <= set(record["metrics"])
    assert "ndcg@10" in capsys.readouterr().out


def test_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["evaluate", "--data", str(tmp_path), "--model", "pop"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seekrec: error:") and "seekrec data prepare" in err
    assert main(["evaluate", "--data", str(tmp_path), "--model", "ease", "--param", "l2"]) == 2


def test_prepare_ml100k(ml100k_raw, tmp_path, capsys):
    assert main(["data", "prepare", "--dataset", "ml-100k", "--raw", str(ml100k_raw), "--out", str(tmp_path)]) == 0
    assert "100,000 events, 943 users, 1,682 items" in capsys.readouterr().out


def test_serve_reads_a_config_file_and_flags_override_it(tmp_path):
    from seekrec.cli.live import serve_settings

    config = Path(__file__).resolve().parents[1] / "configs" / "serve-pipeline-ab.toml"
    settings = serve_settings(build_parser().parse_args(["serve", "--config", str(config)]))
    assert [(a.name, a.version) for a in settings.experiment.arms] == [("sequence", "v000001"), ("pipeline", "current")]
    assert settings.port == 8000 and settings.threads == 1 and not settings.compile
    settings = serve_settings(build_parser().parse_args(["serve", "--config", str(config), "--port", "9001",
                                                         "--compile", "--arm", "only=current"]))
    assert settings.port == 9001 and settings.compile and [a.name for a in settings.experiment.arms] == ["only"]
    with pytest.raises(ValueError, match="registry"):
        serve_settings(build_parser().parse_args(["serve", "--event-log", str(tmp_path / "e.db")]))


def test_every_online_trainer_field_is_reachable_and_old_flags_still_work(tmp_path):
    import dataclasses

    from seekrec.cli.options import config_from_args
    from seekrec.online.trainer import OnlineTrainerConfig

    argv = ["stream-train", "--registry", "r", "--event-log", "e.db", "--data", "d", "--state", "s",
            "--max-events", "5", "--lr", "0.01", "--stop-when-idle", "--block-ms", "0", "loss.name=bce"]
    config = config_from_args(OnlineTrainerConfig, build_parser().parse_args(argv))
    assert (config.dataset, config.state_dir, config.max_events, config.lr) == (Path("d"), Path("s"), 5, 0.01)
    assert config.stop_when_idle and config.block_ms == 0 and config.loss.name == "bce"
    assert config.replay_ratio == 3.0 and config.consumer == "online-trainer", "defaults come from the dataclass"
    help_text = _help(["stream-train"])
    for f in dataclasses.fields(OnlineTrainerConfig):
        assert f.name == "loss" or f"--{f.name.replace('_', '-')}" in help_text
    assert "(default: 0.0003)" in help_text


def _help(argv):
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        build_parser().parse_args([*argv, "--help"])
    return out.getvalue()


@pytest.mark.parametrize(("argv", "message"), [
    (["stream-train", "--registry", "r", "--event-log", "e", "--data", "d", "--state", "s", "lrr=1"],
     "command line override 'lrr=1': unknown key 'lrr'"),
    (["stream-train", "--registry", "r", "--event-log", "e", "--data", "d", "--state", "s", "--lr", "-1"], "lr > 0"),
    (["serve", "--config", "missing.toml"], "missing.toml: no such config file"),
    (["stream-train", "--registry", "r", "--event-log", "e", "--data", "d", "--state", "s", "--arm", "x=y"],
     "--arm needs --experiments FILE"),
    (["stream-train", "--registry", "r", "--event-log", "e", "--data", "d", "--state", "s", "--arm", "x=y",
      "--experiments", "x.toml"], "must publish to that arm's own channel: add --channel NAME"),
    (["stream-train", "--registry", "r", "--event-log", "e", "--data", "d", "--state", "s", "--channel", "a/b"],
     "channel name 'a/b' must be"),
    (["demo", "--workers", "0"], "workers >= 1"),
    (["data", "simulate", "--out", "x", "--users", "0"], "n_users"),
    (["serve", "--port", "eighty"], "invalid int value: 'eighty'"),
    (["train", "train.lr=abc"], "command line: train.lr must be a number, got 'abc'"),
    (["train", "model.name=sasrec", "model.dim=true"], "model.dim must be an integer, got True"),
    (["evaluate", "--data", "d", "--model", "ease", "--param", "l3=5"], "--param l3: ease has no parameter 'l3'; valid: l2"),
    (["evaluate", "--data", "d", "--model", "ease", "--param", "l2=big"], "--param l2 must be a number, got 'big'"),
    (["registry", "--root", "nowhere", "list"], "nowhere: no such registry directory; check --root"),
    (["serve", "--registry", "nowhere", "--event-log", "e.db"], "nowhere: no such registry directory; check --registry"),
])
def test_user_mistakes_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (a flag's type)
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("seekrec: error:") and message in err and err.count("\n") == 1, err


def test_simulate_reads_a_config_file_and_flags_override_it(tmp_path, capsys):
    config = tmp_path / "sim.toml"
    config.write_text("n_users = 50\nn_items = 40\nmean_events_per_user = 10\n")
    assert main(["data", "simulate", "--out", str(tmp_path / "sim"), "--config", str(config), "--items", "30",
                 "seed=4"]) == 0
    assert "50 users, 30 items" in capsys.readouterr().out


def test_prepare_an_event_log_with_named_columns(tmp_path, capsys):
    log = tmp_path / "clicks.csv"
    log.write_text("uid,sku,ts,stars\nu1,a,10,5\nu1,b,20,2\nu2,a,15,4\nu2,c,30,5\n")
    items = tmp_path / "products.csv"
    items.write_text("sku,title\na,Alpha\nb,Beta\nc,Gamma\n")
    out = tmp_path / "shop"
    assert main(["data", "prepare", "--dataset", "csv", "--raw", str(log), "--out", str(out), "--user-col", "uid",
                 "--item-col", "sku", "--time-col", "ts", "--value-col", "stars", "--min-rating", "4",
                 "--items", str(items)]) == 0
    assert "3 events, 2 users, 2 items" in capsys.readouterr().out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["user_col"] == "uid" and manifest["options"]["min_value"] == 4
    assert main(["data", "prepare", "--dataset", "csv", "--raw", str(log), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "user_id" in err and "--user-col" in err  # the default column is not in the file: named, with its flag
    help_text = _help(["data", "prepare"])
    assert "event-log schema" in help_text and "--event-type-col" in help_text and "ISO 8601" in help_text


def test_a_wrongly_typed_toml_value_is_named_with_its_file(tmp_path, capsys):
    config = tmp_path / "bad.toml"
    config.write_text('[model]\nname = "sasrec"\ndim = "sixty-four"\n')
    assert main(["train", "--config", str(config), "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == f"seekrec: error: {config}: model.dim must be an integer, got 'sixty-four'\n"


def test_version_and_usage_of_the_command_on_unknown_flags_or_missing_arguments(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip().startswith("seekrec 0.")
    for argv, message in ((["evaluate", "--data", "d", "--model", "pop", "--bogus"], "unrecognized arguments: --bogus"),
                          (["evaluate"], "the following arguments are required: --data, --model"),
                          (["data", "prepare", "--out", "x", "--colour"], "--dataset")):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        usage, error = capsys.readouterr().err.splitlines()
        assert exc.value.code == 2 and message in error and error.startswith("seekrec: error:")
        assert usage.startswith(f"usage: seekrec {' '.join(argv[:2]) if argv[0] == 'data' else argv[0]} [options]")


def test_a_closed_pipe_is_quiet(tmp_path):
    import subprocess
    import sys

    (tmp_path / "registry").mkdir()
    cli = f"{sys.executable} -m seekrec.cli"
    cmd = f"{cli} registry --root {tmp_path / 'registry'} list | head -0; {cli} data prepare --help | head -0"
    out = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=120)
    assert out.stderr == "", out.stderr


def test_third_party_info_lines_are_silenced(tmp_path):
    import logging

    assert main(["registry", "--root", str(tmp_path), "list"]) == 0
    assert all(logging.getLogger(name).getEffectiveLevel() >= logging.WARNING
               for name in ("faiss.loader", "matplotlib.font_manager", "httpx"))


def test_a_stopped_run_says_how_to_resume_publishes_its_best_and_resumes(sim_data_dir, tmp_path, capsys, caplog,
                                                                          monkeypatch):
    import logging

    from seekrec.training.trainer import Trainer

    run, registry = tmp_path / "run", tmp_path / "registry"
    argv = ["train", "--data", str(sim_data_dir), "--out", str(run), "model.name=sasrec", "model.dim=16",
            "model.n_layers=1", "data.max_len=12", "train.batch_size=32", "train.max_epochs=2",
            "train.eval_batch_size=64"]
    validation = Trainer._validation

    def stop_at_epoch_2(self, epoch, *rest):
        if epoch == 2:
            raise KeyboardInterrupt  # Ctrl-C after the first epoch's best/ and checkpoint were saved
        return validation(self, epoch, *rest)

    monkeypatch.setattr(Trainer, "_validation", stop_at_epoch_2)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "rerun the same command to resume" in err and f"seekrec registry publish {run}" in err
    assert main(["registry", "--root", str(registry), "publish", str(run)]) == 0
    assert "published model v000001" in capsys.readouterr().out
    from seekrec.registry import ModelRegistry

    manifest = ModelRegistry(registry).manifest("v000001")
    assert manifest["extra"]["unfinished"] and all(k.startswith("valid/") for k in manifest["metrics"])
    monkeypatch.setattr(Trainer, "_validation", validation)
    with caplog.at_level(logging.INFO, logger="seekrec.training.trainer"):
        assert main(argv) == 0
    assert "resumed from" in caplog.text and (run / "results.json").is_file()


def test_llm_finetune_flags_set_the_config_and_overrides_beat_them(tmp_path, monkeypatch, capsys):
    import seekrec.llm.finetune as finetune_module

    seen = {}

    def fake_finetune(config, data_dir, out, **kwargs):
        seen.update(config=config, data=data_dir, out=out)
        return {"parameters": {"trainable": 10, "total": 1000, "fraction": 0.01},
                "valid": {"reranked": {}}, "test": {"retriever": {}}}

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    argv = ["llm", "finetune", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--model", "minilm",
            "--retriever-run", "runs/sasrec", "--full", "model.kind=cross_encoder", "lora.rank=4"]
    assert main(argv) == 0
    config = seen["config"]
    assert (config.model.path, config.model.kind, config.retriever_run, config.full) == \
        ("minilm", "cross_encoder", "runs/sasrec", True)
    assert config.lora.rank == 4
    assert "trainable parameters: 10 of 1,000 (1.00%)" in capsys.readouterr().out
    assert main([*argv[:10], "model.path=other"]) == 0  # a KEY=VALUE override beats the flag
    assert seen["config"].model.path == "other"


@pytest.mark.parametrize("argv, message", [
    (["llm", "finetune", "--retriever-run", "runs/x"], "model"),
    (["llm", "evaluate", "--run", "nowhere", "--data", "nowhere"], "no such LLM run directory"),
    (["llm", "export", "--run", "nowhere", "--out", "elsewhere"], "no such LLM run directory"),
    (["llm", "pretrain", "--data", "nowhere", "train.max_epochs=1"], "seekrec data prepare"),
])
def test_llm_mistakes_are_one_line_with_exit_code_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("seekrec: error:") and message in err and "Traceback" not in err
