"""SQLAlchemy 2 models of the two governance tables (docs/backend.md).

The migration in `migrations/versions/` is the authority on the schema; these models mirror it
(`tests/backend/test_migrations.py` checks that they agree).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint names, so migrations (and SQLite batch mode) can address them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# JSON on SQLite, JSONB on PostgreSQL.
JsonType = JSON().with_variant(JSONB(), "postgresql")

ONE_ACTIVE_PROMPT_INDEX = "uq_ai_prompts_one_active_per_key"
ACTIVE_ROW = text("is_active")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class AiExecutionProfile(Base):
    """Model tag and sampling parameters of one kind of job (`ocr-extract`)."""

    __tablename__ = "ai_execution_profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    model: Mapped[str | None] = mapped_column(String(200))
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    repeat_penalty: Mapped[float | None] = mapped_column(Float)
    max_tokens: Mapped[int | None] = mapped_column(Integer)
    keep_alive: Mapped[str | None] = mapped_column(String(40))
    options: Mapped[dict[str, Any] | None] = mapped_column(JsonType)
    description: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class AiPrompt(Base):
    """One immutable version of a prompt; at most one version per key is active."""

    __tablename__ = "ai_prompts"
    __table_args__ = (
        UniqueConstraint("prompt_key", "version"),
        CheckConstraint("version >= 1", name="version_positive"),
        Index(
            ONE_ACTIVE_PROMPT_INDEX,
            "prompt_key",
            unique=True,
            postgresql_where=ACTIVE_ROW,
            sqlite_where=ACTIVE_ROW,
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_key: Mapped[str] = mapped_column(String(100))
    version: Mapped[int] = mapped_column(Integer)
    system_prompt: Mapped[str] = mapped_column(Text)
    user_template: Mapped[str | None] = mapped_column(Text)
    dms_tags: Mapped[list[str]] = mapped_column(JsonType)
    is_active: Mapped[bool] = mapped_column(Boolean, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    created_by: Mapped[str | None] = mapped_column(String(200))
    change_note: Mapped[str | None] = mapped_column(Text)
