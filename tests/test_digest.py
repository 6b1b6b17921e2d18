import hashlib
import io
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kiln.errors import ExitCode, KilnError
from kiln.model import digest as digest_mod
from kiln.model.digest import EMPTY, Digest, hash_stream


def test_printed_one_way_and_parsed_back() -> None:
    d = Digest.of_bytes(b"hello\n")
    assert str(d) == hashlib.sha256(b"hello\n").hexdigest() + "/6"
    assert Digest.parse(str(d)) == d
    assert Digest.parse(str(d).upper().replace("/6", "/6")) == d


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("abc", "missing '/<size>'"),
        ("abc/12", "64 hex characters"),
        ("g" * 64 + "/1", "64 hex characters"),
        ("a" * 64 + "/-1", "non-negative integer"),
        ("a" * 64 + "/x", "non-negative integer"),
        ("a" * 64 + "/\u0663", "non-negative integer"),  # an Arabic-Indic three
        ("a" * 64 + "/1\u00b2", "non-negative integer"),  # a superscript two
        ("a" * 64 + "/\uff11", "non-negative integer"),  # a fullwidth one
    ],
)
def test_malformed_digest_is_a_clear_error(text: str, fragment: str) -> None:
    with pytest.raises(KilnError) as info:
        Digest.parse(text)
    assert fragment in str(info.value)
    assert info.value.exit_code == ExitCode.BAD_INPUT
    assert "hint" in info.value.render()


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        Digest("A" * 64, 1)
    with pytest.raises(ValueError):
        Digest("a" * 64, -1)
    assert Digest.of_bytes(b"") == EMPTY


@given(st.binary(max_size=5000))
def test_stream_hash_equals_hashlib(data: bytes) -> None:
    assert hash_stream(io.BytesIO(data)) == Digest(hashlib.sha256(data).hexdigest(), len(data))


def test_large_file_uses_pipelined_reader_and_agrees(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(digest_mod, "PIPELINE_THRESHOLD", 1 << 20)
    data = bytes(range(256)) * (12 << 12)  # 12 MiB, not a multiple of the chunk
    data += b"tail"
    path = tmp_path / "big"
    path.write_bytes(data)
    assert Digest.of_file(path) == Digest(hashlib.sha256(data).hexdigest(), len(data))


def test_message_digest_is_of_canonical_bytes() -> None:
    from kiln.model.reapi import Directory, FileNode

    msg = Directory(files=[FileNode(name="a", digest=EMPTY.to_proto())])
    assert Digest.of_message(msg) == Digest.of_bytes(msg.SerializeToString(deterministic=True))
