"""Content-addressed artifact files: `<root>/<sha256>`, written atomically, never rewritten.

The name is the hash of the bytes, so a file that exists is complete and correct by construction
(it is only renamed into place after hashing), two jobs producing the same bytes share one file,
and a client can verify a download against the name it asked for.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from shared.assets import is_sha256

CHUNK = 1 << 20


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        if not is_sha256(sha256):
            raise ValueError(f"not a sha256: {sha256!r}")
        return self.root / sha256

    def exists(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def put_file(self, source: Path) -> tuple[str, int]:
        """Copy `source` in under its hash; returns (sha256, size). Safe to repeat and to race."""
        self.root.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=".incoming-")
        tmp = Path(tmp_name)
        try:
            digest, size = hashlib.sha256(), 0
            with os.fdopen(fd, "wb") as out, source.open("rb") as src:
                while chunk := src.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            sha = digest.hexdigest()
            # rename is atomic: readers see no file or the whole file, never a part.
            os.replace(tmp, self.path(sha))
            return sha, size
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        with tempfile.TemporaryDirectory(dir=self._scratch()) as folder:
            path = Path(folder) / "blob"
            path.write_bytes(data)
            return self.put_file(path)

    def copy_to(self, sha256: str, dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(sha256), dest)
        return dest

    def _scratch(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return self.root
