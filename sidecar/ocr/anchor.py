"""`{{anchor_text}}`: a page's text layer in the format Typhoon OCR v1 prompts expect.

Format (the typhoon-ocr package's anchor text), one item per line, PDF points with the origin
bottom left:
`Page dimensions: {W:.1f}x{H:.1f}`, then `[Image {x0}x{y0} to {x1}x{y1}]` per image, then
`[{x}x{y}]{text}` per text run. Text is escaped (`[`/`]`, newlines and tabs as two-character
escapes), runs over 250 characters are shortened to "head ... tail", and blank runs dropped.
Unlike the reference implementation, which samples lines at random beyond the length cap, we keep
lines in page order up to the cap, so the same page always gives the same prompt.

The functions taking pdfium objects must be called with `documents.PDFIUM_LOCK` held.
"""

from __future__ import annotations

import pypdfium2 as pdfium

MAX_ANCHOR_CHARS = 8000
_MAX_RUN_CHARS = 250
_RUN_EDGE_CHARS = 120


def escape_run(text: str) -> str:
    text = text.strip()
    if len(text) > _MAX_RUN_CHARS:
        text = f"{text[:_RUN_EDGE_CHARS]} ... {text[-_RUN_EDGE_CHARS:]}"
    return (
        text.replace("[", "\\[")
        .replace("]", "\\]")
        .replace("\r", "\\r")
        .replace("\n", "\\n")
        .replace("\t", "\\t")
    )


def join_capped(header: str, lines: list[str], limit: int = MAX_ANCHOR_CHARS) -> str:
    """`header` plus as many whole lines as fit in `limit` characters, in order."""
    kept = [header]
    used = len(header) + 1
    for line in lines:
        if used + len(line) + 1 > limit:
            break
        kept.append(line)
        used += len(line) + 1
    return "\n".join(kept) + "\n"


def image_anchor(width: int, height: int) -> str:
    """The synthetic anchor of a plain image file (no text layer)."""
    return f"Page dimensions: {width:.1f}x{height:.1f}\n[Image 0x0 to {width}x{height}]\n"


def pdf_page_anchor(page: pdfium.PdfPage) -> str:
    """Anchor text of one PDF page (call with PDFIUM_LOCK held)."""
    width, height = page.get_size()
    lines: list[str] = []
    for obj in page.get_objects(filter=(pdfium.raw.FPDF_PAGEOBJ_IMAGE,)):
        left, bottom, right, top = obj.get_pos()
        lines.append(f"[Image {round(left)}x{round(bottom)} to {round(right)}x{round(top)}]")
    textpage = page.get_textpage()
    try:
        for index in range(textpage.count_rects()):
            left, bottom, right, top = textpage.get_rect(index)
            run = escape_run(textpage.get_text_bounded(left, bottom, right, top))
            if run:
                lines.append(f"[{round(left)}x{round(bottom)}]{run}")
    finally:
        textpage.close()
    return join_capped(f"Page dimensions: {width:.1f}x{height:.1f}", lines)
