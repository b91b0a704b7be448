import json

import pytest

from seekrec.cli import build_parser, main


@pytest.mark.parametrize("argv", [[], ["data"], ["data", "prepare"], ["data", "simulate"], ["evaluate"]])
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
    from pathlib import Path

    from seekrec.cli import build_parser
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
