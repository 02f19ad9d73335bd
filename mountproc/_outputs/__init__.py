"""_outputs."""
