"""Retrieval and answers: chunking, embeddings, hybrid retrieval, intents, citation validation."""

from rag.answer import AnswerBody, CitationInfo, Statement
from rag.ask import answer_question
from rag.embeddings import Embedder, ModelNotBuiltError, OnnxEmbedder, load_embedder
from rag.errors import RagError
from rag.index import IndexResult, index_patient
from rag.intents import terms
from rag.repository import get_answer, hybrid_search

__all__ = [
    "AnswerBody",
    "CitationInfo",
    "Embedder",
    "IndexResult",
    "ModelNotBuiltError",
    "OnnxEmbedder",
    "RagError",
    "Statement",
    "answer_question",
    "get_answer",
    "hybrid_search",
    "index_patient",
    "load_embedder",
    "terms",
]
