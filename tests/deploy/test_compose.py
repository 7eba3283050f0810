"""compose.yaml and compose.phase2.yaml: valid Compose, and the properties the deployment rests on.

Validated against the Compose Specification schema (vendored by check-jsonschema) as written,
and again after interpolation from `.env.example` and merging the phase 2 override, which is what
`docker compose -f compose.yaml -f compose.phase2.yaml config` would hand to the engine.
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from sidecar.config import ConfigError, Settings, load_settings
from tests.deploy.compose_files import (
    COMPOSE,
    COMPOSE_PHASE2,
    ENV_EXAMPLE,
    PHASE2_MERGEABLE,
    InterpolationError,
    compose_schema,
    interpolate,
    load_yaml,
    merge,
    parse_env_file,
    service_env,
)

LONG_RUNNING = ("postgres", "ollama", "sidecar")
ONE_SHOT = ("migrate", "fetch-models")
GPU_USERS = ("sidecar", "ollama")


def deploy_env() -> dict[str, str]:
    """What an operator's .env holds after `cp .env.example .env` and setting the password."""
    env = dict(parse_env_file(ENV_EXAMPLE).active)
    env["POSTGRES_PASSWORD"] = secrets.token_hex(16)
    return env


@pytest.fixture(scope="module")
def phase1() -> dict[str, Any]:
    return interpolate(load_yaml(COMPOSE), deploy_env())


@pytest.fixture(scope="module")
def phase2() -> dict[str, Any]:
    merged = merge(load_yaml(COMPOSE), load_yaml(COMPOSE_PHASE2))
    return interpolate(merged, deploy_env())


def validate(document: dict[str, Any]) -> None:
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(document), key=str)
    assert not errors, "\n".join(
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors
    )


# --- schema -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_PHASE2], ids=lambda p: p.name)
def test_file_as_written_matches_the_compose_specification(path: Path) -> None:
    validate(load_yaml(path))


def test_interpolated_phase1_matches_the_compose_specification(phase1: dict[str, Any]) -> None:
    validate(phase1)


def test_merged_phase2_matches_the_compose_specification(phase2: dict[str, Any]) -> None:
    validate(phase2)


def test_check_jsonschema_cli_accepts_both_files() -> None:
    """The same check ops can run: check-jsonschema's builtin Compose schema."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
            str(COMPOSE_PHASE2),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_has_teeth() -> None:
    """A typo'd key must fail validation, or the tests above prove nothing."""
    broken = load_yaml(COMPOSE)
    broken["services"]["sidecar"]["healthcheck"]["intervall"] = "5s"
    with pytest.raises(AssertionError, match="intervall"):
        validate(broken)


def test_compose_refuses_to_start_without_a_database_password() -> None:
    env = dict(parse_env_file(ENV_EXAMPLE).active)
    assert env["POSTGRES_PASSWORD"] == ""
    with pytest.raises(InterpolationError, match="POSTGRES_PASSWORD"):
        interpolate(load_yaml(COMPOSE), env)


# --- network isolation ------------------------------------------------------------------------


def test_sidecar_is_only_on_the_internal_network(phase1: dict[str, Any]) -> None:
    sidecar = phase1["services"]["sidecar"]
    assert sidecar["networks"] == ["internal"]
    assert "network_mode" not in sidecar
    internal = phase1["networks"]["internal"]
    assert internal["internal"] is True
    assert phase1["networks"]["db"]["internal"] is True
    # The backend and Ollama share it; the database network stays out of the sidecar's reach.
    assert "internal" in phase1["services"]["ollama"]["networks"]
    assert set(phase1["services"]["backend"]["networks"]) == {"internal", "db"}
    assert phase1["services"]["postgres"]["networks"] == ["db"]


@pytest.mark.parametrize("document", ["phase1", "phase2"])
def test_no_service_publishes_a_port(document: str, request: pytest.FixtureRequest) -> None:
    services = request.getfixturevalue(document)["services"]
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert published == {}
    assert all(svc.get("network_mode") != "host" for svc in services.values())


