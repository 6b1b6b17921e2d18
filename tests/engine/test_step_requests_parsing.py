"""What the build's step service accepts as a requested step: only pure
steps (wasm, or native with the requester's own tools), well formed; every
refusal says what is wrong."""

from __future__ import annotations

import pytest

from kiln.engine.nested import NestedStep
from kiln.errors import KilnError
from kiln.model.digest import Digest

ROOT = str(Digest.of_bytes(b"a tree"))


def _identity(tools: list[str], where: str) -> str:
    return "identity-of-" + ",".join(tools)


def _parse(**fields):
    request = {"executor": "native", "argv": ["gcc", "-c", "a.c"], "input_root": ROOT,
               "tools": ["gcc"], **fields}  # fmt: skip
    return NestedStep.parse(request, ["gcc", "make", "sh"], _identity)


def test_a_native_step_of_the_requesters_tools() -> None:
    step = _parse(outputs=["a.o"], working_directory="src/", env={"LANG": "C"})
    platform = dict(step.spec.platform)
    assert platform["tool-names"] == "gcc" and platform["tools"] == "identity-of-gcc"
    assert step.spec.working_directory == "src" and step.spec.outputs == ("a.o",)
    assert "recursive" not in platform
    assert dict(_parse(recursive=True).spec.platform)["recursive"] == "1"


def test_a_wasm_step_carries_its_limits_in_its_key() -> None:
    step = _parse(executor="wasm", argv=["tool.wasm"], limits={"fuel": 1000})
    assert dict(step.spec.platform)["fuel"] == "1000"


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"executor": "fetch"}, "only pure steps"),
        ({"executor": "unpack"}, "only pure steps"),
        ({"tools": ["curl"]}, "curl are not among the requesting step's own"),
        ({"argv": []}, "argv must name a program"),
        ({"argv": "gcc -c a.c"}, "argv must be a list of strings"),
        ({"env": {"A": 1}}, "env must map names to strings"),
        ({"limits": {"memory_mib": -1}}, "limit memory_mib must be a positive integer"),
        ({"limits": {"pids": True}}, "limit pids must be a positive integer"),
        ({"input_root": "nope"}, "input_root must be a digest"),
        ({"working_directory": "../up"}, "working_directory must be a relative path"),
        ({"working_directory": "/abs"}, "working_directory must be a relative path"),
        ({"outputs": ["../escape"]}, "refused step request"),
    ],
)
def test_what_is_refused(fields: dict, says: str) -> None:
    with pytest.raises(KilnError, match="refused step request") as caught:
        _parse(**fields)
    assert says in caught.value.message
