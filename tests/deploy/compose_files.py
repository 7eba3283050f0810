"""Read the deployment files the way Docker Compose does, without Docker.

- `interpolate`: the Compose Specification's `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
  `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `$VAR` and `$$` rules.
- `merge`: the override-file merge for what the phase 2 file uses (mappings merge key by key,
  anything else is replaced); `PHASE2_MERGEABLE` lists the keys it is exact for.
- `parse_env_file`: `.env` lines, separating active assignments from commented-out ones.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose.yaml"
COMPOSE_PHASE2 = REPO / "compose.phase2.yaml"
ENV_EXAMPLE = REPO / ".env.example"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

# Service keys whose override semantics `merge` reproduces exactly.
PHASE2_MERGEABLE = frozenset({"environment", "entrypoint", "command"})

_REFERENCE = re.compile(
    r"\$(?:(?P<escaped>\$)"
    r"|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<named>[A-Za-z_][A-Za-z0-9_]*))"
)


class InterpolationError(ValueError):
    """A `${VAR:?message}` whose variable is unset (Compose refuses to start)."""


def load_yaml(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(document, dict), f"{path.name} is not a YAML mapping"
    return document


def compose_schema() -> dict[str, Any]:
    """The Compose Specification JSON schema vendored by check-jsonschema."""
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    return json.loads(schema_file.read_text(encoding="utf-8"))


def _substitute(text: str, env: dict[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["named"]
        op, arg = match["op"], match["arg"] or ""
        value = env.get(name)
        empty = value is None or (value == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if (value is None if op == "-" else empty) else value  # type: ignore[return-value]
        if op in (":?", "?"):
            if value is None if op == "?" else empty:
                raise InterpolationError(f"{name}: {arg}")
            return value  # type: ignore[return-value]
        if op in (":+", "+"):
            return arg if not (value is None if op == "+" else empty) else ""
        return value or ""

    return _REFERENCE.sub(replace, text)


def interpolate(node: Any, env: dict[str, str]) -> Any:
    """The document with every string interpolated from `env`, as `docker compose config` does."""
    if isinstance(node, dict):
        return {key: interpolate(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(item, env) for item in node]
    if isinstance(node, str):
        return _substitute(node, env)
    return node


@dataclass
class Reference:
    name: str
    defaults: list[str] = field(default_factory=list)


def references(node: Any, found: dict[str, Reference] | None = None) -> dict[str, Reference]:
    """Every variable the document interpolates, with the `:-`/`-` defaults it gives them."""
    found = {} if found is None else found
    if isinstance(node, dict):
        for value in node.values():
            references(value, found)
    elif isinstance(node, list):
        for item in node:
            references(item, found)
    elif isinstance(node, str):
        for match in _REFERENCE.finditer(node):
            name = match["braced"] or match["named"]
            if not name:
                continue
            reference = found.setdefault(name, Reference(name))
            if match["op"] in (":-", "-"):
                reference.defaults.append(match["arg"] or "")
    return found


def merge(base: Any, override: Any) -> Any:
    """Override-file merge: mappings key by key, everything else replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


@dataclass
class EnvFile:
    active: dict[str, str]
    commented: dict[str, str]

    def mentions(self, name: str) -> bool:
        return name in self.active or name in self.commented


_ASSIGNMENT = re.compile(r"^(?P<comment>#\s*)?(?P<name>[A-Z][A-Z0-9_]*)=(?P<value>.*)$")


def parse_env_file(path: Path) -> EnvFile:
    active: dict[str, str] = {}
    commented: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = _ASSIGNMENT.match(line.strip())
        if not match:
            continue
        target = commented if match["comment"] else active
        assert match["name"] not in target, f"{match['name']} is assigned twice in {path.name}"
        target[match["name"]] = match["value"]
    return EnvFile(active, commented)


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's `environment`, list or mapping form, as strings."""
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        pairs = (item.split("=", 1) for item in environment)
        return {name: value for name, value in pairs}
    return {name: "" if value is None else str(value) for name, value in environment.items()}
