"""`kiln cc`: compiler invocations of other build systems as memoized steps."""
