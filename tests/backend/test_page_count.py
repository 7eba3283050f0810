"""Counting a local document's pages and refusing a range beyond it (before anything is sent)."""

from __future__ import annotations

import io
import re

import pypdfium2
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from backend_client.errors import InvalidJobRequest
from backend_client.page_count import check_page_range, count_pages


def pdf_bytes(pages: int) -> bytes:
    document = pypdfium2.PdfDocument.new()
    for _ in range(pages):
        document.new_page(100, 100)
    buffer = io.BytesIO()
    document.save(buffer)
    document.close()
    return buffer.getvalue()


def image_bytes(kind: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "white").save(buffer, format=kind)
    return buffer.getvalue()


@pytest.mark.parametrize("pages", [1, 2, 7])
def test_a_pdf_has_its_page_count(pages: int) -> None:
    assert count_pages(pdf_bytes(pages)) == pages


@pytest.mark.parametrize("kind", ["PNG", "JPEG", "TIFF", "WEBP"])
def test_an_image_is_one_page(kind: str) -> None:
    assert count_pages(image_bytes(kind)) == 1


@pytest.mark.parametrize("content", [b"", b"hello", b"%PDF-1.7 but not really a pdf"])
def test_unknown_or_broken_content_is_left_to_the_sidecar(content: bytes) -> None:
    assert count_pages(content) is None


@given(
    pages=st.lists(st.integers(min_value=1, max_value=60), min_size=1, max_size=8),
    page_count=st.integers(min_value=1, max_value=50),
)
def test_a_range_is_refused_exactly_when_a_page_is_beyond_the_document(
    pages: list[int], page_count: int
) -> None:
    beyond = sorted({page for page in pages if page > page_count})
    try:
        check_page_range("doc.pdf", pages, page_count)
    except InvalidJobRequest as exc:
        named = [int(number) for number in re.findall(r"\d+", str(exc).split(":", 1)[1])]
        assert named == beyond  # every page beyond, each once, in order
        assert f"has {page_count} page" in str(exc)
    else:
        assert beyond == []


@given(st.lists(st.integers(min_value=1), max_size=5) | st.none())
def test_nothing_is_refused_when_the_page_count_is_unknown(pages: list[int] | None) -> None:
    check_page_range("elsewhere.pdf", pages, None)
