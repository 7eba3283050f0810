"""What a job reads: a path the sidecar resolves under its UPLOAD_BASE, or bytes uploaded."""

from __future__ import annotations

import mimetypes
from dataclasses import dataclass, field
from pathlib import Path

from backend_client.errors import InvalidJobRequest


@dataclass(frozen=True)
class DocumentPath:
    """A document already in the shared upload volume; `path` is as the sidecar sees it."""

    path: str

    @property
    def label(self) -> str:
        return self.path


@dataclass(frozen=True)
class DocumentUpload:
    """A document sent in the request body (multipart part `file`)."""

    filename: str
    content: bytes = field(repr=False)
    content_type: str = "application/octet-stream"

    @classmethod
    def from_file(cls, path: Path) -> DocumentUpload:
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            raise InvalidJobRequest(f"{path.name}: no such file") from None
        except IsADirectoryError:
            raise InvalidJobRequest(f"{path.name}: is a directory") from None
        except PermissionError:
            raise InvalidJobRequest(f"{path.name}: permission denied") from None
        guessed, _ = mimetypes.guess_type(path.name)
        return cls(path.name, content, guessed or "application/octet-stream")

    @property
    def label(self) -> str:
        return self.filename


Document = DocumentPath | DocumentUpload
