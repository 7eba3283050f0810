"""What the sidecar sends Ollama for a job: the system message, each page's user message and the
options, built exactly as docs/api.md says and nothing more (the sidecar has no defaults).
"""

from __future__ import annotations

from typing import Any

from sidecar import option_rules
from sidecar.errors import ApiError
from sidecar.schemas import OcrJob, OcrPrompt

DMS_TAGS_PLACEHOLDER = "{{dms_tags}}"
ANCHOR_PLACEHOLDER = "{{anchor_text}}"


def build_system_prompt(prompt: OcrPrompt) -> str:
    """`system_prompt` with `{{dms_tags}}` filled in, or the tags on a final `DMS tags:` line."""
    tags = ", ".join(prompt.dms_tags)
    if DMS_TAGS_PLACEHOLDER in prompt.system_prompt:
        return prompt.system_prompt.replace(DMS_TAGS_PLACEHOLDER, tags)
    if not tags:
        return prompt.system_prompt
    tag_line = f"DMS tags: {tags}"
    if not prompt.system_prompt:
        return tag_line
    return prompt.system_prompt.rstrip("\n") + "\n" + tag_line


def system_messages(system_prompt: str) -> list[dict[str, Any]]:
    """The leading system message; none when empty (Ollama then applies the Modelfile SYSTEM)."""
    return [{"role": "system", "content": system_prompt}] if system_prompt else []


def needs_anchor(prompt: OcrPrompt) -> bool:
    return prompt.user_template is not None and ANCHOR_PLACEHOLDER in prompt.user_template


def user_message(prompt: OcrPrompt, image_b64: str, anchor_text: str | None) -> dict[str, Any]:
    """One page: the template (anchor filled in) with the image; no template → the image alone."""
    content = prompt.user_template or ""
    if ANCHOR_PLACEHOLDER in content:
        content = content.replace(ANCHOR_PLACEHOLDER, anchor_text or "")
    return {"role": "user", "content": content, "images": [image_b64]}


class InvalidOption(ApiError):
    """An Ollama option the sidecar refuses (422); `field` names it, e.g. profile.options.num_ctx.

    The rules live in `sidecar.option_rules`, which the backend applies to a stored profile too."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__("validation_error", f"{field}: {reason}")
        self.field = field
        self.reason = reason


def build_options(job: OcrJob) -> dict[str, Any]:
    """Ollama options by `sidecar.option_rules`; a refused option is a 422 naming its field."""
    try:
        return option_rules.build_options(job)
    except option_rules.OptionError as exc:
        raise InvalidOption(exc.field, exc.reason) from None
