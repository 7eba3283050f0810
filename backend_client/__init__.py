"""What the existing backend imports to call the sidecar with parameters from its database.

```python
db = Database.from_url()  # OCR_BACKEND_DATABASE_URL, or SQLite under ./var/
client = SidecarClient.from_settings(load_backend_settings())
ocr = OcrService(SnapshotResolver(db), client)
response = await ocr.extract(DocumentPath("tenant-a/invoice.pdf"))
```
"""

from backend_client.client import SidecarClient
from backend_client.db import Database
from backend_client.documents import Document, DocumentPath, DocumentUpload
from backend_client.resolver import SnapshotResolver
from backend_client.retry import RetryPolicy
from backend_client.services import (
    OcrService,
    PromptDraft,
    SandboxOcrEngineService,
    SandboxResult,
)
from backend_client.settings import BackendSettings, load_backend_settings

__all__ = [
    "BackendSettings",
    "Database",
    "Document",
    "DocumentPath",
    "DocumentUpload",
    "OcrService",
    "PromptDraft",
    "RetryPolicy",
    "SandboxOcrEngineService",
    "SandboxResult",
    "SidecarClient",
    "SnapshotResolver",
    "load_backend_settings",
]
