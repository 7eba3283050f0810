"""The OCR tests' fixtures (a real sidecar on loopback, the VRAM file it reads, the fake Ollama)
for the stewardship tests over HTTP."""

from tests.ocr.conftest import fake_ollama, start_sidecar, vram

__all__ = ["fake_ollama", "start_sidecar", "vram"]
