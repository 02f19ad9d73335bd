"""_cluster."""
