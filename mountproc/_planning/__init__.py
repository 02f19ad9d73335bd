"""``mountproc plan``: list and shard as a run would, time a few files, estimate the run."""
