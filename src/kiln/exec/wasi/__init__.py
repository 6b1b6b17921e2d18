"""A deterministic WASI preview 1 implemented by Kiln, not by the engine.

The guest sees a virtual file system (the action's input tree, read-only;
its declared outputs and ``/tmp``, writable, in memory), virtual clocks, a
seeded random stream, sorted directory listings, fixed timestamps and
synthetic inode numbers. Everything it can observe is a function of the
action, so every run on every host gives the same bytes.
"""
