"""Go's build cache (GOCACHEPROG) served from Kiln's store."""
