"""Document bombs, generated small: each is refused or processed with bounded memory and time.

PDFs with 100,000 pages (real ones and a lying /Count), huge and degenerate media boxes, deeply
nested objects, a broken xref; images whose header declares 60,000 × 60,000; a 64 MP image that
compresses to almost nothing; TIFFs with many frames; truncated files.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

from PIL import Image

from tests.fixtures.documents import make_image, multipage_tiff, text_pdf

# Answers a bomb may get: processed, or refused with a documented client error.
ACCEPTABLE = frozenset({200, 413, 415, 422})


def pdf_from_objects(bodies: list[bytes], *, broken_xref: bool = False) -> bytes:
    """A PDF whose object i+1 is bodies[i]; object 1 must be the catalog."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(bodies, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref_at = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(bodies) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % ((offset * 7 + 13) if broken_xref else offset)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\n" % (len(bodies) + 1)
    out += b"startxref\n%d\n%%%%EOF\n" % (xref_at + (999 if broken_xref else 0))
    return bytes(out)


def pdf_pages(count: int, media_box: bytes = b"[0 0 200 200]") -> bytes:
    """`count` real (empty) pages in one flat Kids array."""
    kids = b" ".join(b"%d 0 R" % (3 + i) for i in range(count))
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Count %d /Kids [%s] >>" % (count, kids),
    ]
    bodies += [b"<< /Type /Page /Parent 2 0 R /MediaBox %s >>" % media_box] * count
    return pdf_from_objects(bodies)


def pdf_lying_count() -> bytes:
    """/Count says 100,000; one page exists."""
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Count 100000 /Kids [3 0 R] >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        ]
    )


def pdf_deeply_nested(depth: int) -> bytes:
    """A page whose /Resources hold arrays nested `depth` deep."""
    nested = b"[" * depth + b"1" + b"]" * depth
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] /Resources << /X %s >> >>"
            % nested,
        ]
    )


def pdf_broken_xref() -> bytes:
    return pdf_from_objects(
        [
            b"<< /Type /Catalog /Pages 2 0 R >>",
            b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        ],
        broken_xref=True,
    )


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A valid PNG header claiming width × height, with one tiny (wrong) IDAT."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A real small JPEG whose SOF0 frame header is rewritten to claim width × height."""
    data = bytearray(make_image("jpeg", (64, 64)))
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


def tiff_declaring(*sizes: tuple[int, int]) -> bytes:
    """A little-endian TIFF, one frame per (width, height) as its IFD claims it, each frame with
    one 16-byte 8-bit strip (far too little data for a large claim)."""
    entry_count = 9
    ifd_size = 2 + entry_count * 12 + 4
    out = bytearray(b"II*\x00" + struct.pack("<I", 8))
    for index, (width, height) in enumerate(sizes):
        ifd_at = len(out)
        strip_at = ifd_at + ifd_size
        next_ifd = strip_at + 16 if index + 1 < len(sizes) else 0
        entries = [
            (256, 4, 1, width),  # ImageWidth (LONG)
            (257, 4, 1, height),  # ImageLength
            (258, 3, 1, 8),  # BitsPerSample
            (259, 3, 1, 1),  # Compression: none
            (262, 3, 1, 1),  # Photometric: black is zero
            (273, 4, 1, strip_at),  # StripOffsets
            (277, 3, 1, 1),  # SamplesPerPixel
            (278, 4, 1, height),  # RowsPerStrip
            (279, 4, 1, 16),  # StripByteCounts
        ]
        out += struct.pack("<H", entry_count)
        for tag, kind, count, value in entries:
            out += struct.pack("<HHII", tag, kind, count, value)
        out += struct.pack("<I", next_ifd) + b"\x80" * 16
    return bytes(out)


def png_compressed_bomb(side: int) -> bytes:
    """A real side × side greyscale PNG, all white: a few KB that decode to side² bytes."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), 255).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


BOMBS: dict[str, Callable[[], bytes]] = {
    "pdf_100000_pages": lambda: pdf_pages(100_000),
    "pdf_lying_count_100000": pdf_lying_count,
    "pdf_huge_media_box": lambda: pdf_pages(1, b"[0 0 10000000 10000000]"),
    "pdf_sliver_media_box": lambda: pdf_pages(1, b"[0 0 14400 0.001]"),
    "pdf_inverted_media_box": lambda: pdf_pages(1, b"[200 200 -1e30 1e30]"),
    "pdf_nested_50000_deep": lambda: pdf_deeply_nested(50_000),
    "pdf_broken_xref": pdf_broken_xref,
    "pdf_truncated": lambda: truncated(text_pdf(3)),
    "png_declares_60000x60000": lambda: png_declaring(60_000, 60_000),
    "jpeg_declares_60000x60000": lambda: jpeg_declaring(60_000, 60_000),
    "tiff_declares_60000x60000": lambda: tiff_declaring((60_000, 60_000)),
    "tiff_second_frame_60000x60000": lambda: tiff_declaring((4, 4), (60_000, 60_000)),
    "png_64mp_compressed": lambda: png_compressed_bomb(8000),
    "tiff_1000_frames": lambda: multipage_tiff(1000, (16, 16)),
    "png_truncated": lambda: truncated(make_image("png", (640, 480))),
    "jpeg_truncated": lambda: truncated(make_image("jpeg", (640, 480))),
    "tiff_truncated": lambda: truncated(multipage_tiff(3)),
}


def tiff_large_second_frame(side: int) -> bytes:
    """A 16 × 16 first frame (what the header check sees), then a real side × side 1-bit frame,
    deflate-compressed to almost nothing."""
    buffer = io.BytesIO()
    first = Image.new("L", (16, 16), 255)
    first.save(
        buffer,
        "TIFF",
        save_all=True,
        append_images=[Image.new("1", (side, side), 1)],
        compression="tiff_deflate",
    )
    return buffer.getvalue()


BOMBS["tiff_second_frame_400mp_compressed"] = lambda: tiff_large_second_frame(20_000)
