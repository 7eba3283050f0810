"""The Dockerfile and .dockerignore, read the way Docker reads them, checked against the project.

There is no Docker engine here, so the image is not built; what the build relies on is checked
instead: the stages, the base's CUDA version against the locked torch build, the user, the
commands it runs (they must exist in pyproject.toml), and the HEALTHCHECK, which is executed for
real against a served sidecar.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.app import create_app
from sidecar.config import Settings
from tests.deploy.compose_files import COMPOSE, DOCKERFILE, DOCKERIGNORE, REPO, load_yaml
from tests.deploy.dockerfile import (
    Dockerfile,
    Instruction,
    dockerignore_excludes,
    parse_dockerfile,
)
from tests.server import free_port, serve

BLACKWELL_MIN_CUDA = (12, 8)
SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


@pytest.fixture(scope="module")
def dockerfile() -> Dockerfile:
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def locked_version(package: str) -> str:
    lock = tomllib.loads((REPO / "uv.lock").read_text(encoding="utf-8"))
    (entry,) = [p for p in lock["package"] if p["name"] == package]
    return entry["version"]


def cuda_version(image: str) -> tuple[int, int]:
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)(?:\.\d+)?-[a-z-]+-ubuntu\d+\.\d+", image)
    assert match, f"not an nvidia/cuda image tag: {image}"
    return int(match[1]), int(match[2])


def test_build_is_multi_stage_with_a_separate_builder(dockerfile: Dockerfile) -> None:
    names = [stage.name for stage in dockerfile.stages]
    assert len(dockerfile.stages) >= 3, names  # uv source, builder, runtime
    builder = next(stage for stage in dockerfile.stages if stage.name == "builder")
    runtime = dockerfile.final
    assert any("uv sync" in run.args for run in builder.all("RUN"))
    assert not any("uv" in run.args.split() for run in runtime.all("RUN"))
    copied_from = {c.args.split()[0] for c in runtime.all("COPY") if c.args.startswith("--from")}
    assert copied_from == {"--from=builder"}


def test_base_is_cuda_for_blackwell_and_matches_the_locked_torch_build(
    dockerfile: Dockerfile,
) -> None:
    builder, runtime = dockerfile.stages[1], dockerfile.final
    base = dockerfile.resolve(runtime.base)
    assert dockerfile.resolve(builder.base) == base  # same glibc for the venv and its runtime
    major, minor = cuda_version(base)
    assert (major, minor) >= BLACKWELL_MIN_CUDA
    # torch's CUDA libraries come from the lock; the base image's NVIDIA_REQUIRE_CUDA must demand
    # a driver that can run them, so the CUDA majors have to agree.
    locked_major = int(locked_version("nvidia-cuda-runtime").split(".")[0])
    assert major == locked_major, f"base CUDA {major}.x, locked torch runtime CUDA {locked_major}.x"


def test_dependencies_install_from_the_lock_without_dev_in_two_layers(
    dockerfile: Dockerfile,
) -> None:
    builder = next(stage for stage in dockerfile.stages if stage.name == "builder")
    syncs = [run.args for run in builder.all("RUN") if "uv sync" in run.args]
    assert len(syncs) == 2
    assert all("--frozen" in sync and "--no-dev" in sync for sync in syncs)
    assert "--no-install-project" in syncs[0]  # dependency layer survives source edits
    sources_copied_at = [
        i
        for i, ins in enumerate(builder.instructions)
        if ins.keyword == "COPY" and "sidecar" in ins.args
    ]
    deps_sync_at = next(
        i for i, ins in enumerate(builder.instructions) if "--no-install-project" in ins.args
    )
    assert sources_copied_at and deps_sync_at < sources_copied_at[0]


def test_runs_as_uid_1000_not_root(dockerfile: Dockerfile) -> None:
    (user,) = dockerfile.final.all("USER")
    uid = user.args.split(":")[0]
    assert uid == "1000"
    assert any("useradd --uid 1000" in run.args for run in dockerfile.final.all("RUN"))


def test_no_secret_is_baked_into_the_image(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for instruction in stage.all("ENV") + stage.all("ARG"):
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", instruction.args) or [
                instruction.args.split("=")[0]
            ]
            secret_like = [n for n in names if SECRET_NAME.search(n)]
            assert not secret_like, f"{instruction.keyword} {secret_like} in stage {stage.name}"
    for name, _ in dockerfile.global_args.items():
        assert not SECRET_NAME.search(name)


def test_model_cache_is_a_volume_and_the_service_port_is_the_default(
    dockerfile: Dockerfile,
) -> None:
    runtime = dockerfile.final
    (volume,) = runtime.all("VOLUME")
    volumes = volume.exec_form()
    assert volumes is not None and "/models" in volumes
    env = " ".join(ins.args for ins in runtime.all("ENV"))
    assert "HF_HOME=/models/" in env
    assert "OCR_SIDECAR_HOST=0.0.0.0" in env
    (expose,) = runtime.all("EXPOSE")
    assert int(expose.args) == Settings.model_fields["port"].default


def test_entrypoint_and_compose_commands_are_declared_console_scripts(
    dockerfile: Dockerfile, pyproject: dict
) -> None:
    scripts = pyproject["project"]["scripts"]
    (entrypoint,) = dockerfile.final.all("ENTRYPOINT")
    assert entrypoint.exec_form() == ["sidecar"]
    assert scripts["sidecar"] == "sidecar.__main__:main"
    compose = load_yaml(COMPOSE)
    assert compose["services"]["migrate"]["entrypoint"] == ["ocr-backend"]
    assert "ocr-backend" in scripts


def test_copied_paths_exist_and_are_in_the_build_context(dockerfile: Dockerfile) -> None:
    builder = next(stage for stage in dockerfile.stages if stage.name == "builder")
    sources: list[str] = []
    for copy in builder.all("COPY"):
        if copy.args.startswith("--from"):
            continue
        *paths, _destination = shlex.split(copy.args)
        sources.extend(paths)
    for run in builder.all("RUN"):
        sources.extend(re.findall(r"type=bind,source=([^,\s]+)", run.args))
    assert {"pyproject.toml", "uv.lock", "sidecar", "backend_client", "migrations"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), source
        assert not dockerignore_excludes(DOCKERIGNORE, source), f"{source} is .dockerignored"


@pytest.mark.parametrize(
    "path",
    [
        ".env",
        "secrets/sidecar_api_keys/api_keys",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "var/uploads/a.pdf",
        "bench/results/x.json",
        "sidecar/__pycache__/app.cpython-311.pyc",
        "sidecar/.env",
        "deploy.key",
    ],
)
def test_dockerignore_keeps_secrets_and_local_state_out(path: str) -> None:
    assert dockerignore_excludes(DOCKERIGNORE, path)


@pytest.mark.parametrize("path", ["README.md", "sidecar/app.py", "migrations/env.py"])
def test_dockerignore_keeps_what_the_build_needs(path: str) -> None:
    assert not dockerignore_excludes(DOCKERIGNORE, path)


# --- the healthchecks, executed -----------------------------------------------------------------


def image_healthcheck(dockerfile: Dockerfile) -> list[str]:
    (healthcheck,) = dockerfile.final.all("HEALTHCHECK")
    command = healthcheck.args.split(" CMD ", 1)[1]
    argv = Instruction("CMD", command).exec_form()
    assert argv is not None, "HEALTHCHECK must use the exec form"
    assert argv[0] == "python", "the CUDA base has no curl: the probe must use the venv's python"
    return argv


def compose_healthcheck() -> list[str]:
    test = load_yaml(COMPOSE)["services"]["sidecar"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    return test[1:]


def run_probe(argv: list[str], port: int) -> int:
    command = [sys.executable, *argv[1:]]  # `python` in the image is the venv's interpreter
    env = {"OCR_SIDECAR_PORT": str(port), "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, env=env, capture_output=True, timeout=30, check=False).returncode


@pytest.mark.parametrize("source", ["image", "compose"])
def test_healthcheck_passes_on_a_live_sidecar_and_fails_without_one(
    source: str,
    dockerfile: Dockerfile,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> None:
    argv = image_healthcheck(dockerfile) if source == "image" else compose_healthcheck()
    assert any("/live" in part for part in argv)
    missing = str(tmp_path / "no-model")
    settings = make_settings(embed_model=missing, rerank_model=missing, model_device="cpu")
    with serve(create_app(settings)) as server:
        assert run_probe(argv, server.port) == 0
    assert run_probe(argv, free_port()) != 0


def test_the_sidecar_image_installs_the_server_extra_and_the_backend_image_the_backend_extra(
    dockerfile: Dockerfile,
) -> None:
    def syncs(name: str) -> list[str]:
        stage = next(stage for stage in dockerfile.stages if stage.name == name)
        return [run.args for run in stage.all("RUN") if "uv sync" in run.args]

    for sync in syncs("builder"):
        assert "--extra server" in sync and "--extra backend" not in sync
    (backend_sync,) = syncs("backend-builder")
    assert "--extra backend" in backend_sync and "--extra server" not in backend_sync
    assert all("--all-extras" not in sync for sync in [*syncs("builder"), backend_sync])
    backend = next(stage for stage in dockerfile.stages if stage.name == "backend")
    (entrypoint,) = backend.all("ENTRYPOINT")
    assert entrypoint.exec_form() == ["ocr-backend"]
    compose = load_yaml(COMPOSE)
    for service in ("migrate", "backend"):
        assert compose["services"][service]["build"]["target"] == "backend", service
    assert "target" not in compose["services"]["sidecar"]["build"]  # the default: runtime
