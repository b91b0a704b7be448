"""Language models as rankers: ``nn.Module``s the project's Trainer trains and the rerankers call.

A causal LM scores a (history, item) prompt by how much more it expects " Yes" than " No" after the
candidate segment's answer cue: ``logit(" Yes") - logit(" No")`` at the segment's last token. Every
candidate of a request shares the history prefix, so ``CausalRanker.score`` runs the prefix ONCE, keeps
its keys and values (for DeepSeek-V3's multi-head latent attention: the compressed latents), repeats
them for the K candidates and runs all K candidate segments in one forward, positions continuing after
the prefix. Training batches use the same split when a group (one positive and its negatives) shares
a history. ``score_separately`` is the plain reference (each whole prompt alone) the fast path is tested
against. A cross-encoder reads the text pair (history text, candidate text) and outputs one logit.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from seekrec.llm.mla_scoring import MLAScorer
from seekrec.llm.mla_scoring import supports as supports_mla
from seekrec.llm.models import SCORES, Kind, unwrap_peft
from seekrec.llm.prompts import History, PromptBuilder
from seekrec.llm.tokenizer import answer_ids


@dataclass
class PairBatch:
    """Tokenised (history, candidate) pairs, ``B`` rows; ``group_size`` consecutive rows form one group
    (a listwise example: one positive and its negatives) or 1 (pointwise examples).

    Causal rankers split each row into a history prefix and a candidate segment: ``prefix_ids`` holds one
    LEFT-padded prefix per ``prefix_repeat`` consecutive rows (``prefix_repeat`` is ``group_size`` when every
    group shares its history, else 1) and ``input_ids`` the RIGHT-padded candidate segments. Cross-encoders
    put the whole right-padded pair in ``input_ids`` (no prefix). ``last_index``: the position of each
    row's last real token in ``input_ids``.
    """

    input_ids: Tensor  # [B, C] right-padded candidate segments (causal) or whole pairs (cross-encoder)
    attention_mask: Tensor  # [B, C] 1 on real tokens
    last_index: Tensor  # [B] index of each row's last real token in input_ids
    labels: Tensor | None = None  # [B] float targets (1 / 0, or graded)
    group_size: int = 1
    prefix_ids: Tensor | None = None  # [B / prefix_repeat, P] left-padded prefixes (causal rankers)
    prefix_mask: Tensor | None = None  # [B / prefix_repeat, P]
    prefix_repeat: int = 1
    token_type_ids: Tensor | None = None  # [B, C] segment ids, for cross-encoders whose tokenizer makes them
    padding: bool = False  # a rank's stand-in for an empty share of a global batch: run, but no loss term

    def __post_init__(self) -> None:
        if len(self) % self.group_size:
            raise ValueError(f"{len(self)} pairs do not split into groups of {self.group_size}")

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def n_targets(self) -> int:
        """Loss terms in the batch: one per group (one per pair when ``group_size`` is 1); none in padding."""
        return 0 if self.padding else len(self) // self.group_size

    @property
    def tokens(self) -> int:
        """Real tokens the forward processes (each shared prefix counted once)."""
        n = int(self.attention_mask.sum())
        return n + (int(self.prefix_mask.sum()) if self.prefix_mask is not None else 0)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> PairBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, Tensor):
                moved[name] = value.to(device, non_blocking=non_blocking)
        return replace(self, **moved)


def pad_right(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """``[B, L]`` ids right-padded with ``pad`` and the mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[i, : len(row)] = 1
    return ids, mask


