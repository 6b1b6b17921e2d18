"""Kiln's data model, REAPI's: digests, Merkle trees of directories, actions."""
