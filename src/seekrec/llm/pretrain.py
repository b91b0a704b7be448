"""Domain-adaptive pretraining of a small DeepSeek-V3-architecture causal LM on the training split.

The text is what the rankers will later read: the catalogue (one line per item) and every user's
TRAINING history rendered by the same ``PromptBuilder`` lines (``document_ids``), packed end to end
into ``seq_len`` chunks. A byte-level BPE tokenizer is trained on that text first (validation and test
targets never reach it). The model is ``transformers.DeepseekV3ForCausalLM`` (multi-head latent
attention with low-rank q / kv, DeepSeekMoE with shared + routed experts), trained with next-token loss
through the project's ``Trainer`` (AMP, accumulation, activation checkpointing, early stopping, exact
resume). Experts are balanced the DeepSeek-V3 way, without an auxiliary loss: after each step the
routers' ``e_score_correction_bias`` moves against the observed load (``models.deepseek_routing``).

Validation reads each validation user's training history and scores the next-token loss of their
validation target's line only: how well the model predicts the next movie's text, never the test
target. The run directory::

    out/
      config.json        the PretrainConfig as run, plus the data manifest's checksum
      tokenizer/         the trained tokenizer (kept, so a resumed run uses the very same one)
      metrics.jsonl, curves.png, checkpoints/, best/   (the Trainer's)
      model/             the best weights in Hugging Face format + the tokenizer:
                         AutoModelForCausalLM / AutoTokenizer.from_pretrained(out / "model")
      results.json       tokens seen, seconds, tokens/s, parameters, valid loss and perplexity
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seekrec.data.schema import MANIFEST_FILE, InteractionData
from seekrec.data.splits import SPLITS, UserSequences, make_split
from seekrec.io import sha256_file
from seekrec.llm.prompts import History, ItemTexts, PromptBuilder, PromptConfig, document_text
from seekrec.models.deepseek_routing import RouterMonitor
from seekrec.training.config import TrainConfig
from seekrec.training.run_dir import RunDir, read_json
from seekrec.training.step import StepStats
from seekrec.training.trainer import FitResult, Trainer

log = logging.getLogger(__name__)

MODEL_DIR = "model"
TOKENIZER_DIR = "tokenizer"
SELECT_METRIC = "neg_valid_loss"


@dataclass
class TokenizerSection:
    """``[tokenizer]``: the byte-level BPE trained on the training split."""

    vocab_size: int = 4096


@dataclass
class LMConfig:
    """``[model]``: the DeepSeek-V3 architecture, in ``DeepseekV3Config``'s own names.

    MLA: queries go through a ``q_lora_rank`` bottleneck (None: full rank), keys/values through
    ``kv_lora_rank``; each head has ``qk_nope_head_dim`` + ``qk_rope_head_dim`` query/key dims and
    ``v_head_dim`` value dims. MoE: ``n_routed_experts`` experts (``num_experts_per_tok`` chosen per
    token within the best ``topk_group`` of ``n_group`` groups) plus ``n_shared_experts`` always-on
    experts of width ``moe_intermediate_size``; the first ``first_k_dense_replace`` layers use a dense
    SwiGLU of width ``intermediate_size``. ``bias_update_speed`` is the aux-loss-free balancing step
    (0 = off): DeepSeek-V3 uses 1e-3 over a very long run; a run of a few hundred steps needs a larger
    step to rebalance at all (at 1e-3, 80 steps left two of four experts with 6% of the load each). ``vocab_size`` and ``max_position_embeddings`` come from the tokenizer
    and ``seq_len``. The defaults (1.5M parameters with a 4096-token vocabulary, a dense layer then a
    MoE layer of 4 routed experts + 1 shared) pretrain on ml-100k's text on two CPU cores in minutes, and
    LoRA of rank 8 on the MLA projections stays near 1.3% of the parameters.
    """

    hidden_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    q_lora_rank: int | None = 64
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    intermediate_size: int = 384
    moe_intermediate_size: int = 96
    n_routed_experts: int = 4
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    n_group: int = 1
    topk_group: int = 1
    first_k_dense_replace: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    attention_dropout: float = 0.0
    tie_word_embeddings: bool = False
    bias_update_speed: float = 1e-2

    def __post_init__(self) -> None:
        sizes = {k: v for k, v in asdict(self).items() if isinstance(v, int) and not isinstance(v, bool)}
        bad = [k for k, v in sizes.items() if v < (0 if k in ("first_k_dense_replace",) else 1)]
        if bad:
            raise ValueError(f"model.{bad[0]} must be >= 1, got {sizes[bad[0]]}")
        if self.qk_rope_head_dim % 2:
            raise ValueError(f"model.qk_rope_head_dim must be even (rotary pairs), got {self.qk_rope_head_dim}")
        if self.num_experts_per_tok > self.n_routed_experts:
            raise ValueError(f"model.num_experts_per_tok={self.num_experts_per_tok} exceeds "
                             f"model.n_routed_experts={self.n_routed_experts}")
        if self.n_routed_experts % self.n_group or self.topk_group > self.n_group:
            raise ValueError("model.n_routed_experts must be divisible by model.n_group, and model.topk_group "
                             "<= model.n_group")
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ValueError("model.first_k_dense_replace cannot exceed model.num_hidden_layers")
        if self.bias_update_speed < 0:
            raise ValueError("model.bias_update_speed must be >= 0")

    def hf_config(self, vocab_size: int, max_positions: int, *, pad: int, bos: int, eos: int) -> Any:
        """The ``transformers.DeepseekV3Config`` of this architecture."""
        from transformers import DeepseekV3Config

        kwargs = {k: v for k, v in asdict(self).items() if k != "bias_update_speed"}
        return DeepseekV3Config(vocab_size=vocab_size, max_position_embeddings=max_positions,
                                num_key_value_heads=self.num_attention_heads, rope_scaling=None,
                                pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, **kwargs)


def _pretrain_train_config() -> TrainConfig:
    return TrainConfig(lr=2e-3, weight_decay=0.01, betas=(0.9, 0.95), warmup_steps=30, min_lr_ratio=0.1,
                       max_epochs=4, batch_size=16, patience=2, select_metric=SELECT_METRIC, eval_batch_size=32,
                       checkpoint_every=100)


@dataclass
class PretrainConfig:
    """``seekrec llm pretrain``: tokenizer, model, prompt lines, optimisation; TOML at
    ``configs/ml-100k-llm-pretrain.toml``. ``seq_len`` is the packed chunk length and the model's
    maximum position (at least ``prompt.token_budget``, the length of the prompts it will rank);
    ``split`` which events count as training. An epoch is ``epoch_tokens`` of the corpus (successive
    epochs continue through seeded passes over it), so a large corpus is validated, early-stopped and
    checkpointed on a CPU-sized schedule; ``train.max_epochs`` times it bounds the tokens seen. With
    ``resume`` the run checkpoints every ``train.checkpoint_every`` steps."""

    seq_len: int = 320
    split: str = "leave_one_out"
    epoch_tokens: int | None = 100_000  # tokens per "epoch" (between validations); None: the whole corpus
    valid_users: int | None = 400  # validate on this many validation users (a fixed seeded subset); None: all
    valid_context: int = 160  # tokens of a validation user's history (prompt prefix) before the target line
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    model: LMConfig = field(default_factory=LMConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    train: TrainConfig = field(default_factory=_pretrain_train_config)

    def __post_init__(self) -> None:
        if self.seq_len < self.prompt.token_budget:
            raise ValueError(f"seq_len={self.seq_len} is shorter than prompt.token_budget={self.prompt.token_budget}: "
                             "the model would rank prompts longer than any text it was pretrained on; raise "
                             "seq_len or lower prompt.token_budget")
        if self.epoch_tokens is not None and self.epoch_tokens < self.seq_len:
            raise ValueError(f"epoch_tokens={self.epoch_tokens} is less than one seq_len={self.seq_len} chunk")
        if self.valid_users is not None and self.valid_users < 1:
            raise ValueError(f"valid_users must be >= 1 (or omitted for all), got {self.valid_users}")
        if self.valid_context < 1:
            raise ValueError(f"valid_context must be >= 1, got {self.valid_context}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        if self.train.select_metric not in VALID_METRICS:
            raise ValueError(f"train.select_metric for pretraining must be one of {VALID_METRICS}, "
                             f"got {self.train.select_metric!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


VALID_METRICS = (SELECT_METRIC, "neg_perplexity")


# -- the text ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainHistories:
    """Every user's training events with their values and times (CSR rows, like ``UserSequences``),
    and the validation users' targets."""

    train: UserSequences
    values: np.ndarray  # [E] the training events' values, aligned with train.items
    valid_users: np.ndarray  # [M]
    valid_targets: np.ndarray  # [M]
    valid_times: np.ndarray  # [M] the validation targets' timestamps ("now" of their prompts)

    def history(self, user: int, now: int | None = None) -> History:
        """User ``user``'s training history; ``now`` defaults to their last training event's time."""
        lo, hi = self.train.offsets[user], self.train.offsets[user + 1]
        times = self.train.timestamps[lo:hi]
        if now is None:
            now = int(times[-1]) if hi > lo else 0
        return History(self.train.items[lo:hi], self.values[lo:hi], times, now)


