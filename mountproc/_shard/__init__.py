"""_shard."""
