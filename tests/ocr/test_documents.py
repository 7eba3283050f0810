"""Document typing, rendering and anchor text, without HTTP."""

from __future__ import annotations

import base64
import io
import struct
import threading
import zlib

import pytest
from PIL import Image

from sidecar.errors import ApiError
from sidecar.ocr.anchor import escape_run, join_capped
from sidecar.ocr.documents import (
    MAX_IMAGE_PIXELS,
    DocumentKind,
    ImageDocument,
    PdfDocument,
    open_document,
    sniff_kind,
    target_size,
)
from tests.fixtures.documents import encrypted_pdf, make_image, make_pdf, text_pdf


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (make_image("PNG"), DocumentKind.PNG),
        (make_image("JPEG"), DocumentKind.JPEG),
        (make_image("TIFF"), DocumentKind.TIFF),
        (make_image("WEBP"), DocumentKind.WEBP),
        (text_pdf(1), DocumentKind.PDF),
        (b"\r\n" + text_pdf(1), DocumentKind.PDF),  # junk before the header is tolerated
    ],
)
def test_kind_comes_from_magic_bytes(data: bytes, kind: DocumentKind):
    assert sniff_kind(data) is kind


@pytest.mark.parametrize(
    "data", [b"", b"GIF89a....", b"PK\x03\x04zip", b"RIFF\x00\x00\x00\x00WAVE"]
)
def test_other_content_is_415(data: bytes):
    with pytest.raises(ApiError) as error:
        sniff_kind(data)
    assert error.value.code == "unsupported_media_type"


@pytest.mark.parametrize(
    ("size", "expected"),
    [((200, 100), (200, 100)), ((300, 300), (300, 300)), ((301, 150), (1800, 897)),
     ((4000, 3000), (1800, 1350)), ((1800, 50), (1800, 50))],
)  # fmt: skip
def test_image_target_size_follows_the_v15_rule(size, expected):
    assert target_size(*size) == expected


def test_pdf_pages_render_at_1800px_on_the_longest_side():
    document = open_document(make_pdf([["landscape"]], size=(842.0, 595.0)))
    try:
        page = document.render(1, with_anchor=False)
    finally:
        document.close()
    image = Image.open(io.BytesIO(base64.b64decode(page.image_b64)))
    assert image.format == "PNG" and image.size == (1800, 1272) == (page.width, page.height)


def test_pdf_anchor_lists_text_runs_with_positions():
    document = open_document(make_pdf([["Hello [world]", "Second line"]]))
    try:
        anchor = document.render(1, with_anchor=True).anchor_text
    finally:
        document.close()
    assert anchor is not None
    lines = anchor.splitlines()
    assert lines[0] == "Page dimensions: 612.0x792.0"
    assert lines[1].startswith("[73x71") and lines[1].endswith("Hello \\[world\\]")
    assert lines[2].endswith("]Second line")


def test_anchor_helpers_escape_shorten_and_cap():
    assert escape_run(" a\tb\nc ") == "a\\tb\\nc"
    long_run = escape_run("x" * 300)
    assert long_run.startswith("x" * 120 + " ... ") and len(long_run) == 245
    capped = join_capped("H", ["a" * 10] * 5, limit=30)
    assert capped == "H\n" + "a" * 10 + "\n" + "a" * 10 + "\n"


def test_encrypted_and_corrupt_pdfs_are_422():
    for data, words in ((encrypted_pdf(), "password"), (b"%PDF-1.4\n%%EOF", "damaged")):
        with pytest.raises(ApiError) as error:
            open_document(data)
        assert error.value.code == "invalid_document" and words in error.value.detail


def test_render_after_close_is_refused_not_crashed():
    document = open_document(text_pdf(2))
    assert isinstance(document, PdfDocument)
    document.close()
    with pytest.raises(ApiError):
        document.render(1, with_anchor=False)
    image = open_document(make_image("PNG"))
    assert isinstance(image, ImageDocument)
    image.close()
    with pytest.raises(ApiError):
        image.render(1, with_anchor=False)


def test_pdfs_render_safely_from_many_threads():
    """PDFium is not thread-safe: the process-wide lock must serialise concurrent jobs."""
    documents = [open_document(text_pdf(3)) for _ in range(4)]
    errors: list[BaseException] = []

    def work(document) -> None:
        try:
            for number in (1, 2, 3):
                document.render(number, with_anchor=True)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(d,)) for d in documents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for document in documents:
        document.close()
    assert errors == []


def _png_claiming(width: int, height: int) -> bytes:
    """A real small PNG whose IHDR claims another size (CRC fixed): the header is all we read."""
    data = bytearray(make_image("PNG", (200, 100)))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(data[ihdr : ihdr + 17])))
    return bytes(data)


def test_images_beyond_a_page_size_are_refused_from_the_header():
    with pytest.raises(ApiError) as caught:
        open_document(_png_claiming(9_500, 9_000))  # 85.5 MP > MAX_IMAGE_PIXELS
    assert caught.value.code == "invalid_document"
    assert "too many pixels" in caught.value.detail
    assert 9_500 * 9_000 > MAX_IMAGE_PIXELS >= 8_000 * 8_000
