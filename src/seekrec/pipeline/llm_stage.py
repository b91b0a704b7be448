"""The LLM re-ranking stage: a fine-tuned language model scores each user's R retrieved candidates.

``stages.reranker = "llm"`` puts it where the DIN ranker stands: retrieval (two-tower or SASRec) finds
R candidates, ``LLMStage.logits`` scores them from the user's history rendered as text
(``seekrec.llm.rerank.LLMReranker``: one prompt prefix per user, shared by its R candidate segments),
and the pipeline's re-ranking orders them by ``llm score + w * retrieval logit`` as it does DIN's
log-odds. The stage reads histories (``History``: items oldest first, optionally ratings and times),
not feature rows, so callers pass them beside the user rows.

``seekrec.llm`` (transformers, peft) is imported only when a stage is loaded or a history built:
loading a pipeline bundle without the stage, as a server does, must not pay for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch
from torch import Tensor

from seekrec.data.schema import InteractionData

if TYPE_CHECKING:
    from seekrec.llm.prompts import History
    from seekrec.pipeline.features import HeldOut


class TextReranker(Protocol):
    """What the stage needs of a re-ranker (``LLMReranker`` or a stand-in): which items it has a text
    for (ids ``1..n_items``) and its scores of candidates for one history."""

    n_items: int

    def scores(self, history: History, items: np.ndarray) -> np.ndarray: ...


class LLMStage:
    """A loaded re-ranker and the run it came from (``run``: how the stage config names it)."""

    def __init__(self, reranker: TextReranker, run: str | Path) -> None:
        self.reranker, self.run = reranker, str(run)

    @classmethod
    def load(cls, run: str | Path, *, device: str = "cpu") -> LLMStage:
        """The fine-tuned LLM run at ``run`` (a ``seekrec llm finetune`` output directory) as a stage."""
        from seekrec.llm.rerank import LLMReranker  # heavy: transformers, peft

        path = Path(run)
        if not path.is_dir():
            raise FileNotFoundError(f"stages.llm_run={str(run)!r} is not a directory; point it at a fine-tuned LLM "
                                    "run (`seekrec llm finetune --out DIR`)")
        return cls(LLMReranker.load(path, device=device), run)

    @property
    def n_items(self) -> int:
        return int(self.reranker.n_items)

    def logits(self, histories: Sequence[History], candidates: Tensor) -> Tensor:
        """``candidates [B, R]`` ids (0 = empty slot) -> ``[B, R]`` float32 LLM scores, one user at a time.

        Empty slots and items the LLM has no text for (ids past ``n_items``: added after its training)
        score -inf, so the re-ranking keeps them last, in retrieval order among themselves."""
        if len(histories) != len(candidates):
            raise ValueError(f"{len(histories)} histories for {len(candidates)} candidate rows; pass one per user")
        ids = candidates.cpu().numpy()
        out = np.full(ids.shape, -np.inf, dtype=np.float32)
        for row, history in enumerate(histories):
            known = (ids[row] > 0) & (ids[row] <= self.n_items)
            if known.any():
                out[row, known] = np.asarray(self.reranker.scores(history, ids[row, known]), dtype=np.float32)
        return torch.from_numpy(out)


def item_histories(items: Sequence[Sequence[int] | np.ndarray]) -> list[History]:
    """Histories of item ids alone (oldest first): what a server knows of a user."""
    from seekrec.llm.prompts import History

    return [History(np.asarray(row, dtype=np.int64)) for row in items]


def eval_histories(data: InteractionData, held: HeldOut) -> list[History]:
    """Each held-out user's visible history with its ratings and times (``now``: the target's time), read
    as the LLM's own fine-tuning and evaluation read it (``llm.examples.UserEvents``), in ``held`` order."""
    from seekrec.llm.examples import UserEvents

    events = UserEvents.from_data(data)
    lengths = held.history.lengths()
    return [events.history(int(user), int(lengths[user])) for user in held.users]
