"""``fetch`` in build files: downloads pinned by digest.

    from kiln.build import fetch

    src = await fetch.url("https://example.org/zlib-1.3.tar.gz",
                          "https://mirror.example/zlib-1.3.tar.gz",
                          digest="sha256:...", unpack=True, strip=1)

Each call is one fetch step (``kiln.exec.fetch``): it runs at most once per
store, since its result is kept by key, and its value is a ``File`` (the
download as is) or, with ``unpack=True`` or for ``git``, a ``Tree``. A call
without ``digest`` is refused unless the build runs with
``--allow-unpinned``, and then it fails after downloading, printing the
digest to pin.
"""

from __future__ import annotations

import posixpath
from collections.abc import Sequence

from kiln import errors
from kiln.engine.rules import _context, _target, _where
from kiln.engine.values import File, Tree
from kiln.exec.specs import UNPINNED, FetchSpec, parse_pin, url_file_name

# The public registries. The fetch machinery itself (HTTP, archives) is
# imported only when a fetch step runs (``kiln.exec.fetch``).
NPM_REGISTRY = "https://registry.npmjs.org"
PYPI_INDEX = "https://pypi.org/simple"

__all__ = ["basic", "bearer", "git", "netrc", "npm", "pypi", "url"]


def bearer(variable: str) -> str:
    """Send ``Authorization: Bearer $variable`` (read when the fetch runs)."""
    return f"bearer:{variable}"


def basic(user_variable: str, password_variable: str) -> str:
    """HTTP basic authentication from two environment variables."""
    return f"basic:{user_variable}:{password_variable}"


def netrc() -> str:
    """The credentials of the URL's host in ``$NETRC`` or ``~/.netrc``."""
    return "netrc"


async def url(
    *urls: str,
    digest: str | None = None,
    unpack: bool = False,
    strip: int = 0,
    name: str | None = None,
    auth: str | Sequence[str] = (),
) -> File | Tree:
    """Download the first of ``urls`` (mirrors, tried in order) that works.
    ``digest`` pins the file (``unpack=False``) or the unpacked tree, with
    its first ``strip`` path components removed."""
    where = _where()
    if not urls:
        raise _bad(where, "fetch.url() needs at least one URL")
    default = url_file_name(urls[0]) or "download"
    spec = FetchSpec(
        "url", "tree" if unpack else "file", _pin(digest, where), name or default,
        tuple(urls), strip=strip, auth=_auth(auth),
    )  # fmt: skip
    return await _run(spec, where)


async def npm(
    package: str,
    version: str,
    *,
    digest: str | None = None,
    unpack: bool = False,
    registry: str = NPM_REGISTRY,
    auth: str | Sequence[str] = (),
) -> File | Tree:
    """An npm package's tarball, found through the registry's package
    document; ``digest`` may be the lock file's ``integrity`` string."""
    where = _where()
    default = f"{package.rsplit('/', 1)[-1]}-{version}" + ("" if unpack else ".tgz")
    spec = FetchSpec(
        "npm", "tree" if unpack else "file", _pin(digest, where), default, (registry,),
        package=package, version=version, strip=1 if unpack else 0, auth=_auth(auth),
    )  # fmt: skip
    return await _run(spec, where)


async def pypi(
    package: str,
    version: str,
    filename: str,
    *,
    digest: str | None = None,
    unpack: bool = False,
    index: str = PYPI_INDEX,
    auth: str | Sequence[str] = (),
) -> File | Tree:
    """One file of a Python package release, found on the simple index."""
    where = _where()
    spec = FetchSpec(
        "pypi", "tree" if unpack else "file", _pin(digest, where), filename, (index,),
        package=package, version=version, filename=filename, auth=_auth(auth),
    )  # fmt: skip
    return await _run(spec, where)


async def git(repository: str, rev: str, *, digest: str | None = None, name: str = "") -> Tree:
    """The files of ``repository`` at commit (or ref) ``rev``, without .git."""
    where = _where()
    default = posixpath.basename(repository.rstrip("/")).removesuffix(".git") or "checkout"
    spec = FetchSpec("git", "tree", _pin(digest, where), name or default, (repository,), rev=rev)
    value = await _run(spec, where)
    assert isinstance(value, Tree)
    return value


def _pin(digest: str | None, where: str) -> str:
    if digest is not None:
        return parse_pin(digest, where)
    if not _context("fetch").allow_unpinned:
        raise errors.KilnError(
            f"{where}: this fetch has no digest, so Kiln cannot check what arrives",
            hint="pin it with digest=... (`kiln prefetch URL` prints it), or build once with "
            "--allow-unpinned to download it and be shown the digest",
            exit_code=errors.ExitCode.BAD_INPUT,
        )
    return UNPINNED


def _auth(auth: str | Sequence[str]) -> tuple[str, ...]:
    return (auth,) if isinstance(auth, str) else tuple(auth)


def _bad(where: str, message: str) -> errors.KilnError:
    return errors.KilnError(f"{where}: {message}", exit_code=errors.ExitCode.BAD_INPUT)


async def _run(spec: FetchSpec, where: str) -> File | Tree:
    spec.check(where)
    ctx = _context("fetch")
    result = await ctx.run_step(
        _target.get(),
        where,
        kind="fetch",
        argv=spec.argv(),
        inputs=[],
        outputs=[spec.name],
        env={},
        platform=spec.platform(),
        description=f"fetch {spec.name}",
    )
    value = result.outputs[spec.name]
    assert isinstance(value, File | Tree)
    return value
