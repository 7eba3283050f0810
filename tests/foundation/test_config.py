"""Settings parsing and the fail-fast rules, without starting a process."""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.config import (
    ENV_EXAMPLE_PLACEHOLDER,
    MIN_KEY_LENGTH,
    ConfigError,
    Settings,
    ensure_upload_base,
    key_problem,
    load_settings,
    parse_key_lines,
)
from tests.conftest import new_api_key


def test_defaults_match_the_design(tmp_path: Path) -> None:
    settings = load_settings(api_key=new_api_key(), upload_base=tmp_path)
    assert settings.auth_mode == "api_key"
    assert settings.max_file_mb == 50 and settings.max_pages == 200
    assert settings.ollama_url == "http://127.0.0.1:11434"
    assert settings.ollama_timeout_s == 300 and settings.ollama_connect_timeout_s == 5
    assert settings.priority_models == ["typhoon2.5*"]
    assert settings.llm_reserve_mib == 9000
    assert (settings.vram_pressure_pct, settings.vram_critical_pct) == (85, 95)
    assert settings.embed_model == "BAAI/bge-m3"
    assert settings.rerank_model == "BAAI/bge-reranker-v2-m3"
    assert settings.embed_max_batch_tokens == 16384 and settings.max_inputs == 256
    assert (settings.max_concurrent_ocr, settings.queue_size) == (2, 32)
    assert (settings.host, settings.port) == ("127.0.0.1", 8001)


def test_comma_lists_are_split(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    first, second = new_api_key(), new_api_key()
    monkeypatch.setenv("OCR_SIDECAR_API_KEY", f"{first}, {second}")
    monkeypatch.setenv("OCR_SIDECAR_AUTH_MODE", "api_key+network")
    monkeypatch.setenv("OCR_SIDECAR_TRUSTED_NETWORKS", "198.18.0.0/24, 2001:db8::/32")
    monkeypatch.setenv("OCR_SIDECAR_PRIORITY_MODELS", "typhoon2.5*,llama3*")
    monkeypatch.setenv("OCR_SIDECAR_UPLOAD_BASE", str(tmp_path))
    settings = load_settings()
    assert settings.configured_keys() == [first, second]
    assert [str(n) for n in settings.trusted_networks] == ["198.18.0.0/24", "2001:db8::/32"]
    assert settings.priority_models == ["typhoon2.5*", "llama3*"]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, "OCR_SIDECAR_API_KEY (or OCR_SIDECAR_API_KEY_FILE) is required"),
        ({"api_key": ""}, "OCR_SIDECAR_API_KEY holds no key"),
        ({"api_key": "short-key"}, "shorter than 32 characters"),
        ({"api_key": "changeme"}, "known placeholder"),
        ({"api_key": ENV_EXAMPLE_PLACEHOLDER}, "known placeholder"),
        ({"api_key": "a" * 40}, "too few distinct characters"),
        ({"auth_mode": "network"}, "OCR_SIDECAR_TRUSTED_NETWORKS is required"),
        ({"auth_mode": "network", "trusted_networks": "0.0.0.0/0"}, "catch-all"),
        ({"auth_mode": "network", "trusted_networks": "::/0"}, "catch-all"),
        ({"auth_mode": "network", "trusted_networks": "not-a-net"}, "not a CIDR network"),
        ({"auth_mode": "sometimes"}, "OCR_SIDECAR_AUTH_MODE"),
        ({"vram_source": "gpu"}, "OCR_SIDECAR_VRAM_SOURCE"),
        ({"vram_pressure_pct": 96}, "must not exceed"),
    ],
)
def test_refused_configurations_name_the_variable(
    overrides: dict[str, object], expected: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(upload_base=tmp_path, **overrides)
    assert expected in str(caught.value)


def test_key_and_key_file_together_are_refused(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text(new_api_key())
    with pytest.raises(ConfigError, match="only one of"):
        load_settings(api_key=new_api_key(), api_key_file=key_file, upload_base=tmp_path)


def test_unreadable_key_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OCR_SIDECAR_API_KEY_FILE cannot be read"):
        load_settings(api_key_file=tmp_path / "missing", upload_base=tmp_path)


def test_upload_base_that_is_a_file_is_refused(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(ConfigError, match="UPLOAD_BASE exists but is not a directory"):
        load_settings(api_key=new_api_key(), upload_base=not_a_dir)


def test_missing_upload_base_is_refused_unless_it_is_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigError, match="OCR_SIDECAR_UPLOAD_BASE does not exist"):
        load_settings(api_key=new_api_key(), upload_base=tmp_path / "typo")
    assert not (tmp_path / "typo").exists()
    monkeypatch.chdir(tmp_path)
    settings = load_settings(api_key=new_api_key())  # the default ./var/uploads, not there yet
    created = ensure_upload_base(settings)
    assert created == (tmp_path / "var" / "uploads").resolve()
    assert stat.S_IMODE(created.stat().st_mode) == 0o700


def test_network_mode_needs_no_key(tmp_path: Path) -> None:
    settings = load_settings(
        auth_mode="network", trusted_networks="198.18.0.0/15", upload_base=tmp_path
    )
    assert settings.requires_network and not settings.requires_key


def test_error_never_echoes_the_key(tmp_path: Path) -> None:
    secret = "Zq8-" + "x1y2z3" * 3  # 22 chars: too short, but unique enough to grep for
    with pytest.raises(ConfigError) as caught:
        load_settings(api_key=f"{new_api_key()},{secret}", upload_base=tmp_path)
    assert "key #2" in str(caught.value)
    assert secret not in str(caught.value)


def test_key_file_lines_skip_blanks_and_comments() -> None:
    assert parse_key_lines("# rotated 2026-11\n\n  abc  \r\ndef\n") == ["abc", "def"]


@given(
    st.text(min_size=MIN_KEY_LENGTH, alphabet=st.characters(min_codepoint=33, max_codepoint=126))
)
def test_strong_keys_are_accepted_iff_varied(key: str) -> None:
    problem = key_problem(key)
    if len(set(key)) >= 8 and key.lower() not in {"changeme"}:
        assert problem is None
    else:
        assert problem is not None


def test_operations_configuration_table_lists_every_setting() -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    operations = (docs / "operations.md").read_text(encoding="utf-8")
    table = operations.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    names = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    assert {field.upper() for field in Settings.model_fields} <= names
