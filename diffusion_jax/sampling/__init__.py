"""Sample sets: where their conditions come from, batched sampling, their files."""
