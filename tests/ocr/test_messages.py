"""System message, user message and options: docs/api.md, with no sidecar defaults."""

from __future__ import annotations

import pytest

from sidecar.errors import ApiError
from sidecar.ocr.messages import (
    build_options,
    build_system_prompt,
    needs_anchor,
    system_messages,
    user_message,
)
from sidecar.schemas import OcrJob, OcrPrompt


def prompt(system: str, tags: list[str], template: str | None = None) -> OcrPrompt:
    return OcrPrompt(system_prompt=system, dms_tags=tags, user_template=template)


@pytest.mark.parametrize(
    ("system", "tags", "expected"),
    [
        ("Fields: {{dms_tags}}.", ["a", "b", "c"], "Fields: a, b, c."),
        ("Fields: {{dms_tags}}. Again: {{dms_tags}}", ["x"], "Fields: x. Again: x"),
        ("Fields: {{dms_tags}}.", [], "Fields: ."),
        ("Transcribe.", ["a", "b"], "Transcribe.\nDMS tags: a, b"),
        ("Transcribe.\n", ["a"], "Transcribe.\nDMS tags: a"),
        ("Transcribe.", [], "Transcribe."),
        ("", ["a"], "DMS tags: a"),
        ("", [], ""),
    ],
)
def test_system_prompt_rule(system: str, tags: list[str], expected: str):
    assert build_system_prompt(prompt(system, tags)) == expected


def test_empty_system_prompt_sends_no_system_message():
    assert system_messages("") == []
    assert system_messages("S") == [{"role": "system", "content": "S"}]


def test_user_message_fills_the_anchor_and_attaches_the_image():
    p = prompt("", [], "Look:\n{{anchor_text}}")
    assert needs_anchor(p)
    assert user_message(p, "QUJD", "Page dimensions: 1.0x1.0\n") == {
        "role": "user",
        "content": "Look:\nPage dimensions: 1.0x1.0\n",
        "images": ["QUJD"],
    }
    assert not needs_anchor(prompt("", [], "Extract all text from the image."))
    assert user_message(prompt("", []), "QUJD", None)["content"] == ""


def job(profile: dict, override: dict | None = None) -> OcrJob:
    return OcrJob(profile={"model": "m", **profile}, prompt={}, options_override=override)


def test_profile_columns_map_to_ollama_names_and_nulls_are_omitted():
    options = build_options(job({"temperature": 0.1, "top_p": None, "repeat_penalty": 1.2,
                                 "max_tokens": 5, "options": {"num_ctx": 4096}}))  # fmt: skip
    assert options == {"temperature": 0.1, "repeat_penalty": 1.2, "num_predict": 5,
                       "num_ctx": 4096}  # fmt: skip
    assert build_options(job({})) == {}


def test_override_wins_and_null_unsets():
    options = build_options(
        job({"temperature": 0.1, "max_tokens": 5}, {"temperature": 0.3, "num_predict": None})
    )
    assert options == {"temperature": 0.3}


@pytest.mark.parametrize(
    ("profile", "override", "field"),
    [
        (
            {"options": {"temperature": 0.5}, "temperature": 0.1},
            None,
            "profile.options.temperature",
        ),
        ({"options": {"repetition_penalty": 1.1}}, None, "profile.options.repetition_penalty"),
        ({"options": {"num_ctx": 0}}, None, "profile.options.num_ctx"),
        ({"options": {"num_ctx": 1.5}}, None, "profile.options.num_ctx"),
        ({"options": {"seed": True}}, None, "profile.options.seed"),
        ({"options": {"stop": "END"}}, None, "profile.options.stop"),
        ({"options": {"use_mmap": 1}}, None, "profile.options.use_mmap"),
        ({}, {"temperature": -0.1}, "options_override.temperature"),
        ({}, {"num_predict": 200000}, "options_override.num_predict"),
        ({}, {"top_p": float("nan")}, "options_override.top_p"),
    ],
)
def test_bad_options_are_422_naming_the_field(profile: dict, override: dict | None, field: str):
    with pytest.raises(ApiError) as error:
        build_options(job(profile, override))
    assert error.value.code == "validation_error" and error.value.status == 422
    assert error.value.detail.startswith(field + ":")


def test_unknown_options_pass_through_for_newer_ollama_versions():
    assert build_options(job({"options": {"flash_attention_x": "on"}})) == {
        "flash_attention_x": "on"
    }
