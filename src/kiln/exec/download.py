"""HTTP(S) downloads for fetch steps: timeouts, bounded retries with
backoff, resuming where the server allows it, and credentials that go only
into request headers.

A download is written to a partial file outside the store's blobs and is
only read by the caller once complete, so a killed or failed transfer is
never visible in the store; the next attempt (or the next build) resumes it
with an HTTP range request.
"""

from __future__ import annotations

import base64
import http.client
import netrc
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from kiln import errors
from kiln.exec.specs import Auth

DEFAULT_TIMEOUT = 60.0
DEFAULT_ATTEMPTS = 4
CHUNK = 1 << 20
# Answers worth asking again for; any other 4xx is final for that URL.
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}

Progress = Callable[[str, int, int | None], None]


class DownloadError(errors.KilnError):
    """Every attempt at every URL failed."""


def auth_header(auth: Auth, url: str) -> str | None:
    """The Authorization header value ``auth`` gives for ``url`` (None:
    nothing to send), from the environment or the netrc file now."""
    kind, _, rest = auth.spec.partition(":")
    if kind == "netrc":
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
    have = path.stat().st_size if path.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "kiln-fetch"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    for a in auth:
        value = auth_header(a, url)
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