def test_internal_network_keeps_the_gateway_outside_the_container_range(
    phase1: dict[str, Any],
) -> None:
    (pool,) = phase1["networks"]["internal"]["ipam"]["config"]
    subnet = ipaddress.ip_network(pool["subnet"])
    container_range = ipaddress.ip_network(pool["ip_range"])
    gateway = ipaddress.ip_address(pool["gateway"])
    assert container_range.subnet_of(subnet)  # type: ignore[arg-type]
    assert gateway in subnet
    assert gateway not in container_range


# --- secret and auth --------------------------------------------------------------------------


def test_api_key_comes_from_a_mounted_secret_directory(phase1: dict[str, Any]) -> None:
    sidecar = phase1["services"]["sidecar"]
    env = service_env(sidecar)
    assert "OCR_SIDECAR_API_KEY" not in env
    (mount,) = [s for s in sidecar["secrets"] if s["source"] == "sidecar_api_keys"]
    key_file = Path(env["OCR_SIDECAR_API_KEY_FILE"])
    # The key file sits *inside* the mounted secret: the mount is the directory, so a file
    # replaced by rename on the host is what the sidecar reads next (see test_key_rotation.py).
    assert key_file.parent == Path(mount["target"])
    assert phase1["secrets"]["sidecar_api_keys"]["file"].endswith("/sidecar_api_keys")
    assert env["OCR_SIDECAR_AUTH_MODE"] == "api_key"


def test_no_key_value_is_written_into_any_service(phase1: dict[str, Any]) -> None:
    for name, service in phase1["services"].items():
        for variable in service_env(service):
            assert variable != "OCR_SIDECAR_API_KEY", f"{name} sets the key in its environment"


def test_phase2_trusts_exactly_the_internal_container_range(phase2: dict[str, Any]) -> None:
    env = service_env(phase2["services"]["sidecar"])
    assert env["OCR_SIDECAR_AUTH_MODE"] == "network"
    (pool,) = phase2["networks"]["internal"]["ipam"]["config"]
    trusted = [ipaddress.ip_network(n) for n in env["OCR_SIDECAR_TRUSTED_NETWORKS"].split(",")]
    assert trusted == [ipaddress.ip_network(pool["ip_range"])]
    assert all(ipaddress.ip_address(pool["gateway"]) not in network for network in trusted)


def test_phase2_backend_stops_reading_the_key(
    phase1: dict[str, Any], phase2: dict[str, Any]
) -> None:
    assert "OCR_SIDECAR_KEY_SOURCE" in " ".join(phase1["services"]["backend"]["entrypoint"])
    assert phase2["services"]["backend"]["entrypoint"] == ["ocr-backend"]


def test_phase2_override_only_uses_keys_the_merge_models() -> None:
    """`merge` is exact for mappings and replaced scalars/lists; guard what the override uses."""
    override = load_yaml(COMPOSE_PHASE2)
    assert set(override) == {"services"}
    for service in override["services"].values():
        assert set(service) <= PHASE2_MERGEABLE


