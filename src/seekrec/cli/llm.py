"""``seekrec llm pretrain | finetune | evaluate | export | distill``: the LLM ranker's commands (extra ``[llm]``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from seekrec.cli.options import HELP_FORMAT, add_config_options


def _interrupted(out: Path) -> int:
    from seekrec.training.run_dir import RunDir

    print(f"seekrec: interrupted; {RunDir(out).resume_hint() or 'nothing was saved yet'}", file=sys.stderr)
    return 130


def cmd_pretrain(args: argparse.Namespace) -> int:
    from seekrec.config import load_config
    from seekrec.llm.pretrain import PretrainConfig, pretrain

    config = load_config(PretrainConfig, args.config, args.overrides)
    out = args.out if args.out is not None else Path("runs/llm-pretrain")
    try:
        record = pretrain(config, args.data, out)
    except KeyboardInterrupt:
        return _interrupted(out)
    print(f"pretrained {record['parameters']:,} parameters on {record['tokens_seen']:,} tokens in "
          f"{record['seconds']:.0f} s; validation perplexity {record['valid_perplexity']:.2f}")
    print(f"model (Hugging Face format): {out / 'model'}  -> seekrec llm finetune model.path={out / 'model'}")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from seekrec.llm.finetune import FinetuneConfig, finetune

    flags = [f"{key}={json.dumps(value)}" for key, value in (
        ("model.path", args.model), ("retriever_run", args.retriever_run), ("full", args.full or None))
        if value is not None]
    config = FinetuneConfig.load(args.config, flags + list(args.overrides))  # KEY=VALUE beats the flags
    out = args.out if args.out is not None else Path("runs") / config.name
    try:
        record = finetune(config, args.data, out)
    except KeyboardInterrupt:
        return _interrupted(out)
    if record:  # under torchrun only rank 0 reports (the others return nothing)
        _print_record(record)
        print(f"run directory: {out}")
    return 0


def _print_record(record: dict) -> None:
    params = record.get("parameters", {})
    if params:
        print(f"trainable parameters: {int(params['trainable']):,} of {int(params['total']):,} "
              f"({100 * params['fraction']:.2f}%)")
    for split in ("valid", "test"):
        metrics = record.get(split)
        if isinstance(metrics, dict):
            shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
            print(f"{split}: {shown}")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seekrec.evaluation.report import write_results
    from seekrec.llm.finetune import evaluate_run

    record = evaluate_run(args.run, args.data, args.split, device=args.device, model=args.model,
                          retriever_run=args.retriever_run)
    print(json.dumps({k: v for k, v in record.items() if not isinstance(v, list)}, indent=2))
    if args.json:
        write_results(args.json, record)
        print(f"wrote {args.json}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from seekrec.llm.rerank import LLMReranker

    out = LLMReranker.load(args.run, model=args.model).export(args.out)
    print(f"wrote {out}: the fine-tuned model with its adapter merged, servable without the base model")
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from seekrec.llm.distill import DistillConfig, distill

    config = DistillConfig.load(args.config, args.overrides)
    out = args.out if args.out is not None else Path("runs") / config.name
    try:
        record = distill(config, args.data, args.teacher, out)
    except KeyboardInterrupt:
        return _interrupted(out)
    _print_record(record)
    print(f"run directory: {out} (a `seekrec train`-style run: seekrec publish / evaluate / recommend take it)")
    return 0


def add_llm_commands(commands: argparse._SubParsersAction) -> None:
    llm = commands.add_parser("llm", formatter_class=HELP_FORMAT,
                              help="LLM rankers: pretrain a DeepSeek-V3 LM, fine-tune with LoRA, re-rank, distill")
    sub = llm.add_subparsers(dest="llm_command", required=True, metavar="SUBCOMMAND")

    pre = sub.add_parser(
        "pretrain", formatter_class=HELP_FORMAT,
        help="train a BPE tokenizer and a small DeepSeek-V3 causal LM on the catalogue and training histories",
        epilog="examples:\n  seekrec llm pretrain --config configs/ml-100k-llm-pretrain.toml --data data/ml-100k "
        "--out runs/llm-pretrain\n  seekrec llm pretrain --data data/ml-100k model.num_hidden_layers=2 train.max_epochs=1\n"
        "Writes OUT/model (Hugging Face format: config.json, model.safetensors, tokenizer) and OUT/metrics.jsonl.\n"
        "Re-running with the same --out resumes from its last checkpoint.\n")
    add_config_options(pre, "PretrainConfig (see configs/ml-100k-llm-pretrain.toml)", "train.lr=1e-3")
    pre.add_argument("--data", type=Path, help="prepared dataset directory (default: data in the config)")
    pre.add_argument("--out", type=Path, help="run directory (default: runs/llm-pretrain)")
    pre.set_defaults(func=cmd_pretrain)

    ft = sub.add_parser(
        "finetune", formatter_class=HELP_FORMAT,
        help="fine-tune an LLM (LoRA or full) to re-rank a retriever's candidates or answer click yes/no",
        epilog="examples:\n  seekrec llm finetune --config configs/ml-100k-llm-rerank.toml --data data/ml-100k "
        "--model runs/llm-pretrain/model --retriever-run runs/ml-100k-sasrec --out runs/llm-rerank\n"
        "  seekrec llm finetune --config configs/ml-100k-llm-rerank.toml --model minilm model.kind=cross_encoder\n"
        "  seekrec llm finetune --config configs/ml-100k-llm-rerank.toml --model /models/deepseek-llm-7b lora.rank=16\n"
        "  seekrec llm finetune --config configs/ml-100k-llm-rerank.toml --full   # every weight, no LoRA\n"
        "--model takes a pretrain run's model/, 'minilm' (the offline MiniLM cross-encoder) or any Hugging Face\n"
        "model directory (DeepSeek LLM / V2 / V3, R1-distilled Qwen, Llama, BERT-style encoders).\n")
    add_config_options(ft, "FinetuneConfig (see configs/ml-100k-llm-rerank.toml)", "lora.rank=16")
    ft.add_argument("--data", type=Path, help="prepared dataset directory (default: data in the config)")
    ft.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    ft.add_argument("--model", help="the base model: a directory, 'minilm' or a hub name (default: model.path)")
    ft.add_argument("--retriever-run", help="the `seekrec train` run whose top candidates are re-ranked "
                    "(default: retriever_run in the config)")
    ft.add_argument("--full", action="store_true", help="full fine-tuning instead of LoRA adapters")
    ft.set_defaults(func=cmd_finetune)

    ev = sub.add_parser(
        "evaluate", formatter_class=HELP_FORMAT, help="full-ranking metrics of a fine-tuned re-ranker on valid or test",
        epilog="example:\n  seekrec llm evaluate --run runs/llm-rerank --data data/ml-100k --json results/llm.json\n")
    ev.add_argument("--run", type=Path, required=True, help="a `seekrec llm finetune` run directory")
    ev.add_argument("--data", type=Path, required=True, help="the prepared dataset the run was trained on")
    ev.add_argument("--split", default="test", choices=["test", "valid"], help="(default: %(default)s)")
    ev.add_argument("--model", help="where the base model is now (default: the run's llm.json)")
    ev.add_argument("--retriever-run", help="another candidate generator (default: the run's own)")
    ev.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    ev.add_argument("--json", type=Path, help="also write the record here")
    ev.set_defaults(func=cmd_evaluate)

    ex = sub.add_parser(
        "export", formatter_class=HELP_FORMAT, help="merge a run's LoRA adapter into its base model for serving",
        epilog="example:\n  seekrec llm export --run runs/llm-rerank --out runs/llm-rerank-merged\n")
    ex.add_argument("--run", type=Path, required=True, help="a `seekrec llm finetune` run directory")
    ex.add_argument("--out", type=Path, required=True, help="a new directory for the merged run")
    ex.add_argument("--model", help="where the base model is now (default: the run's llm.json)")
    ex.set_defaults(func=cmd_export)

    di = sub.add_parser(
        "distill", formatter_class=HELP_FORMAT,
        help="train a SASRec student on an LLM teacher's soft targets over the retriever's candidates",
        epilog="example:\n  seekrec llm distill --config configs/ml-100k-sasrec-distill.toml --data data/ml-100k "
        "--teacher runs/llm-rerank --out runs/sasrec-distilled\n")
    add_config_options(di, "DistillConfig (see configs/ml-100k-sasrec-distill.toml)", "distill.alpha=0.5")
    di.add_argument("--data", type=Path, help="prepared dataset directory (default: data.path in the config)")
    di.add_argument("--teacher", type=Path, help="a `seekrec llm finetune` run (not needed when targets.path "
                    "already holds the teacher's targets)")
    di.add_argument("--out", type=Path, help="run directory (default: runs/<config name>)")
    di.set_defaults(func=cmd_distill)
