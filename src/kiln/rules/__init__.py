"""Rule libraries for build files, built on the core rules of ``kiln.engine.rules``."""
