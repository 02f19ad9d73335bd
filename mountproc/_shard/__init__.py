"""One shard on a worker: reading ahead, the transform under a watchdog, the WebDataset sample
format and the tar. Plain picklable data in and out; never imports ``dask`` or ``distributed``
(a test enforces it), so it runs the same under a test, a local cluster or a remote worker."""
