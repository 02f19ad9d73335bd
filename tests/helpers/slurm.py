"""A real single-node Slurm cluster for tests: ``munged``, ``slurmctld`` and ``slurmd`` run as
root from a temporary directory, on 127.0.0.1 ports, each with its own files there; stopped by
PID at the end.

Import it as ``from helpers.slurm import slurm_cluster, slurm_available``. Slurm's commands
(``sbatch``, ``squeue``, ``scancel``) find the cluster through ``SLURM_CONF`` (``env()``), and
reach this munged through the socket named in the generated ``slurm.conf`` (``AuthInfo``).
Observed with Debian's slurm-wlm 22.05 and munge 0.5: in a container, ``proctrack/linuxproc``
and ``task/none`` need no cgroups; without accounting no slurmdbd is needed.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from helpers.netfs import _tool, wait_until

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0
NODE = "mpnode"
DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "squeue", "scancel", "sinfo")


def slurm_available() -> str | None:
    """None if this machine can run a Slurm cluster for tests, else a reason for ``skip``."""
    if os.geteuid() != 0:
        return "a test Slurm cluster runs as root (SlurmUser=root, munged's key owned by root)"
    missing = [name for name in (*DAEMONS, *COMMANDS) if _tool(name) is None]
    if missing:
        return f"not installed: {', '.join(missing)} (apt-get install slurm-wlm munge)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _node_line() -> str:
    """This machine's real CPUs, topology and memory, as ``slurmd -C`` reports them (a node
    configured with more than it has is drained)."""
    out = subprocess.run([_tool("slurmd") or "slurmd", "-C"], capture_output=True, text=True)
    first = out.stdout.splitlines()[0].split()
    keep = [kv for kv in first[1:] if not kv.startswith("UpTime")]
    host = socket.gethostname()
    return f"NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 {' '.join(keep)}"


def write_conf(root: Path, munge_socket: Path) -> Path:
    """A ``slurm.conf`` for one node on 127.0.0.1, everything else in ``root``."""
    lines = [
        "ClusterName=mountproc-test",
        "SlurmctldHost=localhost(127.0.0.1)",
        "SlurmUser=root",
        "SlurmdUser=root",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "MpiDefault=none",
        "SchedulerType=sched/backfill",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        "ReturnToService=2",
        "SlurmdTimeout=30",
        "KillWait=5",
        _node_line(),
        f"PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
    ]
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


@dataclass
class SlurmCluster:
    """A running test cluster: its config, and the daemons it started (by PID)."""

    root: Path
    conf: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """What Slurm's commands (and dask-jobqueue's calls to them) need to find it."""
        return {"SLURM_CONF": str(self.conf)}

    def command(self, *args: str) -> str:
        """Run a Slurm command against this cluster; return its output."""
        out = subprocess.run(
            list(args), env={**os.environ, **self.env()}, capture_output=True, text=True, timeout=30
        )
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    def jobs(self) -> dict[str, str]:
        """The jobs in the queue: job id to state (``R``, ``PD``, ``CG``...)."""
        text = self.command("squeue", "-h", "-o", "%i %t")
        return dict(line.split() for line in text.splitlines() if line.strip())

    def running(self) -> list[str]:
        """The ids of the running jobs."""
        return sorted(job for job, state in self.jobs().items() if state == "R")

    def node_state(self) -> str:
        """The node's state as ``sinfo`` shows it (``idle``, ``mix``, ``down``...)."""
        return self.command("sinfo", "-h", "-N", "-o", "%t").strip()

    def stop(self) -> None:
        """Cancel every job, then stop the daemons by PID (last started, first stopped)."""
        try:
            self.command("scancel", "--full", "--partition=test")
            wait_until(lambda: not self.jobs(), STOP_TIMEOUT, "the test jobs are gone")
        except (RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            pass  # the daemons stop anyway; slurmd takes its job steps with it
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _start(cmd: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)


def _alive(proc: subprocess.Popen[bytes], what: str, log: Path) -> None:
    if proc.poll() is not None:
        raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text()[-2000:]}")


def _start_munge(root: Path, cluster: SlurmCluster) -> Path:
    """``munged`` in the foreground with its own key, socket, PID, log and seed files."""
    key, sock = root / "munge.key", root / "munge.sock"
    key.write_bytes(secrets.token_bytes(1024))
    key.chmod(0o400)
    log = root / "munged.log"
    cmd = [_tool("munged") or "munged", "-F", "--force", f"--socket={sock}", f"--key-file={key}"]
    cmd += [f"--pid-file={root / 'munged.pid'}", f"--log-file={log}"]
    cmd += [f"--seed-file={root / 'munged.seed'}"]
    proc = _start(cmd, root / "munged.out")
    cluster.procs.append(proc)
    wait_until(lambda: sock.exists() or proc.poll() is not None, START_TIMEOUT, "munged listens")
    _alive(proc, "munged", log)
    return sock


def _start_slurm(cluster: SlurmCluster) -> None:
    """``slurmctld`` and ``slurmd`` in the foreground; wait until the node is idle."""
    conf, root = str(cluster.conf), cluster.root
    ctld = _start([_tool("slurmctld") or "slurmctld", "-D", "-c", "-f", conf], root / "ctld.out")
    cluster.procs.append(ctld)
    slurmd = _start([_tool("slurmd") or "slurmd", "-D", "-N", NODE, "-f", conf], root / "d.out")
    cluster.procs.append(slurmd)

    def idle() -> bool:
        _alive(ctld, "slurmctld", root / "slurmctld.log")
        _alive(slurmd, "slurmd", root / "slurmd.log")
        try:
            return cluster.node_state() == "idle"
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    wait_until(idle, START_TIMEOUT, "sinfo shows the test node idle")


@contextmanager
def slurm_cluster(root: Path) -> Iterator[SlurmCluster]:
    """Start munged, slurmctld and slurmd from ``root``; stop them by PID when done."""
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    with ExitStack() as stack:
        cluster = SlurmCluster(root, root / "slurm.conf")
        stack.callback(cluster.stop)
        sock = _start_munge(root, cluster)
        write_conf(root, sock)
        _start_slurm(cluster)
        yield cluster
