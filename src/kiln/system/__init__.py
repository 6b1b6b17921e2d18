"""Operating-system helpers: descriptor-relative file access, libc calls, claims."""
