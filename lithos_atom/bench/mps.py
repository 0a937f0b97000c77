"""Start and stop a private NVIDIA MPS control daemon for one benchmark scenario.

The daemon gets its own pipe and log directories under a temporary folder, so it serves
only the processes given `MPSDaemon.client_env` and never a daemon someone else runs.
It is always asked to quit when the ``with`` block ends. Where the binary is missing or
the daemon does not come up, `MPSUnavailable` says why (the scenario is then reported as
skipped with that reason).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

BINARY = "nvidia-cuda-mps-control"


class MPSUnavailable(RuntimeError):
    """The MPS daemon could not be started; the message says why."""


class MPSDaemon:
    """A private MPS control daemon, started on ``__enter__`` and stopped on ``__exit__``.

    Parameters
    ----------
    binary : str
        Name or path of the control program.
    start_timeout_s : float
        How long to wait for the daemon's control pipe to appear.
    """

    def __init__(self, binary: str = BINARY, start_timeout_s: float = 10.0):
        self.binary = binary
        self.start_timeout_s = start_timeout_s
        self.root: Path | None = None
        self.path: str | None = None
        self.stop_status: str | None = None

    @property
    def pipe_dir(self) -> Path:
        """The daemon's ``CUDA_MPS_PIPE_DIRECTORY``."""
        if self.root is None:
            raise RuntimeError("the MPS daemon is not started")
        return self.root / "pipe"

    @property
    def log_dir(self) -> Path:
        """The daemon's ``CUDA_MPS_LOG_DIRECTORY``."""
        if self.root is None:
            raise RuntimeError("the MPS daemon is not started")
        return self.root / "log"

    def client_env(self) -> dict[str, str]:
        """Environment variables that make a CUDA process a client of this daemon."""
        return {"CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir), "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir)}

    def _env(self) -> dict[str, str]:
        return {**os.environ, **self.client_env()}

    def _control(self, command: str, timeout_s: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.path)], input=command + "\n", env=self._env(), capture_output=True, text=True,
                              timeout=timeout_s)

    def __enter__(self) -> MPSDaemon:
        path = shutil.which(self.binary)
        if path is None:
            raise MPSUnavailable(f"{self.binary} not found on PATH")
        self.path = path
        self.root = Path(tempfile.mkdtemp(prefix="lithos-mps-"))
        self.pipe_dir.mkdir()
        self.log_dir.mkdir()
        try:
            started = subprocess.run([path, "-d"], env=self._env(), capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self._cleanup()
            raise MPSUnavailable(f"{path} -d failed: {exc}") from exc
        if started.returncode != 0:
            self._cleanup()
            raise MPSUnavailable(f"{path} -d exited {started.returncode}: {(started.stderr or started.stdout).strip()}")
        deadline = time.monotonic() + self.start_timeout_s
        while not (self.pipe_dir / "control").exists():
            if time.monotonic() > deadline:
                self._stop()
                raise MPSUnavailable(f"the MPS daemon's control pipe did not appear in {self.start_timeout_s:g} s; "
                                     f"log: {self.log_tail()}")
            time.sleep(0.05)
        return self

    def server_list(self) -> str:
        """The daemon's answer to ``get_server_list`` (the PIDs of its MPS servers)."""
        return self._control("get_server_list", timeout_s=10).stdout.strip()

    def log_tail(self, chars: int = 600) -> str:
        """The end of the daemon's control log (empty if none)."""
        if self.root is None:
            return ""
        log = self.log_dir / "control.log"
        return log.read_text(errors="replace")[-chars:].strip() if log.is_file() else ""

    def _daemon_pids(self) -> list[int]:
        """PIDs of control daemons serving this pipe directory (from /proc; empty where unreadable)."""
        pids = []
        want = f"CUDA_MPS_PIPE_DIRECTORY={self.pipe_dir}".encode()
        for entry in Path("/proc").glob("[0-9]*"):
            try:
                # comm holds at most 15 characters of the program's name
                if (entry / "comm").read_text().strip() != Path(self.path or self.binary).name[:15]:
                    continue
                if want in (entry / "environ").read_bytes().split(b"\0"):
                    pids.append(int(entry.name))
            except (OSError, ValueError):
                continue
        return pids

    def _stop(self) -> None:
        pids = self._daemon_pids()
        try:
            res = self._control("quit")
            self.stop_status = "quit" if res.returncode == 0 else f"quit exited {res.returncode}: {res.stderr.strip()}"
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.stop_status = f"quit failed: {exc}"
        # Wait for the daemon itself to exit (its control pipe file may outlive it), so no
        # daemon outlives the scenario.
        deadline = time.monotonic() + 10.0
        while any(Path(f"/proc/{pid}").exists() for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.05)
        alive = [pid for pid in pids if Path(f"/proc/{pid}").exists()]
        if alive:
            self.stop_status = f"{self.stop_status}; daemon {alive} still running after 10 s"
        elif pids:
            self.stop_status = f"{self.stop_status}; daemon {pids} exited"
        self._cleanup()

    def _cleanup(self) -> None:
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)

    def __exit__(self, *exc: Any) -> None:
        self._stop()
