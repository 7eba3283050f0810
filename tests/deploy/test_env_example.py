""".env.example: documents every variable, matches the real defaults, and holds no usable secret."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from backend_client.settings import BackendSettings
from sidecar.config import (
    ENV_EXAMPLE_PLACEHOLDER,
    ENV_PREFIX,
    ConfigError,
    Settings,
    key_problem,
    load_settings,
)
from tests.conftest import new_api_key
from tests.deploy.compose_files import (
    COMPOSE,
    COMPOSE_PHASE2,
    DOCKERFILE,
    ENV_EXAMPLE,
    REPO,
    EnvFile,
    load_yaml,
    parse_env_file,
    references,
)

# Files of this part of the tree that must never carry a key.
DEPLOY_FILES = [
    DOCKERFILE,
    COMPOSE,
    COMPOSE_PHASE2,
    ENV_EXAMPLE,
    REPO / "README.md",
    REPO / "docs" / "operations.md",  # the deploy and rotation runbooks
]
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD", re.IGNORECASE)


@pytest.fixture(scope="module")
def example() -> EnvFile:
    return parse_env_file(ENV_EXAMPLE)


def sidecar_fields(which: dict[str, str]) -> dict[str, str]:
    return {
        name.removeprefix(ENV_PREFIX).lower(): value
        for name, value in which.items()
        if name.startswith(ENV_PREFIX)
    }


def test_api_key_is_the_placeholder_the_sidecar_refuses(example: EnvFile) -> None:
    value = example.active[f"{ENV_PREFIX}API_KEY"]
    assert value == ENV_EXAMPLE_PLACEHOLDER
    assert key_problem(value) is not None


def test_starting_the_sidecar_from_the_example_fails_fast_without_echoing_it(
    example: EnvFile, tmp_path: Path
) -> None:
    values = sidecar_fields(example.active) | {"upload_base": str(tmp_path)}
    with pytest.raises(ConfigError) as error:
        load_settings(**values)
    message = str(error.value)
    assert f"{ENV_PREFIX}API_KEY" in message and "placeholder" in message
    assert ENV_EXAMPLE_PLACEHOLDER not in message


def test_the_example_is_otherwise_a_valid_configuration(example: EnvFile, tmp_path: Path) -> None:
    """Replace only the key: everything else in the file must be accepted as it stands."""
    values = sidecar_fields(example.active)
    values.update(api_key=new_api_key(), upload_base=str(tmp_path))
    settings = load_settings(**values)
    assert settings.auth_mode == "api_key"


def test_every_settings_field_is_documented(example: EnvFile) -> None:
    missing = [
        f"{ENV_PREFIX}{name.upper()}"
        for name in Settings.model_fields
        if not example.mentions(f"{ENV_PREFIX}{name.upper()}")
    ]
    assert missing == []


def backend_variables() -> set[str]:
    names: set[str] = set()
    for field in BackendSettings.model_fields.values():
        choices = field.validation_alias.choices  # type: ignore[union-attr]
        names.update(str(name) for name in choices if str(name).isupper())
    return names


def test_every_documented_sidecar_variable_is_a_settings_field(example: EnvFile) -> None:
    shown = {k: v for k, v in (example.active | example.commented).items()}
    for name in backend_variables():  # OCR_SIDECAR_URL is the backend's, not the sidecar's
        shown.pop(name, None)
    assert set(sidecar_fields(shown)) - set(Settings.model_fields) == set()


def test_every_backend_variable_is_documented(example: EnvFile) -> None:
    assert [name for name in backend_variables() if not example.mentions(name)] == []


# Shown with a deployment value, not the default: the key, its file, the trusted networks.
DEPLOYMENT_SPECIFIC = frozenset({"api_key", "api_key_file", "trusted_networks"})


@pytest.mark.parametrize("name", sorted(set(Settings.model_fields) - DEPLOYMENT_SPECIFIC))
def test_documented_values_are_the_real_defaults(example: EnvFile, name: str) -> None:
    """A value shown in the file (active or commented) is what the sidecar uses when unset."""
    variable = f"{ENV_PREFIX}{name.upper()}"
    shown = example.active.get(variable, example.commented.get(variable))
    parsed = Settings.model_validate({name: shown, "api_key": new_api_key()}).model_dump()[name]
    default = Settings(api_key=new_api_key()).model_dump()[name]
    assert parsed == default, f"{variable}={shown} in .env.example, default is {default!r}"


def test_every_compose_variable_is_documented_with_the_same_default(example: EnvFile) -> None:
    found = references(load_yaml(COMPOSE))
    references(load_yaml(COMPOSE_PHASE2), found)
    for name, reference in found.items():
        assert example.mentions(name), f"compose uses ${{{name}}}, .env.example does not list it"
        documented = example.active.get(name, example.commented.get(name))
        for default in reference.defaults:
            assert default == documented, (
                f"{name}: compose default {default!r}, .env {documented!r}"
            )


def test_no_secret_like_variable_has_a_usable_value(example: EnvFile) -> None:
    for name, value in (example.active | example.commented).items():
        if SECRET_NAME.search(name) and not name.endswith(("_FILE", "_DIR", "_URL")):
            assert value == "" or key_problem(value) is not None, f"{name} holds a usable value"


KEY_LIKE = re.compile(r"[A-Za-z0-9_\-]{32,}")


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: p.name)
def test_no_usable_key_is_written_in_the_deployment_files(path: Path) -> None:
    """Anything shaped like `secrets.token_urlsafe(32)` output that the sidecar would accept."""
    if not path.exists():
        pytest.skip(f"{path.name} not written yet")
    for token in KEY_LIKE.findall(path.read_text(encoding="utf-8")):
        mixed = (
            re.search(r"[a-z]", token) and re.search(r"[A-Z]", token) and re.search(r"\d", token)
        )
        assert not (mixed and key_problem(token) is None), f"{path.name} contains a usable key"
