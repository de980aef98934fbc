"""Errors of the rag package: ``RagError`` carries a machine ``code`` and an HTTP ``status``.

Model errors (``ModelNotBuiltError``, ``ModelBuildError``) live beside the model code in
``rag.embeddings`` and ``rag.model_build``.
"""

from __future__ import annotations


class RagError(Exception):
    code = "rag_error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
