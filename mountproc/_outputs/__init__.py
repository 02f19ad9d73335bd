"""What a run leaves: the on-disk layout, publishing into outputs, shard records, the manifest,
the summary, the wids index, ``valohai.metadata.jsonl``, resume, and ``verify``."""