def training_histories(data: InteractionData, split: str) -> TrainHistories:
    """The training split of ``data`` with every event's value kept beside its item."""
    users, items, timestamps = data.interactions()
    values = data.events.column("value").to_numpy(zero_copy_only=False).astype(np.float64)
    seqs = UserSequences.from_interactions(users, items, timestamps, data.n_users)
    order = np.lexsort((np.arange(len(users)), timestamps, users))  # the order from_interactions uses
    sorted_values = values[order]
    chosen = make_split(seqs, split)
    train = chosen.train
    # a user's training events are the first ones of their time-ordered row (both splits cut a suffix)
    start = np.repeat(seqs.offsets[:-1], train.lengths())
    position = np.arange(train.n_events) - np.repeat(train.offsets[:-1], train.lengths())
    train_values = sorted_values[start + position]
    if not np.array_equal(seqs.items[start + position], train.items):
        raise RuntimeError(f"split {split!r}: training events are not a prefix of each user's row")
    valid = chosen.valid
    valid_pos = seqs.offsets[valid.users] + valid.history.lengths()[valid.users]
    return TrainHistories(train, train_values, valid.users, valid.targets, seqs.timestamps[valid_pos])


def tokenizer_corpus(items: ItemTexts, config: PromptConfig, histories: TrainHistories) -> Iterator[str]:
    """The text the tokenizer learns from: each catalogue entry as a history line and as a candidate
    question, then every user's training history (the validation and test targets are not in it)."""
    for item in range(1, items.n_items + 1):
        text = items.text(item, config.item_fields)
        yield "\n- " + text
        yield "\n" + config.question.format(item=text) + config.answer_cue + " Yes No"
    for user in np.flatnonzero(histories.train.lengths() > 0):
        yield document_text(items, config, histories.history(int(user)))


