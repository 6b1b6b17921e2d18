"""Claimed names: what a live process writes is never reaped; what a killed
one left is."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from kiln.system.claims import Claim, reap

OWNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from kiln.system.claims import Claim
    claim = Claim(Path(sys.argv[1]))
    claim.path.mkdir()
    (claim.path / "file").write_text("x")
    claim.path.chmod(0o555)  # as output folders are
    claim.sibling("old").mkdir()
    print(claim.path.name, flush=True)
    time.sleep(60)
    """
)


def test_a_live_claim_stays_and_a_dead_ones_leftovers_go(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        name = owner.stdout.readline().strip()
        assert reap(tmp_path) == 0 and (tmp_path / name / "file").exists()
    finally:
        owner.kill()
        owner.wait()
    assert reap(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_release_removes_what_the_claim_names(tmp_path: Path) -> None:
    claim = Claim(tmp_path)
    claim.path.write_text("scratch")
    claim.sibling("marker").write_text("m")
    other = Claim(tmp_path)
    claim.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == [other.path.name + ".lock"]
    other.release()
    assert list(tmp_path.iterdir()) == []
