"""Just enough Markdown reading for the documentation tests: fenced blocks with their section,
links outside code, and GitHub's heading anchors."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(```+|~~~+)\s*([\w+-]*)\s*$")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"`[^`]*`")
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "console"})


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    section: str  # the nearest heading above it
    text: str

    @property
    def is_shell(self) -> bool:
        return self.language in SHELL_LANGUAGES

    def where(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"


def documentation_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    section = ""
    fence: str | None = None
    language, start, body = "", 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        opening = FENCE.match(line)
        if fence is None:
            if opening:
                fence, language, start, body = opening.group(1), opening.group(2), number, []
            elif heading := HEADING.match(line):
                section = heading.group(2)
        elif line.strip() == fence:
            found.append(Block(path, start, language, section, "\n".join(body) + "\n"))
            fence = None
        else:
            body.append(line)
    return found


def outside_fences(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line that is not part of a fenced block."""
    inside = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if FENCE.match(line):
            inside = not inside
        elif not inside:
            yield number, line


def links(path: Path) -> list[tuple[int, str]]:
    """Link targets in the prose (not in code)."""
    return [
        (number, target)
        for number, line in outside_fences(path)
        for target in LINK.findall(INLINE_CODE.sub("", line))
    ]


def inline_code(path: Path) -> list[tuple[int, str]]:
    return [
        (number, span.strip("`"))
        for number, line in outside_fences(path)
        for span in INLINE_CODE.findall(line)
    ]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for _, line in outside_fences(path):
        if heading := HEADING.match(line):
            base = slug(heading.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            result.add(base if count == 0 else f"{base}-{count}")
    return result
