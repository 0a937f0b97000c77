"""A soak of eight tenants that come and go: ``python scripts/soak.py --minutes N [--gpu]``.

Without ``--gpu``, ``N`` minutes of *virtual* time on the simulated device
(``soak_sim.py``: about a real second per virtual second, eight with ``--trace-memory``).
With ``--gpu``, ``N`` real minutes on GPU 0 with real threads and kernels
(``soak_gpu.py``). Either way the run ends by checking that every launch's blocks ran
exactly once, that no request or gate was left behind, and that what the process holds
(memory, files, threads, shared-memory files; device memory and green contexts on the
GPU) came back to its start; it writes ``soak.json`` to ``--out`` and exits 1 if a check
failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _minutes(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text!r}")
    return value


def _shm() -> str | None:
    """/dev/shm where it exists: the soak's ledger and signals live in a folder of their own there."""
    return "/dev/shm" if Path("/dev/shm").is_dir() else None


def main(argv: list[str] | None = None) -> int:
    """Run the soak; 0 when every check passed, 1 otherwise."""
    parser = _Parser(prog="scripts/soak.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=_minutes, required=True,
                        help="virtual minutes on the simulated device, real minutes with --gpu")
    parser.add_argument("--gpu", action="store_true", help="on GPU 0, with real threads and kernels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace-memory", action="store_true", help="measure host memory with tracemalloc too")
    parser.add_argument("--out", type=Path, default=Path("."), help="folder of soak.json (made if missing)")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is not a folder")
    if args.gpu:
        from lithos_sched import gpu_available
        from soak_gpu import GpuSoak

        if not gpu_available():
            parser.error("--gpu needs a CUDA GPU, and none is visible")

        result = GpuSoak(minutes=args.minutes, seed=args.seed, trace_memory=args.trace_memory).run()
    else:
        from soak_sim import SimSoak

        with tempfile.TemporaryDirectory(prefix="lithos-soak-", dir=_shm()) as folder:
            result = SimSoak(virtual_s=args.minutes * 60, seed=args.seed, folder=Path(folder),
                             trace_memory=args.trace_memory).run()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps({k: result[k] for k in ("mode", "ok", "checks")}, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
