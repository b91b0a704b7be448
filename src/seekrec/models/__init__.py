"""Sequence models, their shared layers, losses and the training task.

Import concrete models from their modules (``seekrec.models.sasrec``, ``seekrec.models.deepseek_rec``)
or build them by name through ``seekrec.models.factory``; this package import stays cheap on purpose
(``transformers`` is only imported by the DeepSeek model).
"""