def pad_left(rows: Sequence[Sequence[int]], pad: int) -> tuple[Tensor, Tensor]:
    """``[B, L]`` ids left-padded with ``pad`` and the mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row):] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row):] = 1
    return ids, mask


def pair_histories(histories: Sequence[History], n_pairs: int, group_size: int) -> list[History]:
    """One history per pair: ``histories`` gives one per pair, or one per group of ``group_size`` pairs."""
    if group_size < 1 or n_pairs % group_size:
        raise ValueError(f"group_size={group_size} must divide the {n_pairs} items")
    if len(histories) == n_pairs:
        return list(histories)
    if len(histories) * group_size == n_pairs:
        return [h for h in histories for _ in range(group_size)]
    raise ValueError(f"{len(histories)} histories for {n_pairs} items in groups of {group_size}: give one "
                     "history per item or one per group")


def _labels(labels: Sequence[float] | np.ndarray | Tensor | None, n_pairs: int) -> Tensor | None:
    if labels is None:
        return None
    out = torch.as_tensor(np.asarray(labels, dtype=np.float32))
    if out.shape != (n_pairs,):
        raise ValueError(f"labels have shape {tuple(out.shape)}; expected one per item ({n_pairs},)")
    return out


def _set_checkpointing(model: nn.Module, on: bool) -> None:
    """Activation checkpointing of a transformers model (inside a peft wrapper too)."""
    base = unwrap_peft(model)
    if on:
        enable = getattr(base, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        # non-reentrant checkpointing needs no grad on the embedding output; the hook transformers adds for
        # it would also fail on inference tensors when scoring under inference_mode
        if getattr(base, "_require_grads_hook", None) is not None:
            base.disable_input_require_grads()
    else:
        disable = getattr(base, "activation_checkpointing_disable", None)
        (disable or base.gradient_checkpointing_disable)()


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks of a transformers model (inside a peft wrapper too): the modules of the classes its
    ``_no_split_modules`` names (the blocks Hugging Face's own FSDP wrapping takes as units), else, for a model
    that names none (BERT), the members of its largest list of same-class modules (the encoder's layers)."""
    base = unwrap_peft(model)
    names = set(getattr(base, "_no_split_modules", None) or ())
    blocks = [m for m in base.modules() if type(m).__name__ in names]
    if blocks:
        return blocks
    stacks = [list(m) for m in base.modules() if isinstance(m, nn.ModuleList) and len(m)
              and len({type(c) for c in m}) == 1]
    if not stacks:
        raise ValueError(f"{type(base).__name__} names no transformer blocks (_no_split_modules) and has no list of "
                         "same-class layers: train it with train.strategy = 'ddp'")
    return max(stacks, key=lambda blocks: sum(p.numel() for b in blocks for p in b.parameters()))


class _EvalMode:
    """Eval mode for the duration of a ``with`` block, the previous mode restored after it."""

    def __init__(self, module: nn.Module) -> None:
        self.module, self.was_training = module, module.training

    def __enter__(self) -> None:
        if self.was_training:
            self.module.eval()

    def __exit__(self, *exc: object) -> None:
        if self.was_training:
            self.module.train()


