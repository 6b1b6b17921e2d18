"""``python -m kiln``: the ``kiln`` command, for an interpreter without the
console script (e.g. another architecture's, running this checkout's ``src``)."""

from kiln.cli.entry import main

main()
