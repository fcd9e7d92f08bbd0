"""A WeasyPrint URL fetcher that serves only regular files inside one template folder.

WeasyPrint fetches resources for ``<img>``, stylesheets, CSS ``url()``, ``@font-face``, SVG ``<image>`` and
``<link rel=attachment>`` through the document's ``url_fetcher``. Its default fetcher speaks file, http(s),
ftp and data, honours proxies and follows redirects: one injected URL in customer text would be a local-file
read or an SSRF with read-back. Templates autoescape all data, so no customer text should ever become a URL;
this fetcher is the second wall: no network, no redirects, nothing outside the template folder (symlinks
resolved first), nothing that is not a small regular file. Every attempt, allowed or not, is counted so
tests can assert that rendering untrusted text fetched nothing.
"""

from __future__ import annotations

import mimetypes
import os
import stat
import threading
from pathlib import Path
from urllib.parse import unquote, urlsplit

from weasyprint.urls import URLFetcher, URLFetcherResponse, path2url

MAX_ASSET_BYTES = 5 * 1024 * 1024


class TemplateFolderFetcher(URLFetcher):
    """Serve ``file:`` URLs of regular files under ``root`` (after resolving symlinks); refuse all else.

    A refusal raises ``ValueError``; WeasyPrint then skips the resource and logs it.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(allowed_protocols=("file",), allow_redirects=False, timeout=5)
        self.root = Path(os.path.realpath(root))
        if not self.root.is_dir():
            raise ValueError(f"template folder {root} does not exist")
        self.base_url = path2url(str(self.root) + os.sep)
        self._lock = threading.Lock()
        self.attempts: list[str] = []
        self.served: list[str] = []

    def resolve(self, url: str) -> Path:
        """The file a URL names, or ``ValueError`` when it is not a regular file inside the folder."""
        parts = urlsplit(url)
        if parts.scheme.lower() != "file":
            raise ValueError(f"refused non-file URL {url[:200]!r}")
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"refused remote file URL {url[:200]!r}")
        raw_path = unquote(parts.path)
        if "\x00" in raw_path:
            raise ValueError("refused URL with a NUL byte")
        path = Path(os.path.realpath(raw_path))
        if os.path.commonpath([str(self.root), str(path)]) != str(self.root):
            raise ValueError(f"refused file outside the template folder: {url[:200]!r}")
        info = path.stat()  # FileNotFoundError is an OSError: WeasyPrint reports and skips it
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"refused non-regular file {url[:200]!r}")
        if info.st_size > MAX_ASSET_BYTES:
            raise ValueError(f"refused file over {MAX_ASSET_BYTES} bytes: {url[:200]!r}")
        return path

    def fetch(self, url: str, headers: dict[str, str] | None = None) -> URLFetcherResponse:
        with self._lock:
            self.attempts.append(url)
        path = self.resolve(url)
        body = path.read_bytes()
        if len(body) > MAX_ASSET_BYTES:  # it grew between stat and read
            raise ValueError(f"refused file over {MAX_ASSET_BYTES} bytes: {url[:200]!r}")
        with self._lock:
            self.served.append(url)
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return URLFetcherResponse(path2url(str(path)), body, {"Content-Type": content_type})
