"""How many pages a local document has, so a page range beyond it is refused before anything is
sent (the sidecar would refuse it too, but only after the upload).

PDFs are counted with pypdfium2 (the sidecar's own renderer); an image is one page, as the sidecar
reads it. Blocking file work: call it through `asyncio.to_thread`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pypdfium2

from backend_client.errors import InvalidJobRequest

PDF_MAGIC = b"%PDF-"
# The image formats the sidecar accepts (docs/api.md), by their first bytes.
IMAGE_MAGICS = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"RIFF")


def count_pages(content: bytes) -> int | None:
    """Pages of a PDF or image; None when the bytes are neither or the PDF cannot be read
    (the sidecar then gives its documented error)."""
    if content.startswith(PDF_MAGIC):
        try:
            document = pypdfium2.PdfDocument(content)
        except pypdfium2.PdfiumError:
            return None
        try:
            return len(document)
        finally:
            document.close()
    if content.startswith(IMAGE_MAGICS):
        return 1
    return None


def count_local_pages(path: Path) -> int | None:
    """`count_pages` of a local file; None when there is no such readable file here."""
    try:
        content = path.read_bytes()
    except OSError:
        return None
    return count_pages(content)


def check_page_range(label: str, pages: Sequence[int] | None, page_count: int | None) -> None:
    """Refuse pages beyond the document (unknown page count: nothing to check here)."""
    if not pages or page_count is None:
        return
    beyond = sorted(page for page in set(pages) if page > page_count)
    if beyond:
        listed = ", ".join(str(page) for page in beyond)
        which = f"page {listed} is" if len(beyond) == 1 else f"pages {listed} are"
        plural = "s" if page_count != 1 else ""
        raise InvalidJobRequest(
            f"{label} has {page_count} page{plural}: {which} beyond it; nothing was sent"
        )