def corpus_ids(builder: PromptBuilder, histories: TrainHistories, seed: int) -> np.ndarray:
    """``[T]`` int32 token stream: the catalogue document, then users' training documents in a seeded
    random order, each ``<s> ... </s>``."""
    tok = builder.tokenizer
    catalogue = [tok.bos_token_id, *tok("The catalogue:", add_special_tokens=False)["input_ids"]]
    for item in range(1, builder.items.n_items + 1):
        catalogue += builder.line_ids(item)
    docs = [catalogue + [tok.eos_token_id]]
    users = np.flatnonzero(histories.train.lengths() > 0)
    for user in np.random.default_rng(seed).permutation(users):
        docs.append(builder.document_ids(histories.history(int(user))))
    return np.fromiter((t for doc in docs for t in doc), dtype=np.int32)


def validation_examples(builder: PromptBuilder, histories: TrainHistories, context: int,
                        users: int | None = None, seed: int = 0) -> list[tuple[list[int], int]]:
    """Per validation user ``(ids, n_target)``: the prompt prefix of their training history (the same
    lines, ``max_history`` and budget rule as the rankers' prompts, in ``context`` tokens) followed by the
    validation target's history line, whose ``n_target`` tokens (the last ones) are scored. ``users``:
    a fixed seeded subset of that many validation users (None: all)."""
    picked = np.arange(len(histories.valid_users))
    if users is not None and users < len(picked):
        picked = np.sort(np.random.default_rng(seed).permutation(len(picked))[:users])
    examples = []
    for k in picked:
        user, target, now = (int(a[k]) for a in (histories.valid_users, histories.valid_targets,
                                                   histories.valid_times))
        prefix = builder.prefix_ids(histories.history(user, now=now), budget=context)
        target_ids = builder.line_ids(target)
        examples.append((prefix + target_ids, len(target_ids)))
    return examples


# -- batches, task, model ------------------------------------------------------------------------

