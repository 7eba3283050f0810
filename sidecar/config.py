"""All sidecar configuration: one pydantic-settings model, parsed and validated once at startup.

Every variable is `OCR_SIDECAR_<FIELD>`. Validation is fail-fast: `load_settings()` raises
`ConfigError` whose message is one line per problem, naming the variable and the fix, and never
containing a key (pydantic's own messages echo the input, so we never print them raw).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from sidecar.durations import InvalidDuration, parse_ollama_duration
from sidecar.units import MIB

ENV_PREFIX = "OCR_SIDECAR_"
MIN_KEY_LENGTH = 32
# The one upload base the sidecar creates itself; any other must exist (a typo must not silently
# become a new, empty directory).
DEFAULT_UPLOAD_BASE = Path("./var/uploads")

# The value `.env.example` ships with: it looks like a key, so it must be refused by name.
ENV_EXAMPLE_PLACEHOLDER = "replace-me-with-output-of-secrets-token-urlsafe-32"
KNOWN_PLACEHOLDERS = frozenset(
    {
        "changeme",
        "change-me",
        "change_me",
        "secret",
        "password",
        "apikey",
        "api-key",
        "your-api-key",
        "your-api-key-here",
        "replace-me",
        "todo",
        "test",
        ENV_EXAMPLE_PLACEHOLDER,
    }
)
# A key made of very few distinct characters ("aaaa…", "abababab…") is a placeholder too.
MIN_DISTINCT_KEY_CHARS = 8

AuthMode = Literal["api_key", "network", "api_key+network"]
IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
KEY_FIX = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


class ConfigError(Exception):
    """Startup configuration is unusable; the message is safe to print (no secrets)."""


def key_problem(key: str) -> str | None:
    """Why `key` is not acceptable as an API key, or None when it is."""
    if not key:
        return "is empty"
    if key.strip().lower() in KNOWN_PLACEHOLDERS:
        return "is a known placeholder"
    if len(key) < MIN_KEY_LENGTH:
        return f"is shorter than {MIN_KEY_LENGTH} characters"
    if len(set(key)) < MIN_DISTINCT_KEY_CHARS:
        return "looks like a placeholder (too few distinct characters)"
    return None


def parse_key_lines(text: str) -> list[str]:
    """Keys from a key file: one per line; blank lines and `#` comments ignored."""
    keys = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keys.append(stripped)
    return keys


def validate_keys(keys: list[str], variable: str) -> None:
    """Raise ValueError (safe to print) when the list is empty or any key is unusable."""
    if not keys:
        raise ValueError(f"{variable} holds no key; {KEY_FIX}")
    for position, key in enumerate(keys, start=1):
        problem = key_problem(key)
        if problem:
            which = f"key #{position}" if len(keys) > 1 else "the key"
            raise ValueError(f"{variable}: {which} {problem}; {KEY_FIX}")


def read_key_file(path: Path) -> list[str]:
    """Read and validate a key file; ValueError with a printable reason on any problem."""
    variable = f"{ENV_PREFIX}API_KEY_FILE"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(
            f"{variable} cannot be read ({exc.strerror or type(exc).__name__}); "
            "point it at a readable file with one key per line"
        ) from None
    except UnicodeDecodeError:
        raise ValueError(f"{variable} is not UTF-8 text; write one key per line") from None
    keys = parse_key_lines(text)
    validate_keys(keys, variable)
    return keys


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """The sidecar's whole configuration (docs/operations.md)."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        frozen=True,
    )

    api_key: SecretStr | None = None
    api_key_file: Path | None = None
    auth_mode: AuthMode = "api_key"
    trusted_networks: Annotated[list[IpNetwork], NoDecode] = Field(default_factory=list)

    upload_base: Path = DEFAULT_UPLOAD_BASE
    max_file_mb: int = Field(50, gt=0)
    max_pages: int = Field(200, gt=0)

    ollama_url: str = "http://127.0.0.1:11434"
    ollama_timeout_s: float = Field(300.0, gt=0)
    ollama_connect_timeout_s: float = Field(5.0, gt=0)

    priority_models: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["typhoon2.5*"])
    llm_reserve_mib: int = Field(9000, ge=0)
    # The keep_alive the LLM's own clients send: every OCR keep_alive stays below it, because
    # Ollama evicts the idle model with the shortest configured keep_alive first.
    priority_keep_alive: str = "5m"
    vram_pressure_pct: float = Field(85.0, gt=0, le=100)
    vram_critical_pct: float = Field(95.0, gt=0, le=100)
    vram_source: str = "nvml"

    embed_model: str = "BAAI/bge-m3"
    rerank_model: str = "BAAI/bge-reranker-v2-m3"
    model_device: Literal["auto", "cpu", "cuda"] = "auto"
    embed_max_batch_tokens: int = Field(16384, gt=0)
    max_inputs: int = Field(256, gt=0)

    max_concurrent_ocr: int = Field(2, gt=0)
    queue_size: int = Field(32, ge=0)
    ocr_job_timeout_s: float = Field(3600.0, gt=0)
    ocr_yield_max_s: float = Field(60.0, ge=0)
    shutdown_grace_s: float = Field(30.0, ge=0)
    docs: bool = True

    host: str = "127.0.0.1"
    port: int = Field(8001, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: Literal["json", "text"] = "json"

    @field_validator("priority_models", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("trusted_networks", mode="before")
    @classmethod
    def _parse_networks(cls, value: object) -> object:
        value = _split_csv(value)
        if not isinstance(value, list):
            return value
        networks = []
        for item in value:
            if isinstance(item, str):
                try:
                    item = ipaddress.ip_network(item, strict=False)
                except ValueError:
                    raise ValueError(
                        f"{item!r} is not a CIDR network; write e.g. 172.28.0.0/16"
                    ) from None
            networks.append(item)
        return networks

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("priority_keep_alive")
    @classmethod
    def _priority_keep_alive(cls, value: str) -> str:
        try:
            parse_ollama_duration(value)
        except InvalidDuration as exc:
            raise ValueError(f"must be an Ollama duration such as 5m ({exc})") from None
        return value

    @property
    def priority_keep_alive_s(self) -> float:
        """PRIORITY_KEEP_ALIVE in seconds (inf for a negative, "forever" value)."""
        return parse_ollama_duration(self.priority_keep_alive)

    @field_validator("vram_source")
    @classmethod
    def _vram_source(cls, value: str) -> str:
        if value in ("nvml", "none") or (value.startswith("file:") and len(value) > len("file:")):
            return value
        raise ValueError("must be 'nvml', 'none' or 'file:PATH'")

    @model_validator(mode="after")
    def _check_consistency(self) -> Settings:
        if self.vram_pressure_pct > self.vram_critical_pct:
            raise ValueError(
                f"{ENV_PREFIX}VRAM_PRESSURE_PCT must not exceed {ENV_PREFIX}VRAM_CRITICAL_PCT"
            )
        self._check_keys()
        self._check_networks()
        self._check_upload_base()
        return self

    def _check_upload_base(self) -> None:
        variable = f"{ENV_PREFIX}UPLOAD_BASE"
        if self.upload_base.exists():
            if not self.upload_base.is_dir():
                raise ValueError(
                    f"{variable} exists but is not a directory; point it at a directory"
                )
        elif self.upload_base != DEFAULT_UPLOAD_BASE:
            raise ValueError(
                f"{variable} does not exist; create it (mkdir -m 700) or fix the path "
                f"(only the default {DEFAULT_UPLOAD_BASE} is created by the sidecar)"
            )

    def _check_keys(self) -> None:
        if self.api_key is not None and self.api_key_file is not None:
            raise ValueError(
                f"set only one of {ENV_PREFIX}API_KEY and {ENV_PREFIX}API_KEY_FILE, not both"
            )
        if self.api_key is not None:
            validate_keys(_split_csv(self.api_key.get_secret_value()), f"{ENV_PREFIX}API_KEY")
        elif self.api_key_file is not None:
            read_key_file(self.api_key_file)
        elif self.requires_key:
            raise ValueError(
                f"{ENV_PREFIX}API_KEY (or {ENV_PREFIX}API_KEY_FILE) is required when "
                f"{ENV_PREFIX}AUTH_MODE={self.auth_mode}; {KEY_FIX}"
            )

    def _check_networks(self) -> None:
        variable = f"{ENV_PREFIX}TRUSTED_NETWORKS"
        if self.requires_network and not self.trusted_networks:
            raise ValueError(
                f"{variable} is required when {ENV_PREFIX}AUTH_MODE={self.auth_mode}; "
                "list the backend's subnet, e.g. 172.28.0.0/16"
            )
        for network in self.trusted_networks:
            if network.prefixlen == 0:
                raise ValueError(
                    f"{variable} must not contain the catch-all {network}; "
                    "list only the backend's subnet"
                )

    @property
    def requires_key(self) -> bool:
        return self.auth_mode in ("api_key", "api_key+network")

    @property
    def requires_network(self) -> bool:
        return self.auth_mode in ("network", "api_key+network")

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mb * MIB

    def configured_keys(self) -> list[str]:
        """Keys from OCR_SIDECAR_API_KEY (the file is read by auth.KeyStore)."""
        if self.api_key is None:
            return []
        return _split_csv(self.api_key.get_secret_value())  # type: ignore[return-value]


def _describe(error: dict) -> str:
    """One printable line for a pydantic error, without its input value."""
    # Only the field name: pydantic's deeper location parts are validator internals.
    location = str(error["loc"][0]) if error.get("loc") else ""
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if not location:
        return message
    return f"{ENV_PREFIX}{location.upper()}: {message}"


def load_settings(**overrides: object) -> Settings:
    """Read the environment into `Settings`, or raise `ConfigError` with printable lines."""
    try:
        settings = Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors(include_input=False)]
        raise ConfigError("\n".join(lines)) from None
    return settings


def ensure_upload_base(settings: Settings) -> Path:
    """Create the upload base (0700) when missing and return its canonical path."""
    base = settings.upload_base
    if not base.exists():
        base.mkdir(parents=True, mode=0o700, exist_ok=True)
        os.chmod(base, 0o700)
    return Path(os.path.realpath(os.path.abspath(base)))
