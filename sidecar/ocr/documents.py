"""Documents to page images: type by magic bytes, PDF pages rendered with pypdfium2, images decoded
with Pillow, each page scaled the way Typhoon OCR expects (the typhoon-ocr package: longest side
1800 px).

- PDF pages are rendered so the longest side is 1800 px (`scale = 1800 / longest side in pt`)
  and sent as PNG (lossless: OCR wants crisp glyphs).
- Image files follow the v1.5 rule: a side over 300 px → scale (LANCZOS) so the longest side is
  exactly 1800 px, then RGB JPEG (quality 95), as the reference package does. A PNG or JPEG that
  needs no scaling and no colour conversion is sent as it came, byte for byte. A multi-page TIFF
  is a multi-page document.

Everything here blocks: the pipeline calls it in a worker thread. PDFium is not thread-safe, so
every pdfium call runs under the process-wide `PDFIUM_LOCK`; encoding runs outside it.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

import pypdfium2 as pdfium
from PIL import Image

from sidecar.errors import ApiError
from sidecar.ocr.anchor import image_anchor, pdf_page_anchor

logger = logging.getLogger("sidecar.ocr")

PDFIUM_LOCK = threading.Lock()
TARGET_LONG_SIDE_PX = 1800
SMALL_IMAGE_PX = 300
JPEG_QUALITY = 95
# zlib level 1: a rendered text page compresses almost as well as at 6, several times faster.
PNG_COMPRESS_LEVEL = 1
_PDF_HEADER_WINDOW = 1024  # readers accept the %PDF- header anywhere in the first KiB


class DocumentKind(StrEnum):
    PDF = "pdf"
    PNG = "png"
    JPEG = "jpeg"
    TIFF = "tiff"
    WEBP = "webp"


SUPPORTED_TYPES = "PDF, PNG, JPEG, TIFF or WebP"


def sniff_kind(data: bytes) -> DocumentKind:
    """The document type from its first bytes; 415 for anything else."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return DocumentKind.PNG
    if data.startswith(b"\xff\xd8\xff"):
        return DocumentKind.JPEG
    if data.startswith((b"II*\x00", b"MM\x00*")):
        return DocumentKind.TIFF
    if len(data) >= 12 and data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return DocumentKind.WEBP
    if b"%PDF-" in data[:_PDF_HEADER_WINDOW]:
        return DocumentKind.PDF
    raise ApiError(
        "unsupported_media_type",
        f"The document is not a {SUPPORTED_TYPES} file (checked by its content, not its name).",
    )


@dataclass(frozen=True, slots=True)
class PageImage:
    number: int
    image_b64: str
    width: int
    height: int
    anchor_text: str | None


class Document(Protocol):
    kind: DocumentKind
    page_count: int

    def render(self, number: int, *, with_anchor: bool) -> PageImage: ...

    def close(self) -> None: ...


def invalid(detail: str) -> ApiError:
    return ApiError("invalid_document", detail)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    if fmt == "PNG":
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


_PDFIUM_ERRORS = {
    pdfium.raw.FPDF_ERR_PASSWORD: "The PDF is password-protected; upload a decrypted copy.",
    pdfium.raw.FPDF_ERR_SECURITY: "The PDF uses an unsupported security handler.",
    pdfium.raw.FPDF_ERR_FORMAT: "The PDF is damaged or not a PDF.",
}


class PdfDocument:
    kind = DocumentKind.PDF

    def __init__(self, data: bytes) -> None:
        self._data = data  # pdfium reads from this buffer for the document's whole life
        self._closed = False
        with PDFIUM_LOCK:
            try:
                self._pdf = pdfium.PdfDocument(data)
                self.page_count = len(self._pdf)
            except pdfium.PdfiumError as exc:
                code = getattr(exc, "err_code", None)
                raise invalid(_PDFIUM_ERRORS.get(code, "The PDF cannot be opened.")) from None
        if self.page_count == 0:
            self.close()
            raise invalid("The PDF has no pages.")

    def render(self, number: int, *, with_anchor: bool) -> PageImage:
        with PDFIUM_LOCK:
            if self._closed:  # a prefetch that outlived its job
                raise invalid("The document was closed.")
            try:
                page = self._pdf[number - 1]
                try:
                    width_pt, height_pt = page.get_size()
                    # pdfium rounds sizes up: shave a hair so 1800.0000001 px stays 1800
                    scale = TARGET_LONG_SIDE_PX / max(width_pt, height_pt, 1.0) * (1 - 1e-9)
                    bitmap = page.render(scale=scale, rev_byteorder=True)
                    # copy(): the PIL image must not borrow pdfium's buffer once we unlock.
                    image = bitmap.to_pil().copy()
                    bitmap.close()
                    anchor = pdf_page_anchor(page) if with_anchor else None
                finally:
                    page.close()
            except pdfium.PdfiumError:
                raise invalid(f"Page {number} of the PDF cannot be rendered.") from None
        encoded = _encode(image.convert("RGB"), "PNG")
        return PageImage(number, _b64(encoded), image.width, image.height, anchor)

    def close(self) -> None:
        with PDFIUM_LOCK:
            if not self._closed:
                self._closed = True
                self._pdf.close()


