"""Backend-side configuration: where the database and the sidecar are, read from the environment.

The variable names are part of the contract (docs/backend.md): `OCR_BACKEND_DATABASE_URL`,
`OCR_SIDECAR_URL` and the optional `OCR_SIDECAR_API_KEY` (phase 2 runs without a key).
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from backend_client.errors import ConfigurationError

DEFAULT_SIDECAR_URL = "http://127.0.0.1:8001"


class BackendSettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", populate_by_name=True)

    database_url: str | None = Field(
        None, validation_alias=AliasChoices("OCR_BACKEND_DATABASE_URL", "database_url")
    )
    sidecar_url: str = Field(
        DEFAULT_SIDECAR_URL, validation_alias=AliasChoices("OCR_SIDECAR_URL", "sidecar_url")
    )
    sidecar_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("OCR_SIDECAR_API_KEY", "sidecar_api_key")
    )
    # The longest wait for the sidecar's next bytes: a whole non-streamed document (minutes, one
    # Ollama call per page), or the next page of a streamed one.
    sidecar_timeout_s: float = Field(
        900.0,
        gt=0,
        validation_alias=AliasChoices("OCR_BACKEND_SIDECAR_TIMEOUT_S", "sidecar_timeout_s"),
    )
    sidecar_connect_timeout_s: float = Field(
        5.0,
        gt=0,
        validation_alias=AliasChoices(
            "OCR_BACKEND_SIDECAR_CONNECT_TIMEOUT_S", "sidecar_connect_timeout_s"
        ),
    )

    @field_validator("sidecar_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @field_validator("sidecar_api_key")
    @classmethod
    def _blank_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # An empty variable (common in compose files) means "no key": phase 2.
        if value is not None and not value.get_secret_value().strip():
            return None
        return value


_ENV_NAMES = {
    "database_url": "OCR_BACKEND_DATABASE_URL",
    "sidecar_url": "OCR_SIDECAR_URL",
    "sidecar_api_key": "OCR_SIDECAR_API_KEY",
    "sidecar_timeout_s": "OCR_BACKEND_SIDECAR_TIMEOUT_S",
    "sidecar_connect_timeout_s": "OCR_BACKEND_SIDECAR_CONNECT_TIMEOUT_S",
}


def load_backend_settings(**overrides: object) -> BackendSettings:
    """Read the environment; raise `ConfigurationError` naming the variable (never its value)."""
    try:
        return BackendSettings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            message = str(error["msg"]).removeprefix("Value error, ")
            problems.append(f"{_ENV_NAMES.get(field, field)} {message}")
        raise ConfigurationError("; ".join(problems)) from None
