"""Alembic migrations of the backend governance tables (run them with `ocr-backend migrate`)."""
