"""Every link in README.md and docs/*.md lands inside the repository, on a file (and heading) that
exists; no text points outside it; repository paths quoted as code exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

from tests.docs.markdown import REPO, anchors, documentation_files, inline_code, links, slug

# Built from parts so this file does not match itself.
OUTSIDE_MARKERS = ("../" + "shared", "/work/" + "shared")
# The design notes live outside the repository: the documentation must stand on its own.
OUTSIDE_DOCUMENTS = ("DESIGN" + ".md", "ollama-api" + ".md", "typhoon-ocr" + ".md")
TOP_LEVEL = ("sidecar", "backend_client", "tests", "bench", "docs", "scripts", "migrations")
REPO_PATH = re.compile(rf"^(?:{'|'.join(TOP_LEVEL)})/[\w./*-]*$")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)


def doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


@pytest.mark.parametrize("doc", documentation_files(), ids=doc_id)
def test_relative_links_resolve_inside_the_repository(doc: Path) -> None:
    broken = []
    for line, target in links(doc):
        if EXTERNAL.match(target):
            if not target.startswith("https://"):
                broken.append(f"{line}: {target} (only https links may leave the repository)")
            continue
        path_part, _, anchor = target.partition("#")
        resolved = (doc.parent / unquote(path_part)).resolve() if path_part else doc
        if not resolved.is_relative_to(REPO):
            broken.append(f"{line}: {target} leaves the repository")
        elif not resolved.exists():
            broken.append(f"{line}: {target} does not exist")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{line}: {target} names no heading of {resolved.name}")
    assert not broken, f"{doc_id(doc)}:\n" + "\n".join(broken)


@pytest.mark.parametrize("doc", documentation_files(), ids=doc_id)
def test_repository_paths_quoted_as_code_exist(doc: Path) -> None:
    missing = [
        f"{line}: {span}"
        for line, span in inline_code(doc)
        if REPO_PATH.match(span) and not any(REPO.glob(span.rstrip("/")))
    ]
    assert not missing, f"{doc_id(doc)} names paths that do not exist:\n" + "\n".join(missing)


def test_nothing_tracked_points_outside_the_repository() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    offenders = []
    for name in filter(None, tracked):
        path = REPO / name.decode()
        if not path.is_file():
            continue  # deleted in the working tree
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary
        offenders += [f"{name.decode()}: {m}" for m in OUTSIDE_MARKERS if m in text]
        # Code and comments cite the repository's own docs, not notes a clone does not have.
        offenders += [f"{name.decode()}: {m}" for m in OUTSIDE_DOCUMENTS if m in text]
    assert not offenders, "\n".join(offenders)


@pytest.mark.parametrize("doc", documentation_files(), ids=doc_id)
def test_documentation_names_no_document_outside_the_repository(doc: Path) -> None:
    text = doc.read_text(encoding="utf-8")
    named = [name for name in OUTSIDE_DOCUMENTS if name in text]
    assert not named, f"{doc_id(doc)} names {named}, which readers of the repository do not have"


def test_docs_folder_is_linked_from_the_readme() -> None:
    readme_targets = {target.split("#")[0] for _, target in links(REPO / "README.md")}
    unlinked = [
        doc_id(doc) for doc in documentation_files()[1:] if doc_id(doc) not in readme_targets
    ]
    assert not unlinked, f"README.md links none of: {unlinked}"


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [
        ("Deploy (on-prem GPU host)", "deploy-on-prem-gpu-host"),
        ("5. Phase 1 → phase 2 without downtime", "5-phase-1--phase-2-without-downtime"),
        ("Dynamic batching (`sidecar/retrieval/`)", "dynamic-batching-sidecarretrieval"),
        ("GET /ready, /health, /metrics", "get-ready-health-metrics"),
    ],
)
def test_anchors_follow_githubs_rule(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor
