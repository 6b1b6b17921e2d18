"""Cache hits that cross CPU architectures, through real REAPI servers: what
an x86-64 Kiln pushed, an ARM64 Kiln (emulated) with an empty store builds
without running a step, and the reverse. (That a native step never crosses
is in tests/system/test_cross_arch.py: its key names the architecture.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from aarch64_helpers import X86_64, build_in_empty_store, copy_example

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
