"""Imported by the warm fork server alone (first of ``warm.PRELOAD``): the server ends at once.

The fork server lives until the driver exits, then shuts its interpreter down: with Dask and
its dependencies imported, tearing down their modules takes a fifth of a second, while the
server still holds the driver's stdout and stderr. Whoever reads the run's output through a
pipe (Valohai's log capture, ``| tee``, a ``subprocess`` with ``capture_output``) waits for
that. The server owns nothing to clean up, so once its exit handlers have run (this one,
registered first, runs last) it flushes its streams and leaves without the teardown.

Nothing else imports this module: in any other process the handler would cut short an exit
that has work to do.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys


def _leave() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):  # closed or missing
            stream.flush()
    os._exit(0)


atexit.register(_leave)
