"""Executors: turn an action and its input root into an ``ActionResult``."""
