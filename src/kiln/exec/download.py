"""HTTP(S) downloads for fetch steps: timeouts, bounded retries with
backoff, resuming where the server allows it, and credentials that go only
into request headers.

A download is written to a partial file outside the store's blobs and is
only read by the caller once complete, so a killed or failed transfer is
never visible in the store; the next attempt (or the next build) resumes it
with an HTTP range request.
"""

from __future__ import annotations

# http.client, urllib.request and netrc are imported where a download
# happens: build files describe fetches (``FetchSpec.check`` uses this
# module) far more often than a build downloads anything.
import base64
import os
import posixpath
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kiln import errors

SCHEMES = ("http", "https")
DEFAULT_TIMEOUT = 60.0
DEFAULT_ATTEMPTS = 4
CHUNK = 1 << 20
# Answers worth asking again for; any other 4xx is final for that URL.
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}

Progress = Callable[[str, int, int | None], None]


class DownloadError(errors.KilnError):
    """Every attempt at every URL failed."""


def url_file_name(url: str) -> str:
    """The last segment of the URL's path ("" if it ends in a slash)."""
    return posixpath.basename(urllib.parse.urlsplit(url).path)


def check_url(url: str, where: str) -> None:
    """Refuse URLs Kiln cannot or must not fetch, with a clear reason."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise errors.KilnError(
            f"{where}: unsupported URL scheme {parts.scheme or '(none)'!r} in {url!r}",
            hint="fetch over http:// or https://",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    if parts.username or parts.password:
        raise errors.KilnError(
            f"{where}: the URL carries credentials; they would end up in the step's key",
            hint="declare them with auth=... (a netrc file or environment variables)",
            exit_code=errors.ExitCode.BAD_INPUT,
        )


@dataclass(frozen=True)
class Auth:
    """How a fetch proves who it is, by reference: ``bearer:VAR``,
    ``basic:USER_VAR:PASSWORD_VAR`` or ``netrc``. Only these names are part
    of a step; the values are read when the request is made."""

    spec: str

    @staticmethod
    def parse(spec: str, where: str) -> Auth:
        kind, _, rest = spec.partition(":")
        names = rest.split(":") if rest else []
        ok = (kind == "bearer" and len(names) == 1) or (kind == "basic" and len(names) == 2)
        if not (ok and all(n.isidentifier() for n in names)) and spec != "netrc":
            raise errors.KilnError(
                f"{where}: unknown credential {spec!r}",
                hint="use fetch.bearer('ENV_VAR'), fetch.basic('USER_VAR', 'PASSWORD_VAR') "
                "or fetch.netrc()",
                exit_code=errors.ExitCode.BAD_INPUT,
            )
        return Auth(spec)

    def header(self, url: str) -> str | None:
        """The Authorization header value for ``url`` (None: nothing to send)."""
        kind, _, rest = self.spec.partition(":")
        if kind == "netrc":
            import netrc

            path = os.environ.get("NETRC") or str(Path.home() / ".netrc")
            try:
                entry = netrc.netrc(path).authenticators(urllib.parse.urlsplit(url).hostname or "")
            except FileNotFoundError:
                return None
            except (netrc.NetrcParseError, OSError) as e:
                problem = type(e).__name__  # not its text: that may quote the file
                raise DownloadError(f"cannot read the netrc file {path}: {problem}") from None
            if entry is None:
                return None
            return _basic(entry[0] or "", entry[2] or "")
        values = []
        for name in rest.split(":"):
            value = os.environ.get(name)
            if value is None:
                raise DownloadError(
                    f"the credential variable {name} is not set",
                    hint=f"export {name}=... before building",
                )
            values.append(value)
        return f"Bearer {values[0]}" if kind == "bearer" else _basic(*values)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def download(
    urls: list[str],
    partial_for: Callable[[str], Path],
    *,
    auth: Sequence[Auth] = (),
    timeout: float = DEFAULT_TIMEOUT,
    attempts: int = DEFAULT_ATTEMPTS,
    progress: Progress | None = None,
) -> tuple[str, Path]:
    """Download the first of ``urls`` that works into ``partial_for(url)``;
    returns (url, path). Raises ``DownloadError`` naming each URL's failure."""
    failures = []
    for url in urls:
        try:
            path = partial_for(url)
            _download_one(url, path, auth, timeout, attempts, progress)
            return url, path
        except _Failed as e:
            failures.append(f"{url}: {e}")
    raise DownloadError(
        "could not download " + ("it" if len(urls) > 1 else urls[0]) + "\n  "
        + "\n  ".join(failures),
        hint="check the URL and the network; a mirror list is tried in order",
        exit_code=errors.ExitCode.FAILED,
    )  # fmt: skip


class _Failed(Exception):
    """This URL did not work (after its retries)."""


def _download_one(
    url: str, path: Path, auth: Sequence[Auth], timeout: float, attempts: int,
    progress: Progress | None,
) -> None:  # fmt: skip
    import http.client
    import urllib.error

    last = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(min(0.2 * 2 ** (attempt - 1), 5.0))
        try:
            if _transfer(url, path, auth, timeout, progress):
                return
            last = "the connection closed before the end of the file"
        except urllib.error.HTTPError as e:
            if e.code == 416:  # the partial file is not a prefix of this one
                path.unlink(missing_ok=True)
                last = "HTTP 416: started again"
                continue
            if e.code not in RETRY_STATUS:
                raise _Failed(f"HTTP {e.code} {e.reason}") from None
            last = f"HTTP {e.code} {e.reason}"
        except TimeoutError:
            last = f"no answer within {timeout:g} s"
        except urllib.error.URLError as e:
            reason = e.reason
            if isinstance(reason, TimeoutError):
                last = f"no answer within {timeout:g} s"
            else:
                last = str(getattr(reason, "strerror", None) or reason)
        except (http.client.HTTPException, ConnectionError, OSError) as e:
            last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    raise _Failed(f"{last} ({attempts} attempts)")


def _transfer(
    url: str, path: Path, auth: Sequence[Auth], timeout: float, progress: Progress | None
) -> bool:
    """One request; resumes ``path`` if it holds a partial download. True
    when the whole file arrived."""
    import http.client
    import urllib.request

    have = path.stat().st_size if path.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "kiln-fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    for a in auth:
        value = a.header(url)
        if value is not None:  # never repeated to another host on a redirect
            request.add_unredirected_header("Authorization", value)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = have and response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        done = have
        with open(path, "ab" if resumed else "wb") as out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except http.client.IncompleteRead as e:
                    out.write(e.partial)
                    return False
                if not chunk:
                    break
                out.write(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(url, done, total)
    return total is None or done >= total