@dataclass
class TokenBatch:
    """``[B, L]`` packed token chunks; every position but the last predicts the next token."""

    input_ids: Tensor  # [B, L]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> TokenBatch:
        return TokenBatch(self.input_ids.to(device, non_blocking=non_blocking))

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def n_targets(self) -> int:
        return self.input_ids.shape[0] * (self.input_ids.shape[1] - 1)


class PackedChunks:
    """``EpochBatches`` over ``[C, L]`` chunks, ``per_epoch`` chunks an epoch, resumable at any batch.

    The chunks are read in an endless series of seeded passes (pass ``p`` is a permutation seeded by
    ``seed`` and ``p``); epoch ``e`` takes positions ``[e * per_epoch, (e + 1) * per_epoch)`` of that
    series, so epochs shorter than the corpus continue through it instead of repeating its start.
    """

    def __init__(self, chunks: Tensor, config: TrainConfig, per_epoch: int | None = None) -> None:
        if config.batch_size % config.grad_accum:
            raise ValueError(f"train.batch_size {config.batch_size} must be divisible by train.grad_accum")
        if len(chunks) == 0:
            raise ValueError("the corpus is shorter than one seq_len chunk; lower seq_len")
        self.chunks, self.config = chunks, config
        self.per_epoch = per_epoch or len(chunks)
        self.micro = config.batch_size // config.grad_accum

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.per_epoch / self.config.batch_size)

    @property
    def targets_per_epoch(self) -> int:
        return self.per_epoch * (self.chunks.shape[1] - 1)

    def _order(self, epoch: int) -> Tensor:
        """``[per_epoch]`` chunk indices of ``epoch``."""
        n = len(self.chunks)
        first, last = epoch * self.per_epoch, (epoch + 1) * self.per_epoch  # positions in the series
        passes = [torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 100_003 + p))
                  for p in range(first // n, (last - 1) // n + 1)]
        offset = first // n * n
        return torch.cat(passes)[first - offset : last - offset]

    def epoch(self, epoch: int, start: int) -> Iterator[list[TokenBatch]]:
        order = self._order(epoch)
        size = self.config.batch_size
        for step in range(start, self.steps_per_epoch):
            rows = order[step * size : (step + 1) * size]
            yield [TokenBatch(self.chunks[rows[i : i + self.micro]]) for i in range(0, len(rows), self.micro)]

    def throughput(self, stats: StepStats, world_size: int) -> dict[str, float]:
        return {"seq_per_s": stats.sequences * world_size / stats.seconds,
                "tokens_per_s": stats.tokens * world_size / stats.seconds}


class CausalLM(nn.Module):
    """A Hugging Face causal LM as the Trainer wants a model: ``forward(input_ids) -> logits``,
    activation checkpointing, and DeepSeek-V3 router balancing (``update_routing_bias``, ``expert_load``)."""

    def __init__(self, lm: nn.Module, bias_update_speed: float = 0.0) -> None:
        super().__init__()
        self.lm = lm
        self.bias_update_speed = bias_update_speed
        from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE

        layers = getattr(getattr(lm, "model", None), "layers", [])
        gates = {f"layer{i}": layer.mlp.gate for i, layer in enumerate(layers) if isinstance(layer.mlp, DeepseekV3MoE)}
        config = lm.config
        self._routing = RouterMonitor(gates, getattr(config, "n_routed_experts", 1),
                                      getattr(config, "num_experts_per_tok", 1)) if gates else None

    def forward(self, input_ids: Tensor) -> Tensor:
        """``[B, L] -> [B, L, V]`` next-token logits (no padding: packed chunks, right-padded validation)."""
        if self._routing is not None:
            self._routing.begin(torch.ones_like(input_ids, dtype=torch.bool))
        return self.lm(input_ids=input_ids, use_cache=False).logits

    def set_activation_checkpointing(self, enabled: bool) -> None:
        if enabled:
            self.lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.lm.activation_checkpointing_disable()

    def update_routing_bias(self) -> None:
        """Aux-loss-free balancing after each optimiser step (DeepSeek-V3); no-op without MoE or speed 0."""
        if self._routing is not None and self.bias_update_speed > 0:
            self._routing.update_bias(self.bias_update_speed)

    def expert_load(self) -> dict[str, list[float]]:
        return self._routing.expert_load() if self._routing is not None else {}


class NextTokenTask:
    """Mean next-token cross-entropy over every position of a packed chunk but the last."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def step_loss(self, batch: TokenBatch) -> tuple[Tensor, dict[str, Tensor]]:
        logits = self.model(batch.input_ids)  # [B, L, V]
        loss = nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), batch.input_ids[:, 1:].flatten())
        return loss, {"n_targets": torch.tensor(batch.n_targets)}


class TargetLineLoss:
    """The validation callable: mean loss of the validation targets' line tokens given the history."""

    def __init__(self, model: CausalLM, examples: list[tuple[list[int], int]], batch_size: int, pad: int) -> None:
        self.model, self.examples, self.batch_size, self.pad = model, examples, batch_size, pad

    def __call__(self) -> dict[str, float]:
        device = next(self.model.parameters()).device
        total, count = 0.0, 0
        order = sorted(range(len(self.examples)), key=lambda i: len(self.examples[i][0]))  # less padding
        for lo in range(0, len(order), self.batch_size):
            group = [self.examples[i] for i in order[lo : lo + self.batch_size]]
            width = max(len(ids) for ids, _ in group)
            ids = torch.full((len(group), width), self.pad, dtype=torch.long)
            scored = torch.zeros(len(group), width, dtype=torch.bool)  # positions whose NEXT token is scored
            for row, (example, n_target) in enumerate(group):
                ids[row, : len(example)] = torch.tensor(example)
                scored[row, len(example) - n_target - 1 : len(example) - 1] = True
            # right padding: causal attention never lets a real position see the padding after it
            logits = self.model(ids.to(device))[:, :-1].float()
            targets = ids[:, 1:].to(device)
            losses = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none")
            mask = scored[:, :-1].flatten().to(device)
            total += float(losses[mask].sum())
            count += int(mask.sum())
        loss = total / max(count, 1)
        # nats per target line: comparable with ln(n_items), the cost of a uniform guess over the catalogue
        return {SELECT_METRIC: -loss, "valid_loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                "neg_perplexity": -math.exp(min(loss, 50.0)), "valid_tokens": float(count),
                "valid_nats_per_line": total / max(len(self.examples), 1)}


# -- the run -------------------------------------------------------------------------------------

def pretrain(config: PretrainConfig, data_dir: Path, out: Path, *, resume: bool = True) -> dict[str, Any]:
    """Pretrain on the prepared dataset ``data_dir``; write the run to ``out``; returns results.json.

    ``resume``: a run directory with checkpoints continues where it stopped (same config and data
    required); without it ``out`` must not hold a run yet.
    """
    from transformers import DeepseekV3ForCausalLM

    data_dir, out = Path(data_dir), Path(out)
    if not (data_dir / MANIFEST_FILE).is_file():
        raise FileNotFoundError(f"{data_dir}: not a prepared dataset (no {MANIFEST_FILE}); prepare it with "
                                f"`seekrec data prepare --dataset ml-100k --raw PATH --out {data_dir}`")
    run = RunDir(out)
    manifest = {"config": config.to_dict(), "data": str(data_dir), "data_manifest_sha256":
                sha256_file(data_dir / MANIFEST_FILE)}
    _check_run_dir(run, manifest, resume)
    torch.manual_seed(config.train.seed)
    data = InteractionData.read(data_dir)
    items = ItemTexts.from_data(data)
    histories = training_histories(data, config.split)
    tokenizer = _tokenizer(out / TOKENIZER_DIR, items, config, histories)
    builder = PromptBuilder(tokenizer, items, config.prompt)
    stream = torch.from_numpy(corpus_ids(builder, histories, config.train.seed).astype(np.int64))
    n_chunks = len(stream) // config.seq_len
    chunks = stream[: n_chunks * config.seq_len].view(n_chunks, config.seq_len)  # [C, L]
    per_epoch = None if config.epoch_tokens is None else max(config.epoch_tokens // config.seq_len, 1)
    batches = PackedChunks(chunks, config.train, per_epoch)
    examples = validation_examples(builder, histories, config.valid_context, config.valid_users, config.train.seed)
    if not examples:
        raise ValueError(f"{data_dir}: no user has a validation target (needs >= 3 events); nothing to validate on")
    hf_config = config.model.hf_config(len(tokenizer), config.seq_len, pad=tokenizer.pad_token_id,
                                       bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id)
    model = CausalLM(DeepseekV3ForCausalLM(hf_config), config.model.bias_update_speed)
    n_params = sum(p.numel() for p in model.lm.parameters())
    log.info("pretraining %.2fM parameters on %d tokens (%d chunks of %d), %d validation targets",
             n_params / 1e6, len(stream), n_chunks, config.seq_len, len(examples))
    validate = TargetLineLoss(model, examples, config.train.eval_batch_size, tokenizer.pad_token_id)
    train = config.train if resume else dataclasses.replace(config.train, checkpoint_every=0)
    trainer = Trainer(model, NextTokenTask, batches, validate, train, run_dir=run, manifest=manifest,
                      resume=resume, validate_untrained=True)
    fit = trainer.fit()
    model.lm.save_pretrained(out / MODEL_DIR, safe_serialization=True)
    tokenizer.save_pretrained(out / MODEL_DIR)
    run.plot()
    results = _results(fit, batches, n_params, len(stream), len(examples), lora_parameters(model.lm, 8))
    results["uniform_catalogue_nats"] = math.log(items.n_items)  # per line, for valid_nats_per_line
    run.write_results(results)
    log.info("pretrained: valid perplexity %.2f after %d tokens in %.0f s; model in %s",
             results["valid_perplexity"], results["tokens_seen"], results["seconds"], out / MODEL_DIR)
    return results


def _check_run_dir(run: RunDir, manifest: dict[str, Any], resume: bool) -> None:
    """Refuse to mix runs: ``out`` holds nothing, or (``resume``) a run of the same config and data."""
    if run.config_file.is_file():
        previous = read_json(run.config_file)
        if not resume:
            raise ValueError(f"{run.path} already holds a run; pick a new output directory (or resume it)")
        if previous != json.loads(json.dumps(manifest)):  # as it reads back: tuples became lists
            raise ValueError(f"{run.path} holds a run of a different config or dataset; pick a new output "
                             "directory to start over, or rerun with the config and data it was made with")
        return
    run.write_config(manifest)


def _tokenizer(path: Path, items: ItemTexts, config: PretrainConfig, histories: TrainHistories) -> Any:
    """The run's tokenizer: loaded from ``path`` when a previous attempt of this run saved it, else
    trained on the training split and saved there first."""
    from transformers import AutoTokenizer

    from seekrec.llm.tokenizer import train_tokenizer

    if (path / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(path)
    tokenizer = train_tokenizer(tokenizer_corpus(items, config.prompt, histories), config.tokenizer.vocab_size)
    tokenizer.save_pretrained(path)
    return tokenizer


def lora_parameters(lm: nn.Module, rank: int) -> int:
    """Parameters LoRA of ``rank`` adds on the MLA projections (q_a/q_b or q, kv_a, kv_b, o): the
    fine-tuning budget, reported beside the model size."""
    names = ("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
    return sum(rank * (m.in_features + m.out_features) for name, m in lm.named_modules()
               if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in names)


def _results(fit: FitResult, batches: PackedChunks, n_params: int, corpus_tokens: int, valid_users: int,
             lora_r8: int) -> dict[str, Any]:
    full, partial = divmod(fit.steps, batches.steps_per_epoch)
    per_step = batches.config.batch_size * (batches.chunks.shape[1] - 1)
    tokens_seen = full * batches.targets_per_epoch + partial * per_step
    loss = fit.best_valid.get("valid_loss", float("nan"))
    return {
        "kind": "llm_pretrain",
        "parameters": n_params,
        "lora_r8_parameters": lora_r8,
        "lora_r8_fraction": lora_r8 / (n_params + lora_r8),
        "corpus_tokens": corpus_tokens,
        "tokens_seen": tokens_seen,
        "steps": fit.steps,
        "epochs_run": fit.epochs_run,
        "best_epoch": fit.best_epoch,
        "seconds": fit.seconds,
        "tokens_per_second": fit.tokens_per_second,
        "valid_users": valid_users,
        "valid_loss": loss,
        "valid_perplexity": math.exp(min(loss, 50.0)) if math.isfinite(loss) else float("nan"),
        "valid_nats_per_line": fit.best_valid.get("valid_nats_per_line", float("nan")),
        "valid": fit.best_valid,
    }


__all__ = ["CausalLM", "LMConfig", "PretrainConfig", "TokenizerSection", "pretrain", "training_histories",
           "tokenizer_corpus", "corpus_ids", "validation_examples", "lora_parameters"]
