"""Errors of the rag package.

RagError (code, status)
├── AnswerNotFound     unknown answer id for this patient (404)
└── QuestionRejected   a question the pipeline cannot take (422)
"""

from __future__ import annotations


class RagError(Exception):
    code = "rag_error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AnswerNotFound(RagError):
    code = "answer_not_found"
    status = 404


class QuestionRejected(RagError):
    code = "invalid_question"
    status = 422
