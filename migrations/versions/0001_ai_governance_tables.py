"""Create ai_execution_profiles and ai_prompts; seed the ocr-extract profile and prompt v1.

Revision ID: 0001
Revises:
Create Date: 2026-01-20

Constraint names are spelled out (op.f: taken as final, not re-run through the naming
convention) so later migrations, SQLite batch mode included, can address them. The seed is
written out here rather than imported from application code: a migration must
produce the same rows forever, whatever later code looks like.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")
ACTIVE = sa.text("is_active")

OCR_PROFILE = {
    "name": "ocr-extract",
    "model": "scb10x/typhoon-ocr1.5-3b",
    # Typhoon OCR 1.5 recommendations (typhoon-ocr package, ocr_document): 0.1 / 0.6 / 1.1.
    "temperature": 0.1,
    "top_p": 0.6,
    "repeat_penalty": 1.1,
    # num_ctx must hold the page image (~2.2k tokens at 1800 px) + prompt (~0.3k) + the answer:
    # 16384 - 2.5k leaves room for 12288 generated tokens, more than a dense page needs.
    "max_tokens": 12288,
    "keep_alive": "5m",
    "options": {"num_ctx": 16384},
    "description": "Typhoon OCR 1.5 page transcription for the DMS (seeded by migration 0001)",
}

OCR_SYSTEM_PROMPT_V1 = (
    "You are the OCR engine of a document management system. Transcribe the page exactly as "
    "printed, in its original language (Thai or English), in reading order. Do not summarise, "
    "translate, correct or invent text; leave out what you cannot read instead of guessing.\n"
    "The DMS indexes the following fields, so transcribe every label and value that belongs to "
    "them completely: {{dms_tags}}."
)

# Typhoon OCR 1.5 only works with its own fixed instruction in the user turn; this paraphrases the
# one in the PyPI package typhoon-ocr 0.4.1 (PROMPTS_SYS["v1.5"]). Migration 0002 adds the exact
# text as version 2.
OCR_USER_TEMPLATE_V1 = (
    "Extract all text from the image.\n\n"
    "Instructions:\n"
    "- Only return the clean Markdown of the page, with no explanations or comments.\n"
    "- Include everything on the page: headers, footers, footnotes and small print.\n\n"
    "Formatting Rules:\n"
    "- Tables: render tables as HTML <table>...</table>; merged cells are allowed.\n"
    "- Equations: LaTeX, $...$ inline and $$...$$ for display equations.\n"
    "- Images, charts and diagrams with clear boundaries: wrap them in <figure>...</figure> "
    "with a rich description written in Thai.\n"
    "- Page numbers: wrap them in <page_number>...</page_number>.\n"
    "- Checkboxes: use ☐ for unchecked and ☑ for checked boxes."
)

OCR_DMS_TAGS_V1 = [
    "document_type",
    "document_number",
    "document_date",
    "issuer",
    "recipient",
    "tax_id",
    "total_amount",
    "currency",
]


def upgrade() -> None:
    profiles = op.create_table(
        "ai_execution_profiles",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("model", sa.String(200), nullable=True),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("top_p", sa.Float(), nullable=True),
        sa.Column("repeat_penalty", sa.Float(), nullable=True),
        sa.Column("max_tokens", sa.Integer(), nullable=True),
        sa.Column("keep_alive", sa.String(40), nullable=True),
        sa.Column("options", JSON_TYPE, nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_execution_profiles")),
        sa.UniqueConstraint("name", name=op.f("uq_ai_execution_profiles_name")),
    )
    prompts = op.create_table(
        "ai_prompts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("prompt_key", sa.String(100), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("user_template", sa.Text(), nullable=True),
        sa.Column("dms_tags", JSON_TYPE, nullable=False),
        sa.Column("is_active", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("created_by", sa.String(200), nullable=True),
        sa.Column("change_note", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ai_prompts")),
        sa.UniqueConstraint("prompt_key", "version", name=op.f("uq_ai_prompts_prompt_key_version")),
        sa.CheckConstraint("version >= 1", name=op.f("ck_ai_prompts_version_positive")),
    )
    # At most one active version per key, enforced by the database on both dialects.
    op.create_index(
        op.f("uq_ai_prompts_one_active_per_key"),
        "ai_prompts",
        ["prompt_key"],
        unique=True,
        postgresql_where=ACTIVE,
        sqlite_where=ACTIVE,
    )
    op.bulk_insert(profiles, [OCR_PROFILE])
    op.bulk_insert(
        prompts,
        [
            {
                "prompt_key": "ocr-extract",
                "version": 1,
                "system_prompt": OCR_SYSTEM_PROMPT_V1,
                "user_template": OCR_USER_TEMPLATE_V1,
                "dms_tags": OCR_DMS_TAGS_V1,
                "is_active": True,
                "created_by": "migration 0001",
                "change_note": "initial Typhoon OCR 1.5 prompt",
            }
        ],
    )


def downgrade() -> None:
    op.drop_index(op.f("uq_ai_prompts_one_active_per_key"), table_name="ai_prompts")
    op.drop_table("ai_prompts")
    op.drop_table("ai_execution_profiles")