class CausalRanker(nn.Module):
    """score(history, item) = logit(" Yes") - logit(" No") at the candidate segment's last token (``answer``),
    or log p(item's history line | history) (``likelihood``: the LM as a generative next-item model, which a
    pretrained LM can do before any fine-tuning; the whole vocabulary's softmax at each line token).

    ``model``: a transformers causal LM (or a peft model around one) whose logits are its output
    embedding applied to the final hidden state (DeepSeek, Llama, Qwen, Mistral). The two answer logits
    are computed from the gathered last hidden states only, never the whole ``[B, L, vocab]`` logits.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, builder: PromptBuilder, score: str = "answer") -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"score={score!r} is not a causal score; use one of {SCORES}")
        self.model, self.tokenizer, self.builder, self.score_kind = model, tokenizer, builder, score
        self.yes_id, self.no_id = answer_ids(tokenizer) if score == "answer" else (-1, -1)
        self.pad_id = int(tokenizer.pad_token_id)
        config = unwrap_peft(model).config
        for attr in ("final_logit_softcapping", "logit_scale"):
            if getattr(config, attr, None) not in (None, 1, 1.0):
                raise ValueError(f"{type(unwrap_peft(model)).__name__} transforms its logits ({attr}); the ranker "
                                 "reads them straight from the output embedding: use another model")
        self.checkpointing = False

    # -- batches --------------------------------------------------------------------------------------

    def collate(self, histories: Sequence[History], items: Sequence[int],
                labels: Sequence[float] | np.ndarray | Tensor | None = None, group_size: int = 1) -> PairBatch:
        """Tokenise pairs (``histories``: one per item, or one per group of ``group_size`` items). When
        every group shares one history, its prefix is stored (and run) once for the group."""
        items = [int(i) for i in items]
        per_pair = pair_histories(histories, len(items), group_size)
        if group_size > 1 and len(histories) * group_size == len(items):
            prefixes, repeat = [self.builder.prefix_ids(h) for h in histories], group_size
        else:
            prefixes, repeat = [self.builder.prefix_ids(h) for h in per_pair], 1
            if group_size > 1 and all(prefixes[i] == prefixes[i - i % group_size] for i in range(len(prefixes))):
                prefixes, repeat = prefixes[::group_size], group_size
        candidate_ids, candidate_mask = pad_right([self._segment(i) for i in items], self.pad_id)
        prefix_ids, prefix_mask = pad_left(prefixes, self.pad_id)
        return PairBatch(candidate_ids, candidate_mask, candidate_mask.sum(1) - 1, _labels(labels, len(items)),
                         group_size, prefix_ids, prefix_mask, repeat)

    # -- forward ---------------------------------------------------------------------------------------

    def _segment(self, item: int) -> list[int]:
        """What follows the prefix: the question + answer cue (``answer``), or the item's history line
        (``likelihood``: the text the LM would write next if the user watched it)."""
        return self.builder.candidate_ids(item) if self.score_kind == "answer" else self.builder.line_ids(item)

    def forward(self, batch: PairBatch) -> Tensor:
        """``[B]`` scores, differentiable (train mode: dropout and LoRA dropout active)."""
        prefix_last, hidden = self._hidden(batch)
        if self.score_kind == "answer":
            rows = torch.arange(len(batch), device=hidden.device)
            return self._answer_logits(hidden[rows, batch.last_index])
        # token t of a segment is predicted by the hidden state before it: the prefix's last, then the segment's
        predictors = torch.cat([prefix_last[:, None], hidden[:, :-1]], 1)  # [B, C, D]
        return (self._token_log_probs(predictors, batch.input_ids) * batch.attention_mask).sum(1)

    def _hidden(self, batch: PairBatch) -> tuple[Tensor, Tensor]:
        """``([B, D], [B, C, D])``: final hidden states at each row's last prefix token and at every candidate
        segment position (causal batches always carry a left-padded prefix, so its last column is real)."""
        backbone = self._backbone()
        if batch.prefix_ids is None:
            raise ValueError("a causal ranker's batch needs its history prefix; build it with the ranker's collate")
        if self.checkpointing and self.training and torch.is_grad_enabled():
            # checkpointed layers drop the KV cache: run each whole prompt as one (left + right padded) row
            ids = torch.cat([batch.prefix_ids.repeat_interleave(batch.prefix_repeat, 0), batch.input_ids], 1)
            mask = torch.cat([batch.prefix_mask.repeat_interleave(batch.prefix_repeat, 0), batch.attention_mask], 1)
            positions = (mask.cumsum(1) - 1).clamp(min=0)
            out = backbone(input_ids=ids, attention_mask=mask, position_ids=positions).last_hidden_state
            width = batch.prefix_ids.shape[1]
            return out[:, width - 1], out[:, width:]
        # the prefix once per group, its cache repeated for the group's candidates
        positions = (batch.prefix_mask.cumsum(1) - 1).clamp(min=0)
        prefix_out = backbone(input_ids=batch.prefix_ids, attention_mask=batch.prefix_mask, position_ids=positions,
                              use_cache=True)
        cache = _output_cache(prefix_out)
        if batch.prefix_repeat > 1:
            cache.batch_repeat_interleave(batch.prefix_repeat)
        prefix_mask = batch.prefix_mask.repeat_interleave(batch.prefix_repeat, 0)
        lengths = prefix_mask.sum(1, keepdim=True)  # [B, 1] real prefix tokens: the candidates' first position
        positions = lengths + torch.arange(batch.input_ids.shape[1], device=lengths.device)
        out = backbone(input_ids=batch.input_ids, attention_mask=torch.cat([prefix_mask, batch.attention_mask], 1),
                       position_ids=positions, use_cache=True, **{_cache_kwarg(backbone): cache})
        prefix_last = prefix_out.last_hidden_state[:, -1].repeat_interleave(batch.prefix_repeat, 0)
        return prefix_last, out.last_hidden_state

    def _answer_logits(self, hidden: Tensor) -> Tensor:
        """``[B]`` logit(" Yes") - logit(" No") from ``[B, D]`` final hidden states."""
        head = unwrap_peft(self.model).get_output_embeddings()
        weight = head.weight[[self.yes_id, self.no_id]]  # [2, D]
        logits = hidden.to(weight.dtype) @ weight.T  # [B, 2]
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[[self.yes_id, self.no_id]]
        return (logits[:, 0] - logits[:, 1]).float()

    def _token_log_probs(self, hidden: Tensor, ids: Tensor) -> Tensor:
        """``[...]`` log p(``ids``) under the LM head's softmax over the vocabulary at ``hidden [..., D]``."""
        head = unwrap_peft(self.model).get_output_embeddings()
        logits = head(hidden.to(head.weight.dtype)).float()
        return torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]

    def _backbone(self) -> nn.Module:
        """The decoder stack (embeddings, layers, final norm) without the LM head."""
        return unwrap_peft(self.model).base_model

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    # -- scoring ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def score(self, history: History, items: Sequence[int]) -> Tensor:
        """``[K]`` scores of ``items`` for one user: the history prefix runs ONCE and all K candidate segments
        read its keys/values (eval mode for the call). ``likelihood`` scores are the log-probability of each
        item's history line after the prefix, summed over its tokens.

        DeepSeek-V3 (MLA) models go through ``MLAScorer``: the prefix's keys and values are expanded once and
        shared, and the last layer runs for each candidate's last token only (at K=50 on the ml-100k model's
        size, p50 28 / p99 35 ms against 48 / 73 ms for the cache path below; docs/llm.md). Other decoders take
        the model's KV cache: candidates are packed a few to a row (``candidate_rows``), each attending to the prefix and to itself
        only through a block mask, so fewer copies of the cache are made; flash-attention kernels take no
        block mask, so there every candidate gets its own row."""
        items = [int(i) for i in items]
        if not items:
            return torch.zeros(0)
        with _EvalMode(self):
            backbone = self._backbone()
            prefix_ids = self.builder.prefix_ids(history)
            segments = [self._segment(i) for i in items]
            if self.score_kind == "likelihood":
                return self._likelihood_scores(backbone, prefix_ids, segments).cpu()
            if supports_mla(backbone):
                return self._answer_logits(MLAScorer(backbone).last_hidden(prefix_ids, segments)).cpu()
            impl = getattr(unwrap_peft(self.model).config, "_attn_implementation", "sdpa")
            row_tokens = max(len(prefix_ids) // 2, 1) if impl in ("sdpa", "eager") else 0
            rows = candidate_rows(segments, len(prefix_ids), self.pad_id, row_tokens)
            _, hidden = self._over_prefix_cache(backbone, prefix_ids, rows)
            device = hidden.device
            return self._answer_logits(hidden[rows.last_row.to(device), rows.last_column.to(device)]).cpu()

    def _over_prefix_cache(self, backbone: nn.Module, prefix_ids: list[int],
                           rows: CandidateRows) -> tuple[Tensor, Tensor]:
        """``([D], [R, T, D])``: final hidden states at the prefix's last token and at every position of the
        candidate ``rows``, which run over the prefix's KV cache repeated once per row."""
        device = self._device()
        prefix_out = backbone(input_ids=torch.as_tensor(prefix_ids, dtype=torch.long, device=device)[None],
                              use_cache=True)
        cache = _output_cache(prefix_out)
        cache.batch_repeat_interleave(rows.input_ids.shape[0])
        mask = rows.attention_mask(len(prefix_ids), backbone.get_input_embeddings().weight.dtype)
        out = backbone(input_ids=rows.input_ids.to(device), position_ids=rows.position_ids.to(device),
                       attention_mask=None if mask is None else mask.to(device), use_cache=True,
                       **{_cache_kwarg(backbone): cache})
        return prefix_out.last_hidden_state[0, -1], out.last_hidden_state

    def _likelihood_scores(self, backbone: nn.Module, prefix_ids: list[int], segments: list[list[int]]) -> Tensor:
        """``[K]`` summed log-probabilities of the segments after the prefix: MLA models through ``MLAScorer``
        (the K segments as one flat batch), others over the repeated KV cache, one segment per row."""
        device = self._device()
        lengths = torch.tensor([len(s) for s in segments], device=device)
        ids = torch.tensor([t for s in segments for t in s], dtype=torch.long, device=device)  # [N]
        segment = torch.repeat_interleave(torch.arange(len(segments), device=device), lengths)  # [N]
        if supports_mla(backbone):
            prefix_last, tokens = MLAScorer(backbone).token_hidden(prefix_ids, segments)  # [D], [N, D]
        else:  # one segment per row: row-major real positions are the segments' tokens in order
            rows = candidate_rows(segments, len(prefix_ids), self.pad_id, 0)
            prefix_last, hidden = self._over_prefix_cache(backbone, prefix_ids, rows)
            tokens = hidden[rows.segment.to(device) >= 0]  # [N, D]
        starts = torch.cumsum(lengths, 0) - lengths
        first = torch.zeros(len(ids), dtype=torch.bool, device=device)
        first[starts] = True
        # token i is predicted by token i - 1 of its segment, or by the prefix's last token when it is the first
        predictors = torch.cat([prefix_last[None], tokens[:-1]], 0)
        predictors = torch.where(first[:, None], prefix_last[None], predictors)
        log_probs = self._token_log_probs(predictors, ids)
        return torch.zeros(len(segments), device=device).index_add_(0, segment, log_probs)

    @torch.inference_mode()
    def score_separately(self, history: History, items: Sequence[int]) -> Tensor:
        """Reference for ``score``: each whole prompt alone through the full LM (logits over the vocabulary)."""
        device = self._device()
        scores = []
        prefix = self.builder.prefix_ids(history)
        with _EvalMode(self):
            for item in items:
                segment = self._segment(int(item))
                ids = torch.as_tensor(prefix + segment, dtype=torch.long, device=device)
                logits = self.model(input_ids=ids[None]).logits[0].float()
                if self.score_kind == "answer":
                    scores.append(logits[-1, self.yes_id] - logits[-1, self.no_id])
                else:  # positions len(prefix) - 1 .. -2 predict the segment's tokens
                    log_probs = torch.log_softmax(logits[len(prefix) - 1: -1], -1)
                    scores.append(log_probs.gather(1, ids[len(prefix):, None]).sum())
        return torch.stack(scores).cpu() if scores else torch.zeros(0)

    def fsdp_units(self) -> list[nn.Module]:
        """``train.strategy = "fsdp"``: each decoder layer is a unit; the embeddings, final norm and LM head stay
        in the root (``_answer_logits`` reads the head's weight directly)."""
        return transformer_blocks(self.model)

    def set_activation_checkpointing(self, on: bool) -> None:
        """Recompute each decoder layer's activations in the backward pass (less memory, ~30% more time)."""
        _set_checkpointing(self.model, on)
        self.checkpointing = on


@dataclass
class CandidateRows:
    """K candidate segments packed into R right-padded rows that continue one shared prefix of P tokens."""

    input_ids: Tensor  # [R, T]
    position_ids: Tensor  # [R, T] P + position within the segment
    segment: Tensor  # [R, T] index of the segment within its row, -1 on padding
    last_row: Tensor  # [K] row of each candidate's last token, in candidate order
    last_column: Tensor  # [K] its column

    def attention_mask(self, prefix_length: int, dtype: torch.dtype) -> Tensor | None:
        """``[R, 1, T, P + T]`` additive mask: every token sees the whole prefix and the earlier tokens of its own
        segment. ``None`` when each row holds one segment: right padding plus causality already isolate it."""
        if int(self.segment.max()) < 1:
            return None
        columns = torch.arange(self.segment.shape[1])
        same = self.segment[:, :, None] == self.segment[:, None, :]  # [R, T, T]
        allowed = same & (columns[None, None, :] <= columns[None, :, None])
        allowed = torch.cat([allowed.new_ones(*allowed.shape[:2], prefix_length), allowed], 2)
        mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
        return mask[:, None]


def candidate_rows(segments: Sequence[Sequence[int]], prefix_length: int, pad: int, row_tokens: int) -> CandidateRows:
    """Pack ``segments`` in order into rows of at most ``row_tokens`` tokens (a longer segment gets a row of its
    own; ``row_tokens=0``: one segment per row)."""
    rows: list[list[Sequence[int]]] = []
    for segment in segments:
        if rows and row_tokens and sum(map(len, rows[-1])) + len(segment) <= row_tokens:
            rows[-1].append(segment)
        else:
            rows.append([segment])
    width = max(sum(map(len, row)) for row in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segment_index = torch.full((len(rows), width), -1, dtype=torch.long)
    last_row, last_column = [], []
    for r, row in enumerate(rows):
        start = 0
        for j, segment in enumerate(row):
            end = start + len(segment)
            ids[r, start:end] = torch.as_tensor(segment, dtype=torch.long)
            positions[r, start:end] = prefix_length + torch.arange(len(segment))
            segment_index[r, start:end] = j
            last_row.append(r)
            last_column.append(end - 1)
            start = end
    return CandidateRows(ids, positions, segment_index, torch.tensor(last_row), torch.tensor(last_column))


def _output_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None:
        raise ValueError(f"{type(out).__name__} carries no KV cache: the model does not support use_cache=True")
    return cache


_CACHE_KWARG: dict[type, str] = {}


def _cache_kwarg(backbone: nn.Module) -> str:
    """``cache`` (transformers >= 5.2x) or ``past_key_values``: how this backbone takes a KV cache."""
    kind = type(backbone)
    if kind not in _CACHE_KWARG:
        params = inspect.signature(backbone.forward).parameters
        _CACHE_KWARG[kind] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KWARG[kind]


class _PairTemplate:
    """How a tokenizer joins a text pair (``[CLS] a [SEP] b [SEP]`` for BERT), read once from one pair
    encoding, so pairs can be assembled from cached per-text ids instead of re-tokenising the history for
    every candidate."""

    def __init__(self, tokenizer: Any) -> None:
        encoding = tokenizer("a", "b")
        try:
            sequence = encoding.sequence_ids(0)
        except (ValueError, AttributeError) as exc:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; cross-encoders need one") from exc
        ids = list(encoding["input_ids"])
        types = list(encoding["token_type_ids"]) if "token_type_ids" in encoding else None
        first = [i for i, s in enumerate(sequence) if s == 0]
        second = [i for i, s in enumerate(sequence) if s == 1]
        self.head, self.mid, self.tail = ids[: first[0]], ids[first[-1] + 1: second[0]], ids[second[-1] + 1:]
        self.types = None
        if types is not None:  # segment id of head / a / mid / b / tail
            self.types = (types[: first[0]], types[first[0]], types[first[-1] + 1: second[0]], types[second[0]],
                          types[second[-1] + 1:])
        self.n_special = len(self.head) + len(self.mid) + len(self.tail)

    def join(self, a: list[int], b: list[int]) -> tuple[list[int], list[int] | None]:
        ids = self.head + a + self.mid + b + self.tail
        if self.types is None:
            return ids, None
        head, type_a, mid, type_b, tail = self.types
        return ids, head + [type_a] * len(a) + mid + [type_b] * len(b) + tail


class CrossEncoderRanker(nn.Module):
    """score(history, item) = the one logit of a sequence classifier on (prefix_text, candidate_text).

    The pair is joined as the tokenizer's pair encoding does it; a pair longer than the model's positions
    loses its OLDEST history tokens (PromptBuilder's budget normally keeps it shorter).
    """

    def __init__(self, model: nn.Module, tokenizer: Any, builder: PromptBuilder) -> None:
        super().__init__()
        self.model, self.tokenizer, self.builder = model, tokenizer, builder
        self.pad_id = int(tokenizer.pad_token_id)
        self.template = _PairTemplate(tokenizer)
        config = unwrap_peft(model).config
        self.max_length = int(getattr(config, "max_position_embeddings", None) or tokenizer.model_max_length)
        self._candidate_cache: dict[int, list[int]] = {}
        self.checkpointing = False

    def _candidate(self, item: int) -> list[int]:
        ids = self._candidate_cache.get(item)
        if ids is None:
            ids = self._candidate_cache[item] = self._encode(self.builder.candidate_text(item))
        return ids

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def collate(self, histories: Sequence[History], items: Sequence[int],
                labels: Sequence[float] | np.ndarray | Tensor | None = None, group_size: int = 1) -> PairBatch:
        """Tokenise pairs (``histories``: one per item, or one per group of ``group_size`` items)."""
        items = [int(i) for i in items]
        per_pair = pair_histories(histories, len(items), group_size)
        prefix_cache: dict[int, list[int]] = {}  # one tokenisation per distinct history object
        rows, types = [], []
        for history, item in zip(per_pair, items):
            prefix = prefix_cache.get(id(history))
            if prefix is None:
                prefix = prefix_cache[id(history)] = self._encode(self.builder.prefix_text(history))
            candidate = self._candidate(item)
            room = self.max_length - self.template.n_special - len(candidate)
            ids, type_ids = self.template.join(prefix[max(len(prefix) - room, 0):], candidate)
            rows.append(ids)
            types.append(type_ids)
        input_ids, mask = pad_right(rows, self.pad_id)
        token_types = pad_right(types, 0)[0] if self.template.types is not None else None
        return PairBatch(input_ids, mask, mask.sum(1) - 1, _labels(labels, len(items)), group_size,
                         token_type_ids=token_types)

    def forward(self, batch: PairBatch) -> Tensor:
        """``[B]`` logits, differentiable."""
        inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
        if batch.token_type_ids is not None:
            inputs["token_type_ids"] = batch.token_type_ids
        # a new tensor, not a view of the logits: FSDP hooks its backward onto the output
        return self.model(**inputs).logits[:, 0].float().clone()

    @torch.inference_mode()
    def score(self, history: History, items: Sequence[int]) -> Tensor:
        """``[K]`` scores of ``items`` for one user: the K pairs in one forward (eval mode for the call)."""
        items = [int(i) for i in items]
        if not items:
            return torch.zeros(0)
        with _EvalMode(self):
            batch = self.collate([history], items, group_size=len(items))
            return self.forward(batch.to(next(self.model.parameters()).device)).cpu()

    @torch.inference_mode()
    def score_separately(self, history: History, items: Sequence[int]) -> Tensor:
        """Reference for ``score``: each pair tokenised by the tokenizer itself and scored alone."""
        device = next(self.model.parameters()).device
        prefix, scores = self.builder.prefix_text(history), []
        with _EvalMode(self):
            for item in items:
                enc = self.tokenizer(prefix, self.builder.candidate_text(int(item)), return_tensors="pt",
                                     truncation="only_first", max_length=self.max_length)
                scores.append(self.model(**enc.to(device)).logits[0, 0].float())
        return torch.stack(scores).cpu() if scores else torch.zeros(0)

    def fsdp_units(self) -> list[nn.Module]:
        """``train.strategy = "fsdp"``: each encoder layer is a unit; embeddings and head stay in the root."""
        return transformer_blocks(self.model)

    def set_activation_checkpointing(self, on: bool) -> None:
        _set_checkpointing(self.model, on)
        self.checkpointing = on


Ranker = CausalRanker | CrossEncoderRanker


def build_ranker(model: nn.Module, tokenizer: Any, builder: PromptBuilder, kind: Kind, score: str = "answer") -> Ranker:
    """The ranker for a model of ``kind`` ("causal" or "cross_encoder"); ``score`` of a causal one: "answer" or
    "likelihood"."""
    if kind == "causal":
        return CausalRanker(model, tokenizer, builder, score)
    if kind == "cross_encoder":
        if score != "answer":
            raise ValueError(f"score={score!r}: a cross-encoder has one output logit; use score='answer'")
        return CrossEncoderRanker(model, tokenizer, builder)
    raise ValueError(f"kind={kind!r} is not a ranker kind; use 'causal' or 'cross_encoder'")


def score_latency(score: Callable[[History, Sequence[int]], Tensor], history: History, items: Sequence[int], *,
                  repeats: int = 20, warmup: int = 2) -> dict[str, float]:
    """Wall-clock latency of ``score(history, items)`` (e.g. ``ranker.score`` or ``ranker.score_separately``)
    over ``repeats`` calls after ``warmup``: p50 / p99 / mean in milliseconds, and K."""
    times = []
    for call in range(warmup + repeats):
        start = time.perf_counter()
        score(history, items)
        if call >= warmup:
            times.append((time.perf_counter() - start) * 1000.0)
    values = np.asarray(times)
    return {"k": float(len(items)), "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)), "mean_ms": float(values.mean())}
