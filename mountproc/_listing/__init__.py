"""The listing stage: the source crawled into a sorted Parquet listing (serially, over threads or
on the cluster), the test-mode subset, and deterministic shards. No Dask import."""
