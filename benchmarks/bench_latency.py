"""A network with real latency: sshfs reaching sshd through ``relay.py`` (0.5 ms each way).

Loopback sshfs has no latency; NFS across a data centre has about 1 ms per round trip. Here
ssh's ``ProxyCommand`` is ``benchmarks/relay.py``, which holds every chunk 0.5 ms in each
direction (a round trip through it measures 1.2-1.4 ms). Three rows:

* end to end: the ``multiprocessing.Pool`` script against ``mountproc run``, both on the
  relayed mount (latency hidden means several reads in flight, overlapped with decoding);
* latency hidden: ``mountproc run`` on the relayed mount against ``mountproc run`` on a plain
  sshfs mount of the same files (the same runs: three sides take turns going first);
* listing: mountproc's listing against ``find -type f`` on the relayed mount (``bench_listing``).

sshfs keeps its default caches (``dir_cache=yes``, 20 s; the kernel's attributes and names 1 s),
as an NFS client caches attributes (``acregmin``, ``acdirmin``) and fills them from READDIRPLUS:
a stat right after a directory was read costs no round trip on either. Every timed run gets a
fresh mount, so that no run inherits another's caches; the exported files are evicted from the
page cache before every run (the server reads its disk).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks import bench_listing, relay
from benchmarks.bench_pool import count_images, pool_command
from benchmarks.common import (
    Comparison,
    Config,
    at_most,
    cache_note,
    camera_jpegs,
    evict,
    fresh_dir,
    mountproc_run,
    recording_errors,
    run_timeout,
    same_samples,
    sshfs_unavailable,
    subprocess_side,
    tar_members,
    timed,
    warm_libraries,
)
from benchmarks.common import _netfs as tests_netfs
from benchmarks.trees import LISTING, SMOKE, ensure_tree

log = logging.getLogger(__name__)

DELAY_MS = 0.5
WHERE = f"sshfs with {DELAY_MS:g} ms latency each way"
E2E_NAME, E2E_TARGET = f"end to end, {WHERE}", 0.7
HIDDEN_NAME, HIDDEN_TARGET = f"latency hidden, {WHERE} vs none", 1.15
LISTING_TARGET = 0.5  # at least 2x faster than find
POOL, OURS = "multiprocessing.Pool script", "mountproc run"


def relay_option(cfg: Config, delay_ms: float = DELAY_MS) -> str:
    """The sshfs option that sends ssh through the relay (no comma: sshfs splits on them)."""
    program = " ".join(relay.command(cfg.work / "bin")[0])
    return f"ProxyCommand={program} --delay-ms {delay_ms:g} %h %p"


@contextlib.contextmanager
def relayed_mount(cfg: Config, export: Path, name: str, delay_ms: float | None) -> Iterator[Path]:
    """``export`` mounted read-only by sshfs over an sshd on 127.0.0.1, through the relay with
    ``delay_ms`` each way (None: directly); yields the mount point, unmounts on exit."""
    netfs = tests_netfs()
    extra = [] if delay_ms is None else [relay_option(cfg, delay_ms)]
    control = fresh_dir(cfg.work / "sshfs" / name)
    mountpoint = cfg.work / "mnt" / name
    with netfs.SshfsMount.start(export, mountpoint, control, extra_options=extra) as mount:
        yield Path(mount.mountpoint)


def run(cfg: Config) -> list[Comparison]:
    """The three rows, or each skipped with the reason when sshfs cannot run here."""
    e2e = Comparison(E2E_NAME, POOL, OURS, target=f"ratio <= {E2E_TARGET:g}")
    e2e.check = at_most(E2E_TARGET)
    hidden = Comparison(HIDDEN_NAME, f"{OURS}, no latency", f"{OURS}, {DELAY_MS:g} ms")
    hidden.target, hidden.check = f"ratio <= {HIDDEN_TARGET:g}", at_most(HIDDEN_TARGET)
    spec = SMOKE if cfg.smoke else LISTING
    listing_name = f"listing, {WHERE}, {spec.files:,} files"
    reason = sshfs_unavailable(cfg)
    if reason is not None:
        log.warning("skipping the latency benchmarks: %s", reason)
        listing = Comparison(listing_name, bench_listing.FIND, bench_listing.OURS)
        for cmp in (e2e, hidden, listing):
            cmp.skipped = reason
        return [e2e, hidden, listing]
    data = camera_jpegs(cfg)
    warm_libraries()
    with recording_errors(e2e):
        _end_to_end(cfg, data, e2e, hidden)
    if e2e.error:
        hidden.error = e2e.error
    return [e2e, hidden, _listing(cfg, listing_name)]


@dataclass
class _Side:
    """One side of the end-to-end runs: how it mounts, what it runs, its times."""

    name: str
    delay_ms: float | None
    command: Callable[[Path], Callable[[Path], list[str | Path]]]
    seconds: list[float] = field(default_factory=list)


def _end_to_end(cfg: Config, data: Path, e2e: Comparison, hidden: Comparison) -> None:
    """The Pool script and mountproc on the relayed mount, mountproc on a plain one: taking
    turns, a fresh mount and fresh outputs for every run; then the samples compared."""
    sides = [
        _Side("pool", DELAY_MS, pool_command),
        _Side("ours", DELAY_MS, mountproc_run),
        _Side("ours-plain", None, mountproc_run),
    ]
    runs = cfg.work / "runs" / "latency"
    log.info("%s: %d repeats of %d sides", e2e.name, cfg.repeats, len(sides))
    for i in range(cfg.repeats):
        for side in sides[i % 3 :] + sides[: i % 3]:
            side.seconds.append(_time_once(cfg, data, side, runs / side.name))
            log.info("%s, run %d: %.2f s", side.name, i + 1, side.seconds[-1])
    e2e.baseline_s, e2e.ours_s = sides[0].seconds, sides[1].seconds
    hidden.baseline_s, hidden.ours_s = sides[2].seconds, sides[1].seconds
    pool = tar_members((runs / "pool").glob("*.tar"))
    ours = tar_members((runs / "ours" / "outputs").glob("*.tar"))
    plain = tar_members((runs / "ours-plain" / "outputs").glob("*.tar"))
    images = count_images(data)
    equal, text = same_samples(pool, ours)
    e2e.checks["same samples"] = equal
    e2e.checks["every file processed"] = sum(n.endswith(".jpg") for n in ours) == images
    hidden.checks["same samples"] = plain == ours
    common = f"{cache_note(cfg)}; a fresh sshfs mount (default caches) for every run"
    e2e.note = f"through {relay.command(cfg.work / 'bin')[1]}; "
    e2e.note += f"{images} JPEGs; {text}; {common}; {os.cpu_count()} processes / local workers"
    hidden.note = f"same runs as the row above; {images} JPEGs; {common}"


def _time_once(cfg: Config, data: Path, side: _Side, out: Path) -> float:
    """One timed run of ``side`` on a fresh mount of ``data`` (mounting is not timed)."""
    with relayed_mount(cfg, data, "latency", side.delay_ms) as source:
        run = subprocess_side(out, side.command(source), run_timeout(cfg))(0)
        os.sync()
        if cfg.cold:
            evict(data)
        return timed(run)


def _listing(cfg: Config, name: str) -> Comparison:
    """mountproc's listing against ``find -type f`` on the relayed mount, as ``bench_listing``
    measures it (a fresh mount per timed run)."""
    spec = SMOKE if cfg.smoke else LISTING
    cmp = Comparison(name, bench_listing.FIND, bench_listing.OURS)
    with recording_errors(cmp):
        tree = ensure_tree(cfg.work, spec)
        mount = lambda: relayed_mount(cfg, tree, "latency-listing", DELAY_MS)  # noqa: E731
        runs = bench_listing.measure(cfg, "latency", mount, warm=False)
        through = relay.command(cfg.work / "bin")[1]
        note = f"through {through}; a fresh relayed mount (default caches) per timed run; "
        note += f"listed {runs.lister}"
        main, ref = bench_listing.comparisons(runs, WHERE, ("find", LISTING_TARGET), note)
        main.name = cmp.name
        main.note += f"; against find -printf (a stat per file): {ref.ratio:.3f}"
        return main
    return cmp
