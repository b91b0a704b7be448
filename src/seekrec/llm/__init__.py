"""Language models as text-aware rankers (issue 11).

A user's recent history and a candidate item are rendered as text by one ``PromptBuilder``
(``llm.prompts``), shared by pretraining, fine-tuning, evaluation and serving so the model always
sees prompts built the same way. ``llm.tokenizer`` trains a byte-level BPE tokenizer on the training
split; ``llm.pretrain`` pretrains a small DeepSeek-V3-architecture causal LM (MLA + MoE) on the
domain's text; ``llm.models`` loads models and applies LoRA; ``llm.scoring`` turns an LM into a
ranker; ``llm.finetune`` / ``llm.rerank`` train and apply it; ``llm.distill`` distils it into a
sequence model.

Heavy dependencies (transformers, peft, tokenizers) are imported inside these modules only, so
``import seekrec`` stays light; install them with the ``[llm]`` extra.
"""
