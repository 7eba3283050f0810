"""The documented error codes: the one table both halves share (standard library only, so the
backend imports it without FastAPI)."""

from __future__ import annotations

# code -> (status, title). The single list of documented error codes.
CODES: dict[str, tuple[int, str]] = {
    "unauthorized": (401, "Unauthorized"),
    "forbidden_network": (403, "Client network not allowed"),
    "path_forbidden": (403, "Path outside the upload base"),
    "document_not_found": (404, "Document not found"),
    "not_found": (404, "Not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "payload_too_large": (413, "Payload too large"),
    "too_many_pages": (413, "Too many pages"),
    "too_many_inputs": (413, "Too many inputs"),
    "input_too_long": (413, "Input too long"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "validation_error": (422, "Invalid request"),
    "keep_alive_not_allowed": (422, "keep_alive is not allowed here"),
    "invalid_document": (422, "Document cannot be read"),
    "model_not_available": (424, "Model not available in Ollama"),
    "overloaded": (429, "Too many requests in flight"),
    "internal_error": (500, "Internal server error"),
    "ollama_bad_response": (502, "Bad response from Ollama"),
    "ollama_unavailable": (503, "Ollama unavailable"),
    "not_ready": (503, "Not ready"),
    "ollama_timeout": (504, "Ollama timed out"),
    "job_timeout": (504, "OCR job deadline passed"),
}
