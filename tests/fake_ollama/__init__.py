"""A fake Ollama server for tests, benchmarks and trying `/ocr` without a GPU.

    with FakeOllama([FakeModel("scb10x/typhoon-ocr1.5-3b")]) as fake:
        ... settings.ollama_url = fake.url ...

or standalone: `python -m tests.fake_ollama --port 11434`.
"""

from tests.fake_ollama.server import FakeOllama, Fault, RecordedRequest
from tests.fake_ollama.state import FakeModel, normalize_name

DEFAULT_OCR_MODEL = "scb10x/typhoon-ocr1.5-3b"
DEFAULT_LLM_MODEL = "typhoon2.5-qwen3-4b"

__all__ = [
    "DEFAULT_LLM_MODEL",
    "DEFAULT_OCR_MODEL",
    "FakeModel",
    "FakeOllama",
    "Fault",
    "RecordedRequest",
    "normalize_name",
]
