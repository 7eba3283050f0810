"""What Ollama's /api/ps says is loaded, and how model names compare: no HTTP here, so the pure
policies can import it."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024
_DEFAULT_REGISTRY_PREFIXES = ("registry.ollama.ai/library/", "registry.ollama.ai/")


def model_key(name: str) -> str:
    """Comparable form of a model name, as /api/ps shows it: default host and `library/`
    dropped, `:latest` added when there is no tag; case-folded (Ollama matches names
    case-insensitively)."""
    normalized = name.strip()
    for prefix in _DEFAULT_REGISTRY_PREFIXES:
        if normalized.lower().startswith(prefix):
            normalized = normalized[len(prefix) :]
            break
    if normalized.lower().startswith("library/"):
        normalized = normalized[len("library/") :]
    last_part = normalized.rsplit("/", 1)[-1]
    if ":" not in last_part:
        normalized += ":latest"
    return normalized.lower()


@dataclass(frozen=True, slots=True)
class LoadedModel:
    """One entry of /api/ps."""

    name: str
    size: int
    size_vram: int
    expires_at: str | None = None

    @property
    def size_mib(self) -> int:
        return self.size // MIB

    @property
    def size_vram_mib(self) -> int:
        return self.size_vram // MIB
