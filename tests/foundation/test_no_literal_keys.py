"""No API key is written anywhere in the tree: tests generate theirs at run time."""

from __future__ import annotations

import math
import random
import re
import string
import subprocess
from collections import Counter
from pathlib import Path

from sidecar.config import key_problem

ROOT = Path(__file__).resolve().parents[2]
TOKEN = re.compile(r"[A-Za-z0-9_\-]{32,}")
# secrets.token_urlsafe(32) gives ~4.8 bits of entropy per character (never under 4.1 in 100,000
# draws); long identifiers here are lower case, and hex digests are skipped.
MIN_BITS_PER_CHAR = 4.0


def entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def looks_like_a_key(token: str) -> bool:
    if re.fullmatch(r"[0-9a-f]+", token):  # hex digests (lock files, fixtures) are not keys
        return False
    mixed = any(c.isupper() for c in token) and any(c.islower() for c in token)
    return mixed and key_problem(token) is None and entropy(token) >= MIN_BITS_PER_CHAR


def test_the_detector_finds_generated_keys() -> None:
    alphabet = string.ascii_letters + string.digits + "-_"
    draws = random.Random(20261123)  # deterministic: a test that cannot flake
    for _ in range(1000):
        assert looks_like_a_key("".join(draws.choices(alphabet, k=43)))
    assert not looks_like_a_key("test_rotation_by_rewrite_and_by_rename_without_restart")
    assert not looks_like_a_key("replace-me-with-output-of-secrets-token-urlsafe-32")


def test_no_tracked_file_holds_a_key() -> None:
    files = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    offenders = []
    for name in filter(None, files):
        path = ROOT / name
        if name == "uv.lock" or not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary fixtures
        offenders += [f"{name}: {t[:6]}…" for t in TOKEN.findall(text) if looks_like_a_key(t)]
    assert offenders == []
