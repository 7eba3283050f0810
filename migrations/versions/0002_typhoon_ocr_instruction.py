"""Prompt version 2 of ocr-extract: Typhoon OCR 1.5's own instruction, byte for byte.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Typhoon OCR 1.5 was trained on one fixed instruction in the user turn; version 1 paraphrased it.
Version 2's `user_template` is exactly the text the model's own client sends: the PyPI package
`typhoon-ocr` 0.4.1, `typhoon_ocr.ocr_utils.PROMPTS_SYS["v1.5"]` rendered with
`figure_language="Thai"` (trailing newline and indentation included). It is copied here as a
literal: the product never imports typhoon-ocr (a development dependency only, used by the test
that compares the two texts). Version 1's DMS system prompt and tags are kept.

A change is a new version, never an edit: version 2 is inserted, then version 1 is deactivated and
version 2 activated in this one transaction. Downgrade deletes version 2 and, if it was still the
active one, activates version 1 again.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PROMPT_KEY = "ocr-extract"
JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")

# typhoon-ocr 0.4.1: PROMPTS_SYS["v1.5"](figure_language="Thai"), verbatim.
TYPHOON_OCR_15_INSTRUCTION = (
    "Extract all text from the image.\n"
    "\n"
    "\n"
    "Instructions:\n"
    "- Only return the clean Markdown.\n"
    "- Do not include any explanation or extra text.\n"
    "- You must include all information on the page.\n"
    "\n"
    "\n"
    "Formatting Rules:\n"
    "- Tables: Render tables using <table>...</table> in clean HTML format.\n"
    "- Equations: Render equations using LaTeX syntax with inline ($...$) and block "
    "($$...$$).\n"
    "- Images/Charts/Diagrams: Wrap any clearly defined visual areas (e.g. charts, diagrams, "
    "pictures) in:\n"
    "\n"
    "\n"
    "<figure>\n"
    "Describe the image's main elements (people, objects, text), note any contextual clues "
    "(place, event, culture), mention visible text and its meaning, provide deeper analysis "
    "when relevant (especially for financial charts, graphs, or documents), comment on style "
    "or architecture if relevant, then give a concise overall summary. Describe in Thai.\n"
    "</figure>\n"
    "\n"
    "\n"
    "- Page Numbers: Wrap page numbers in <page_number>...</page_number> (e.g., "
    "<page_number>14</page_number>).\n"
    "- Checkboxes: Use ☐ for unchecked and ☑ for checked boxes.\n"
    "    "
)

_prompts = sa.table(
    "ai_prompts",
    sa.column("prompt_key", sa.String),
    sa.column("version", sa.Integer),
    sa.column("system_prompt", sa.Text),
    sa.column("user_template", sa.Text),
    sa.column("dms_tags", JSON_TYPE),
    sa.column("is_active", sa.Boolean),
    sa.column("created_by", sa.String),
    sa.column("change_note", sa.Text),
)


def _version(number: int) -> sa.ColumnElement[bool]:
    return sa.and_(_prompts.c.prompt_key == PROMPT_KEY, _prompts.c.version == number)


def _set_active(number: int, active: bool) -> None:
    op.execute(_prompts.update().where(_version(number)).values(is_active=active))


def upgrade() -> None:
    connection = op.get_bind()
    version_1 = connection.execute(
        sa.select(_prompts.c.system_prompt, _prompts.c.dms_tags).where(_version(1))
    ).one()
    op.execute(
        _prompts.insert().values(
            prompt_key=PROMPT_KEY,
            version=2,
            system_prompt=version_1.system_prompt,
            user_template=TYPHOON_OCR_15_INSTRUCTION,
            dms_tags=version_1.dms_tags,
            is_active=False,
            created_by="migration 0002",
            change_note="Typhoon OCR 1.5's own instruction (typhoon-ocr 0.4.1), byte for byte",
        )
    )
    # Deactivate first: the partial unique index allows one active version per key.
    _set_active(1, False)
    _set_active(2, True)


def downgrade() -> None:
    # Version 1 becomes active again only if version 2 still was: a version an operator
    # activated since stays active (the index allows one active version per key).
    was_active = op.get_bind().execute(sa.select(_prompts.c.is_active).where(_version(2))).scalar()
    op.execute(_prompts.delete().where(_version(2)))
    if was_active:
        _set_active(1, True)
