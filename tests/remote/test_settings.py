"""The [remote] settings: addresses, the config table, the environment and
the options on top, the token read by reference; every mistake a clear
error naming where it is."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import load_config
from kiln.errors import ExitCode, KilnError
from kiln.remote.settings import Endpoint, RemoteSettings, from_table, parse_endpoint


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("grpc://127.0.0.1:8980", Endpoint("127.0.0.1:8980", False)),
        ("grpcs://cache.example:443", Endpoint("cache.example:443", True)),
        ("grpc://[::1]:50051", Endpoint("[::1]:50051", False)),
        ("grpc://h:1/", Endpoint("h:1", False)),
    ],
)
def test_addresses(url: str, endpoint: Endpoint) -> None:
    assert parse_endpoint(url, "here") == endpoint
    assert str(endpoint).startswith(url.split(":")[0])


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://h:1", "unknown scheme 'http'"),
        ("h:1", "unknown scheme"),
        ("grpc://h", "needs a host and a port"),
        ("grpc://:80", "needs a host and a port"),
        ("grpc://h:99999", "not a server address"),
        ("grpc://h:1/instance", "more than a host and a port"),
        ("grpc://user@h:1", "more than a host and a port"),
    ],
)
def test_bad_addresses_are_clear_errors(url: str, complaint: str) -> None:
    with pytest.raises(KilnError) as e:
        parse_endpoint(url, "--remote-cache")
    assert complaint in e.value.message and "--remote-cache" in e.value.message
    assert e.value.exit_code == ExitCode.BAD_INPUT and "grpc://HOST:PORT" in (e.value.hint or "")


def test_the_table_read_whole(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[remote]\ncache = "grpc://c:1"\nexec = "grpcs://e:2"\ninstance = "main"\n'
        'ca-cert = "~/ca.pem"\nclient-cert = "/c.pem"\nclient-key = "/c.key"\n'
        'token-file = "/tok"\ndeadline = 5\npush = false\nfallback = true\n'
    )
    settings = load_config(config).remote_settings()
    assert settings.cache == Endpoint("c:1", False) and settings.exec == Endpoint("e:2", True)
    assert settings.instance == "main" and settings.deadline == 5.0
    assert not settings.push and settings.fallback
    assert settings.ca_cert == Path.home() / "ca.pem"
    assert settings.cache_endpoint == settings.cache


@pytest.mark.parametrize(
    ("table", "complaint"),
    [
        ({"cahce": "grpc://c:1"}, "unknown setting 'cahce'"),
        ({"cache": 5}, "cache must be a string"),
        ({"push": "yes"}, "push must be true or false"),
        ({"deadline": 0}, "deadline must be a positive number"),
        ({"deadline": True}, "deadline must be a positive number"),
        ({"token-env": "A", "token-file": "/b"}, "not both"),
        ({"client-cert": "/c.pem"}, "go together"),
    ],
)
def test_table_mistakes_name_the_file(table: dict, complaint: str, tmp_path: Path) -> None:
    with pytest.raises(KilnError) as e:
        from_table(table, tmp_path / "config.toml")
    assert complaint in e.value.message and "config.toml [remote]" in e.value.message


def test_environment_then_options_override_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    base = RemoteSettings(cache=Endpoint("file:1", False), instance="file")
    monkeypatch.setenv("KILN_REMOTE_CACHE", "grpc://env:2")
    monkeypatch.setenv("KILN_REMOTE_INSTANCE", "env")
    from_env = base.overridden()
    assert from_env.cache == Endpoint("env:2", False) and from_env.instance == "env"
    given = base.overridden(cache="grpc://opt:3", instance="", push=False)
    assert given.cache == Endpoint("opt:3", False) and given.instance == "" and not given.push
    monkeypatch.delenv("KILN_REMOTE_CACHE")
    monkeypatch.delenv("KILN_REMOTE_INSTANCE")
    assert base.overridden() == base
    assert not RemoteSettings().enabled and RemoteSettings(exec=base.cache).cache_endpoint


def test_the_token_is_read_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_TOKEN", "abc\n")
    assert RemoteSettings(token_env="MY_TOKEN").token() == "abc"
    monkeypatch.delenv("MY_TOKEN")
    with pytest.raises(KilnError, match="MY_TOKEN is not set"):
        RemoteSettings(token_env="MY_TOKEN").token()
    token = tmp_path / "token"
    token.write_text("xyz\n")
    assert RemoteSettings(token_file=token).token() == "xyz"
    with pytest.raises(KilnError, match="cannot read the remote token file"):
        RemoteSettings(token_file=tmp_path / "missing").token()
    assert RemoteSettings().token() is None
