"""HTTP servers on 127.0.0.1 for the fetch tests: files (with ranges), a
connection that drops once, credentials, an npm registry and a PyPI simple
index, plus sockets that refuse or never answer."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import io
import json
import socket
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field


def tarball(members: dict[str, bytes | str], prefix: str = "pkg/") -> bytes:
    """A .tar.gz; bytes values are files, str values symlink targets."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(prefix + name)
            info.mtime = 1234567
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size, info.mode = len(content), 0o755 if name.endswith(".sh") else 0o644
                tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


@dataclass
class Served:
    files: dict[str, bytes] = field(default_factory=dict)
    token: str = ""  # required as a bearer token for paths under /private/
    drop_once: set[str] = field(default_factory=set)  # paths whose first answer is cut short
    requests: list[tuple[str, str | None, str | None]] = field(default_factory=list)
    base: str = ""

    def sha256(self, path: str) -> str:
        return "sha256:" + hashlib.sha256(self.files[path]).hexdigest()


def _handler(served: Served) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            served.requests.append(
                (path, self.headers.get("Range"), self.headers.get("Authorization"))
            )
            if path.startswith("/private/") and (
                self.headers.get("Authorization") != f"Bearer {served.token}"
            ):
                self.send_error(401)
                return
            body = served.files.get(path)
            if body is None:
                self.send_error(404)
                return
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and rng.endswith("-"):
                start = int(rng[6:-1])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            if path in served.drop_once:
                served.drop_once.discard(path)
                self.wfile.write(body[start : start + (len(body) - start) // 2])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(body[start:])

    return Handler


@contextlib.contextmanager
def http_server(served: Served) -> Iterator[Served]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(served))
    served.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """A URL whose server accepts connections and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/never"
    finally:
        sock.close()


def refused_url() -> str:
    """A URL on a port where nothing listens."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/dead"


def npm_registry(served: Served, name: str, version: str, tgz: bytes) -> str:
    """Serve ``name@version`` as an npm registry would; returns the registry URL."""
    tar_path = f"/npm/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"
    served.files[tar_path] = tgz
    document = {
        "name": name,
        "versions": {version: {"dist": {"tarball": served.base + tar_path}}},
    }
    served.files[f"/npm/{name.replace('/', '%2f')}"] = json.dumps(document).encode()
    return served.base + "/npm"


def pypi_index(served: Served, project: str, files: dict[str, bytes]) -> str:
    """A PEP 503 simple index page for ``project``; returns the index URL."""
    links = []
    for filename, content in files.items():
        served.files[f"/packages/{filename}"] = content
        digest = hashlib.sha256(content).hexdigest()
        links.append(f'<a href="../../packages/{filename}#sha256={digest}">{filename}</a><br/>')
    page = "<!DOCTYPE html><html><body>" + "\n".join(links) + "</body></html>"
    served.files[f"/simple/{project}/"] = page.encode()
    return served.base + "/simple"
