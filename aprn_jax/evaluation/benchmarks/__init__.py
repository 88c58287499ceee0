"""One module per benchmark family; each registers its evaluators (`registry`) on import."""
