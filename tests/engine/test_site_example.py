"""examples/site: a static-site generator in C whose pages are rendered by
memoized calls from one wasm step into a reactor (render.wasm), both built
by clang inside WebAssembly. Editing one page runs the step again but only
that page's call; the other pages' calls are answered from the cache."""

from __future__ import annotations

import uuid

import pytest
from engine_helpers import build, c_store_fixture, ran  # noqa: F401 (the c_store fixture)

from conftest import copy_example
from kiln.engine.check import check_engines
from kiln.exec.node import find_node
from kiln.exec.wasm_calls import calls_of
from kiln.model.digest import Digest

# The first run downloads @yowasp/clang from registry.npmjs.org.
pytestmark = pytest.mark.network

def _calls(report) -> list[dict]:
    """The memoized calls of the build's sitegen step (it ran or not)."""
    [step] = [s for s in report.steps if s.description == "sitegen"]
    assert step.result is not None
    return calls_of(step.result)


def test_editing_one_page_runs_only_its_render_call(c_store, tmp_path, monkeypatch) -> None:
    root = copy_example("site", tmp_path, monkeypatch)
    pages = sorted((root / "pages").glob("*.md"))
    assert 6 <= len(pages) <= 8
    # The store is kept between runs: a line unique to this run in every page
    # makes every render call new to it (the programs themselves may be cached).
    run_id = uuid.uuid4()
    for page in pages:
        page.write_text(page.read_text() + f"\nBuilt by run {run_id}.\n")

    first = build(c_store, root, "site")
    assert first.ok, first.errors
    assert "site: sitegen" in ran(first)
    calls = _calls(first)
    assert len(calls) == len(pages)
    assert all(c["ran"] and c["status"] == 0 and c["export"] == "render" for c in calls)
    assert {c["input"] for c in calls} == {str(Digest.of_bytes(p.read_bytes())) for p in pages}
    assert first.calls() == {"ran": len(pages), "cached": 0}

    out = root / "kiln-out" / "site"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["index.html", *(p.stem + ".html" for p in pages)]
    )
    quick = (out / "03-quick-start.html").read_text()
    for markup in [
        "<title>Quick start</title>",
        "<h1>Quick start</h1>",
        "<h2>Reading the output</h2>",
        "<li><code>tidewater brest 2024-03-10</code> prints the day's high and low waters</li>",
        "in metres above <em>chart datum</em>, the level",
        "ranges are at their <strong>largest</strong>.</p>",
        f"<p>Built by run {run_id}.</p>",
    ]:
        assert markup in quick, markup
    stations = (out / "05-stations.html").read_text()
    assert '<li><a href="https://tidesandcurrents.noaa.gov">NOAA Tides and Currents</a>' in stations
    index = (out / "index.html").read_text()
    assert '<li><a href="03-quick-start.html">Quick start</a></li>' in index
    assert index.index("Introduction") < index.index("Quick start") < index.index("Changelog")

    edited = root / "pages" / "04-configuration.md"
    edited.write_text(edited.read_text() + "\nThe file is read *once*, at start.\n")
    second = build(c_store, root, "site")
    assert second.ok, second.errors
    assert ran(second) == ["site: sitegen"]
    calls = _calls(second)
    assert len(calls) == len(pages)
    [again] = [c for c in calls if c["ran"]]
    assert again["input"] == str(Digest.of_bytes(edited.read_bytes()))
    assert second.calls() == {"ran": 1, "cached": len(pages) - 1}
    assert "is read <em>once</em>, at start." in (out / "04-configuration.html").read_text()
    assert (out / "03-quick-start.html").read_text() == quick

    third = build(c_store, root, "site")
    assert third.ok, third.errors
    assert ran(third) == []
    assert third.calls() == {"ran": 0, "cached": 0}

    # The second engine gives the very same site (Node.js runs the calls itself).
    if find_node() is not None:
        [sitegen] = [s for s in second.steps if s.description == "sitegen"]
        assert check_engines(c_store, sitegen.key).identical
