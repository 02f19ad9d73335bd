"""The Dask side, and the only package that imports ``dask`` or ``distributed``: a client (an
embedded cluster, an existing scheduler, or the caller's), worker checks, the task stream, and
tars brought from workers' own disks."""
