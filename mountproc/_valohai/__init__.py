"""Valohai: its execution environment (paths, ``parameters.json``, distributed tasks), and the
step ``mountproc yaml`` generates for a job."""
