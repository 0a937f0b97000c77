"""CPU tier: Ray actors as lithos tenants (`lithos.ray`) on a local Ray cluster of two
logical GPUs, which the actors see as simulated GPUs (skipped where Ray is missing)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

ray = pytest.importorskip("ray")

import lithos  # noqa: E402
import lithos.ray as lithos_ray  # noqa: E402
from lithos_sched.ledger_file import snapshot  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


class Worker:
    """What the tests ask of a tenant actor."""

    def info(self) -> dict[str, Any]:
        import lithos_sched

        m = lithos.joined()
        return {"pid": os.getpid(), "gpu": m.device.uuid, "name": m.tenant.name, "tpcs": sorted(m.tenant.tpcs),
                "followed": m.scheduler.followed(), "module": lithos_sched.__file__}

    def followed(self) -> list[str]:
        return lithos.joined().scheduler.followed()

    def steal(self) -> list[int]:
        """Run a best-effort kernel; the TPCs of other tenants its atoms ran on."""
        from lithos_atom.plan import KernelKey, LaunchPlan
        from lithos_sched import SimKernel

        m = lithos.joined()
        kernel = SimKernel("k", grid_blocks=m.device.num_sms * 20, block_us=50.0)
        plan = LaunchPlan.build(KernelKey("k", (kernel.grid_blocks, 1, 1), (256, 1, 1), 0), kernel.grid_blocks,
                                kernel.grid_blocks, lambda s, n, stream: stream.launch(kernel, s, n),
                                wave_blocks=m.device.num_sms)
        t0 = m.scheduler.timeline.now_us()
        m.scheduler.submit_for(m.tenant, plan)
        m.tenant.synchronize()
        return sorted({t for r in m.scheduler.atoms() if r.stolen and r.start_us >= t0 for t in r.tpcs} - m.tenant.tpcs)

    def open_request(self) -> None:
        self._request = lithos.tenant().request()
        self._request.__enter__()

    def close_request(self) -> None:
        self._request.__exit__(None, None, None)

    def allocate(self, first: int, second: int) -> str:
        """Hold ``first`` bytes and ask for ``second`` more through CuPy (a fake device underneath)."""
        from cupy.cuda import memory

        lithos.joined().memory.allocator = lambda size: memory.MemoryPointer(
            memory.UnownedMemory(1 << 30, size, None, device_id=0), 0)
        held = memory.alloc(first)
        try:
            memory.alloc(second)
        except MemoryError as exc:
            return f"{type(exc).__name__}: {exc}"
        finally:
            del held
        return "allocated"

    def record_followed(self) -> None:
        """Record, from now on, each change of the followed tenants with its time."""
        self._history: list[tuple[float, list[str]]] = []

        def record() -> None:
            last = None
            while True:
                now = lithos.joined().scheduler.followed()
                if now != last:
                    self._history.append((time.monotonic(), now))
                    last = now
                time.sleep(0.001)

        threading.Thread(target=record, daemon=True).start()

    def history(self) -> list[tuple[float, list[str]]]:
        return self._history


class Intruder:
    """An actor of another user (faked): joining its GPU must fail."""

    def join_as_another_user(self) -> str:
        real = os.getuid()
        os.getuid = lambda: real + 1
        try:
            lithos_ray.join_assigned("best-effort", simulate=True)
        except PermissionError as exc:
            return str(exc)
        return "joined"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    """A local Ray cluster of two CPUs and two logical GPUs; its ledgers' folder."""
    folder = tmp_path_factory.mktemp("ray-shm")
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO), "LITHOS_LEDGER_DIR": str(folder)}})
    yield folder
    ray.shutdown()


def ledger_names(folder: Path, gpu: str) -> list[str]:
    """The tenants the ledger of ``gpu`` lists as it is (no reclaiming)."""
    [path] = folder.glob(f"lithos-ledger-*-{gpu}")
    return [e["name"] for e in snapshot(path)["entries"]]


def until(test: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := test()):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
    return value


@pytest.fixture(scope="module")
def actors(cluster: Path) -> dict[str, Any]:
    """A training actor alone on a whole GPU, then an inference and a training actor at
    ``num_gpus=0.5`` each, which Ray can only place together on the other GPU."""
    tenant = lithos_ray.remote
    alone = tenant(priority="best-effort", num_gpus=1, num_cpus=0, simulate=True)(Worker).remote()
    ray.get(alone.info.remote())
    inference = tenant(priority="latency-critical", num_gpus=0.5, num_cpus=0, memory_limit="1MiB",
                       simulate=True)(Worker).remote()
    training = tenant(priority="best-effort", num_gpus=0.5, num_cpus=0, simulate=True)(Worker).remote()
    return {"alone": alone, "inference": inference, "training": training}


def test_actors_get_their_own_tpcs_of_their_gpu_and_steal_between_requests(cluster, actors):
    info = {k: ray.get(a.info.remote()) for k, a in actors.items()}
    lc, be, alone = info["inference"], info["training"], info["alone"]
    assert lc["module"].startswith(str(REPO))  # the actors run this checkout
    assert {alone["gpu"], lc["gpu"]} == {"SIM-0", "SIM-1"} and be["gpu"] == lc["gpu"]  # one ledger per GPU
    assert len(alone["tpcs"]) == 66 and ledger_names(cluster, alone["gpu"]) == [alone["name"]]
    assert len(lc["tpcs"]) == len(be["tpcs"]) == 33 and not set(lc["tpcs"]) & set(be["tpcs"])  # half each
    assert sorted(ledger_names(cluster, lc["gpu"])) == sorted([lc["name"], be["name"]])
    inference, training = actors["inference"], actors["training"]
    until(lambda: ray.get(training.followed.remote()) == [lc["name"]])
    assert ray.get(actors["alone"].followed.remote()) == []  # the other GPU's tenant is not its business
    assert ray.get(training.steal.remote()) == lc["tpcs"]
    ray.get(inference.open_request.remote())
    assert ray.get(training.steal.remote()) == []
    ray.get(inference.close_request.remote())
    assert ray.get(training.steal.remote()) == lc["tpcs"]
    assert ray.get(inference.allocate.remote(600 << 10, 500 << 10)) == (
        f"TenantOutOfMemoryError: tenant {lc['name']!r} would exceed its memory limit of 1.00 MiB: "
        "600.00 KiB in use, 500.00 KiB asked")
    with pytest.raises(ValueError, match=r"num_gpus must be a number in \(0, 1\], got 2"):
        lithos_ray.remote(priority="best-effort", num_gpus=2)


def test_a_killed_actor_gives_its_tpcs_back_and_another_user_cannot_join(cluster, actors):
    inference, training = actors["inference"], actors["training"]
    lc = ray.get(inference.info.remote())
    until(lambda: ray.get(training.followed.remote()) == [lc["name"]])
    ray.get(training.record_followed.remote())
    ray.kill(inference)
    stat = Path(f"/proc/{lc['pid']}/stat")
    while stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.0005)
    dead = time.monotonic()
    until(lambda: lc["name"] not in ledger_names(cluster, lc["gpu"]))
    noticed = until(lambda: [t for t, names in ray.get(training.history.remote()) if not names])[0]
    assert noticed - dead < 0.1  # the training actor stopped stealing them; the ledger has them free
    intruder = ray.remote(num_gpus=0.5, num_cpus=0)(Intruder).remote()  # takes the killed actor's place
    message = ray.get(intruder.join_as_another_user.remote())
    assert message.startswith(f"GPU {lc['gpu']} is shared by lithos processes of user id {os.getuid()}")
