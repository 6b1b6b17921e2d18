"""The resident server that makes commands start warm, and its client."""
