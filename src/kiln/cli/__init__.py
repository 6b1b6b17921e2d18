"""The ``kiln`` command: its entry point, the fast no-op path and the click commands."""
