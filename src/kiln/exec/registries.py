"""Finding a package's download URL through a registry's ordinary index:
the npm registry's package documents and PyPI's simple index (PEP 503 HTML
or PEP 691 JSON). These requests are part of the fetch step, so the network
is still used only there; the file itself is checked against the pin."""

from __future__ import annotations

import html.parser
import json
import re
import tempfile
import urllib.parse
from pathlib import Path

from kiln.exec.download import DownloadError, download
from kiln.exec.specs import Auth


def _get(url: str, auth: list[Auth], timeout: float, attempts: int) -> bytes:
    with tempfile.TemporaryDirectory(prefix="kiln-index-") as tmp:
        _, path = download(
            [url], lambda _: Path(tmp) / "index", auth=auth, timeout=timeout, attempts=attempts
        )
        return path.read_bytes()


def npm_tarball(
    registry: str, name: str, version: str, auth: list[Auth], timeout: float, attempts: int
) -> str:
    """The tarball URL of ``name@version`` in the registry's package document."""
    url = f"{registry.rstrip('/')}/{name.replace('/', '%2f')}"
    try:
        document = json.loads(_get(url, auth, timeout, attempts))
        versions = document["versions"]
    except (ValueError, KeyError, TypeError):
        raise DownloadError(f"{url} is not an npm package document") from None
    if version not in versions:
        known = ", ".join(sorted(versions)[-5:])
        raise DownloadError(f"npm package {name} has no version {version} (some: {known})")
    try:
        return urllib.parse.urljoin(url, versions[version]["dist"]["tarball"])
    except (KeyError, TypeError):
        raise DownloadError(f"{url}: version {version} has no dist.tarball") from None


def normalized(name: str) -> str:
    """A project name as the simple index spells it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


class _Links(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._text = ""

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.links.append((self._text.strip(), self._href))
            self._href = None


def pypi_file(
    index: str, name: str, version: str, filename: str, auth: list[Auth], timeout: float,
    attempts: int,
) -> str:  # fmt: skip
    """The URL of ``filename`` on the project's page of a simple index."""
    if version not in filename:
        raise DownloadError(f"{filename} is not a file of {name} version {version}")
    page = f"{index.rstrip('/')}/{normalized(name)}/"
    body = _get(page, auth, timeout, attempts)
    files: dict[str, str] = {}
    try:
        document = json.loads(body)
        files = {f["filename"]: f["url"] for f in document.get("files", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        parser = _Links()
        parser.feed(body.decode(errors="replace"))
        files = {text: href for text, href in parser.links}
    if filename not in files:
        raise DownloadError(f"{page} lists no file {filename} ({len(files)} files listed)")
    return urllib.parse.urldefrag(urllib.parse.urljoin(page, files[filename])).url
