"""The build engine: build files, targets, the scheduler and build history.

- ``loader``: finds and loads ``kilnfile.py``;
- ``rules``: the API build files use (re-exported as ``kiln.build``);
- ``scheduler``: runs steps (memoized, deduplicated, ``-j`` bounded);
- ``build``: one build, from targets to the output folder;
- ``sources``, ``inputs``, ``values``: project files, input trees, handles;
- ``history``: what builds did, for ``kiln why/show/log/trace``;
- ``retention``: what the history keeps, and pruning the rest.
"""
