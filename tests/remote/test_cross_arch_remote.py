"""Cache hits that cross CPU architectures, through real REAPI servers: what
an x86-64 Kiln pushed, an ARM64 Kiln (emulated) with an empty store builds
without running a step, and the reverse. A native step never crosses: its
key names the host's architecture."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aarch64_helpers import X86_64, build_in_empty_store, copy_example, kiln_on

pytestmark = [pytest.mark.slow, pytest.mark.network]


@pytest.fixture(params=["casd", "buildgrid_cache"])
def server(request: pytest.FixtureRequest):
    return request.getfixturevalue(request.param)


def _push_then_hit(url: str, arm64: Path, first: str, example: str, tmp_path: Path) -> None:
    pythons = {"x86_64": X86_64, "aarch64": arm64}
    second = "aarch64" if first == "x86_64" else "x86_64"
    remote = ("--remote-cache", url)

    root = copy_example(example, tmp_path / first)
    pushed, _ = build_in_empty_store(pythons[first], tmp_path / f"store-{first}", root, *remote)
    steps = pushed["executed"]
    assert steps > 0 and pushed["remote"]["pushed"] == steps

    home, root = tmp_path / f"store-{second}", copy_example(example, tmp_path / second)
    hit, seconds = build_in_empty_store(pythons[second], home, root, *remote)
    print(f"{example}, pushed from {first}, built on {second} from the cache: {seconds:.1f} s")
    assert hit["executed"] == 0
    assert hit["remote_cached"] == steps
    assert hit["remote"]["downloaded_blobs"] > 0
    assert {n: t["digest"] for n, t in hit["targets"].items()} == {
        n: t["digest"] for n, t in pushed["targets"].items()
    }


@pytest.mark.parametrize("first", ["x86_64", "aarch64"])
def test_what_one_architecture_pushed_the_other_builds_without_running_a_step(
    server, arm64: Path, first: str, tmp_path: Path
) -> None:
    _push_then_hit(server.url, arm64, first, "wordcount", tmp_path)


def test_c_compiled_in_wasm_on_x86_64_is_a_hit_on_arm64(casd, arm64: Path, tmp_path: Path) -> None:
    # (The reverse, ARM64 first, builds all of tally under emulation: 90 s
    # more for what wordcount shows both ways and test_cross_arch.py shows
    # for tally's keys.)
    _push_then_hit(casd.url, arm64, "x86_64", "tally", tmp_path)


def test_a_native_step_is_never_a_hit_on_another_architecture(
    casd, arm64: Path, tmp_path: Path
) -> None:
    remote = ("--remote-cache", casd.url)
    root = copy_example("calc", tmp_path / "x86")
    pushed, _ = build_in_empty_store(X86_64, tmp_path / "store-x86", root, *remote)
    assert pushed["executed"] > 0 and pushed["remote"]["pushed"] == pushed["executed"]

    # The same gcc steps asked for on ARM64 are other actions: nothing is
    # taken from the cache. (Under user-mode emulation they then fail to
    # start: the host's bubblewrap cannot run the ARM64 sandbox helper.)
    root = copy_example("calc", tmp_path / "arm")
    proc = kiln_on(arm64, tmp_path / "store-arm", root, "build", "--json", *remote)
    report = json.loads(proc.stdout)
    assert report["remote_cached"] == 0 and report["cached"] == 0
    assert report["executed"] + report["failed"] > 0
