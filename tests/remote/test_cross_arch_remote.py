"""Cache hits that cross CPU architectures, through real REAPI servers: what
an x86-64 Kiln pushed, an ARM64 Kiln (emulated) with an empty store builds
without running a step, and the reverse. A native step never crosses: its
key names the host's architecture."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from aarch64_helpers import aarch64_python, build_json, kiln_on

pytestmark = [pytest.mark.slow, pytest.mark.network]

EXAMPLES = Path(__file__).parents[2] / "examples"
X86_64 = Path(sys.executable)


@pytest.fixture(scope="module")
def arm64(request: pytest.FixtureRequest) -> Path:
    return aarch64_python(Path(request.config.cache.mkdir("aarch64")).resolve())


@pytest.fixture(params=["casd", "buildgrid_cache"])
def server(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def _copy(example: str, folder: Path) -> Path:
    root = folder / example
    shutil.copytree(EXAMPLES / example, root, ignore=shutil.ignore_patterns("kiln-out"))
    return root


@pytest.mark.parametrize("first", ["x86_64", "aarch64"])
def test_what_one_architecture_pushed_the_other_builds_without_running_a_step(
    server, arm64: Path, first: str, tmp_path: Path
) -> None:
    pythons = {"x86_64": X86_64, "aarch64": arm64}
    second = "aarch64" if first == "x86_64" else "x86_64"
    remote = ("--remote-cache", server.url)

    pushed = build_json(
        pythons[first], tmp_path / f"store-{first}", _copy("wordcount", tmp_path / first), *remote
    )
    steps = pushed["executed"]
    assert steps > 0 and pushed["remote"]["pushed"] == steps

    root = _copy("wordcount", tmp_path / second)
    hit = build_json(pythons[second], tmp_path / f"store-{second}", root, *remote)
    assert hit["executed"] == 0
    assert hit["remote_cached"] == steps
    assert hit["remote"]["downloaded_blobs"] > 0
    assert {n: t["digest"] for n, t in hit["targets"].items()} == {
        n: t["digest"] for n, t in pushed["targets"].items()
    }
    assert (root / "kiln-out" / "report" / "report.txt").is_file()


def test_a_native_step_is_never_a_hit_on_another_architecture(
    casd, arm64: Path, tmp_path: Path
) -> None:
    remote = ("--remote-cache", casd.url)
    pushed = build_json(X86_64, tmp_path / "store-x86", _copy("calc", tmp_path / "x86"), *remote)
    assert pushed["executed"] > 0 and pushed["remote"]["pushed"] == pushed["executed"]

    # The same gcc steps asked for on ARM64 are other actions: nothing is
    # taken from the cache. (Under user-mode emulation they then fail to
    # start: the host's bubblewrap cannot run the ARM64 sandbox helper.)
    root = _copy("calc", tmp_path / "arm")
    proc = kiln_on(arm64, tmp_path / "store-arm", root, "build", "--json", *remote)
    report = json.loads(proc.stdout)
    assert report["remote_cached"] == 0 and report["cached"] == 0
    assert report["executed"] + report["failed"] > 0