def target_size(width: int, height: int) -> tuple[int, int]:
    """The v1.5 image rule: sides over 300 px → longest side exactly 1800 px."""
    longest = max(width, height)
    if longest <= SMALL_IMAGE_PX or longest == TARGET_LONG_SIDE_PX:
        return width, height
    factor = TARGET_LONG_SIDE_PX / longest
    return max(1, round(width * factor)), max(1, round(height * factor))


# A page scanned at 600 dpi on A3 is ~70 MP; anything larger is no document page, and a queued
# job must not hold a decoded bitmap of Pillow's own bomb limit (179 MP, ~0.5 GB RGB).
MAX_IMAGE_PIXELS = 80_000_000


class ImageDocument:
    def __init__(self, data: bytes, kind: DocumentKind) -> None:
        self.kind = kind
        self._data = data
        self._lock = threading.Lock()  # one Pillow image object: one thread at a time
        self._closed = False
        try:
            self._image = Image.open(io.BytesIO(data))  # reads the header only
            if self._image.width * self._image.height > MAX_IMAGE_PIXELS:
                raise Image.DecompressionBombError("too many pixels")
            self._check_integrity()
            # n_frames parses every IFD of a TIFF: a truncated one raises here (was a 500).
            frames = getattr(self._image, "n_frames", 1)
        except Image.DecompressionBombError:
            raise invalid("The image has too many pixels to decode safely.") from None
        except Exception as exc:  # Pillow's decoders raise many types for malformed files
            logger.info("image decode failed: %s", type(exc).__name__)
            raise invalid(f"The {kind.value.upper()} image is damaged or truncated.") from None
        self.page_count = frames if kind is DocumentKind.TIFF else 1

    def _check_integrity(self) -> None:
        """Refuse a damaged file before it is queued, at the least cost that catches truncation:
        PNG chunk CRCs (no inflate), JPEG decoded at 1/8 scale, other types decoded in full
        (they are converted anyway, and the decoded frame is kept for rendering)."""
        if self.kind is DocumentKind.PNG:
            Image.open(io.BytesIO(self._data)).verify()
        elif self.kind is DocumentKind.JPEG:
            probe = Image.open(io.BytesIO(self._data))
            probe.draft("RGB", (max(1, probe.width // 8), max(1, probe.height // 8)))
            probe.load()
        else:
            self._image.load()

    def render(self, number: int, *, with_anchor: bool) -> PageImage:
        with self._lock:
            if self._closed:
                raise invalid("The document was closed.")
            return self._render(number, with_anchor=with_anchor)

    def _render(self, number: int, *, with_anchor: bool) -> PageImage:
        try:
            if number > 1 or self.page_count > 1:
                self._image.seek(number - 1)
            image = self._image
            size = target_size(image.width, image.height)
            if self._can_pass_through(image, size):
                encoded = self._data
            else:
                if size != (image.width, image.height):
                    image = image.resize(size, Image.Resampling.LANCZOS)
                encoded = _encode(image.convert("RGB"), "JPEG")
        except Exception as exc:  # truncated data surfaces only when frames are decoded
            logger.info("image page decode failed: %s", type(exc).__name__)
            raise invalid(f"Page {number} of the image cannot be decoded.") from None
        anchor = image_anchor(*size) if with_anchor else None
        return PageImage(number, _b64(encoded), size[0], size[1], anchor)

    def _can_pass_through(self, image: Image.Image, size: tuple[int, int]) -> bool:
        return (
            self.kind in (DocumentKind.PNG, DocumentKind.JPEG)
            and size == (image.width, image.height)
            and image.mode in ("RGB", "L")
        )

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._image.close()


def open_document(data: bytes) -> Document:
    """Type-check and open a document (blocking); 415 for unknown types, 422 for broken ones."""
    kind = sniff_kind(data)
    if kind is DocumentKind.PDF:
        return PdfDocument(data)
    return ImageDocument(data, kind)
