"""_mounts."""
