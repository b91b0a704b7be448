"""Top-K retrieval over item embeddings: a plain PyTorch exact reference and the FAISS index serving uses.

Import from the modules: ``seekrec.retrieval.exact`` needs only torch, ``seekrec.retrieval.index`` needs
``faiss-cpu`` (the ``serve`` extra).
"""