@pytest.mark.parametrize("document", ["phase1", "phase2"])
def test_sidecar_environment_is_accepted_by_settings(
    document: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The interpolated environment starts a sidecar: names are real fields, values parse."""
    env = service_env(request.getfixturevalue(document)["services"]["sidecar"])
    unknown = {
        name.removeprefix("OCR_SIDECAR_").lower() for name in env if name.startswith("OCR_SIDECAR_")
    } - set(Settings.model_fields)
    assert unknown == set(), f"compose sets variables the sidecar does not read: {unknown}"
    key_file = tmp_path / "api_keys"
    key_file.write_text(secrets.token_urlsafe(32) + "\n")
    env["OCR_SIDECAR_API_KEY_FILE"] = str(key_file)
    env["OCR_SIDECAR_UPLOAD_BASE"] = str(tmp_path)
    overrides = {
        name.removeprefix("OCR_SIDECAR_").lower(): value
        for name, value in env.items()
        if name.startswith("OCR_SIDECAR_")
    }
    try:
        settings = load_settings(**overrides)
    except ConfigError as exc:
        pytest.fail(f"the {document} sidecar would refuse to start: {exc}")
    assert settings.host == "0.0.0.0"  # noqa: S104 (the container listens on its own netns)
    assert settings.requires_key is (document == "phase1")


# --- health, ordering, restarts, GPU, volumes -------------------------------------------------


def test_every_long_running_service_has_a_healthcheck_and_restarts(phase1: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        service = phase1["services"][name]
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        assert service.get("restart") in ("unless-stopped", "always"), name


def test_one_shot_services_do_not_restart(phase1: dict[str, Any]) -> None:
    for name in ONE_SHOT:
        assert phase1["services"][name]["restart"] == "no"


def test_sidecar_healthcheck_probes_live(phase1: dict[str, Any]) -> None:
    test = phase1["services"]["sidecar"]["healthcheck"]["test"]
    assert test[0] == "CMD" and "/live" in test[-1]


def test_dependencies_wait_on_health_or_completion(phase1: dict[str, Any]) -> None:
    services = phase1["services"]
    for name, service in services.items():
        for target, spec in (service.get("depends_on") or {}).items():
            condition = spec["condition"]
            if condition == "service_healthy":
                assert services[target].get("healthcheck"), f"{name} waits on unprobed {target}"
            else:
                assert condition == "service_completed_successfully", (name, target)
                assert target in ONE_SHOT, f"{name} waits for {target} to exit"

    def conditions(name: str) -> dict[str, str]:
        return {t: s["condition"] for t, s in services[name]["depends_on"].items()}

    assert conditions("migrate") == {"postgres": "service_healthy"}
    assert conditions("sidecar")["migrate"] == "service_completed_successfully"
    assert conditions("sidecar")["ollama"] == "service_healthy"
    assert conditions("backend") == {
        "migrate": "service_completed_successfully",
        "sidecar": "service_healthy",
    }


def test_migrate_runs_the_backend_migrations_against_postgres(phase1: dict[str, Any]) -> None:
    migrate = phase1["services"]["migrate"]
    assert migrate["entrypoint"] + migrate["command"] == ["ocr-backend", "migrate"]
    url = service_env(migrate)["OCR_BACKEND_DATABASE_URL"]
    assert url.startswith("postgresql+psycopg://ocr:") and url.endswith("@postgres:5432/ocr")


def test_sidecar_and_ollama_reserve_the_same_gpu(phase1: dict[str, Any]) -> None:
    reservations = []
    for name in GPU_USERS:
        (device,) = phase1["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"], name
        reservations.append(device["device_ids"])
    assert reservations[0] == reservations[1]


def test_uploads_are_mounted_read_only_as_the_upload_base(phase1: dict[str, Any]) -> None:
    sidecar = phase1["services"]["sidecar"]
    base = service_env(sidecar)["OCR_SIDECAR_UPLOAD_BASE"]
    mounts = [v for v in sidecar["volumes"] if isinstance(v, dict) and v["target"] == base]
    assert len(mounts) == 1 and mounts[0]["read_only"] is True


def test_sidecar_root_filesystem_is_read_only_with_a_tmpfs(phase1: dict[str, Any]) -> None:
    sidecar = phase1["services"]["sidecar"]
    assert sidecar["read_only"] is True
    assert "/tmp" in sidecar["tmpfs"]
    assert sidecar["cap_drop"] == ["ALL"]
    # The model cache is a volume: HF_HOME in the image lives under /models.
    assert "models:/models" in sidecar["volumes"]


def test_third_party_images_are_pinned(phase1: dict[str, Any]) -> None:
    for name in ("postgres", "ollama"):
        image = phase1["services"][name]["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name} image {image} not pinned"
