"""Compile CUDA C to PTX, and rewritten PTX to a cubin the running driver can load.

NVRTC and NVVM from newer CUDA wheels emit a PTX ``.version`` that an older driver cannot
JIT (CUDA 13.5 emits 9.5; a 13.0 driver JITs up to 9.0). Linking PTX to a cubin with
nvJitLink (through ``cuda.core.Linker``) sidesteps this: SASS from a newer 13.x toolkit
loads on any 13.x driver. Linked cubins are cached in memory and on disk, keyed by a
hash of the PTX, the target and the linker version, so only the first launch pays.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path

from lithos_atom.errors import AtomizeError
from lithos_atom.settings import get_settings

_memory_cache: dict[str, bytes] = {}
_lock = threading.Lock()


def _nvjitlink_version() -> tuple[int, int]:
    from cuda.bindings import nvjitlink

    return tuple(nvjitlink.version())  # type: ignore[return-value]


def _cache_key(ptx: str, arch: str, max_registers: int | None) -> str:
    h = hashlib.sha256()
    h.update(ptx.encode())
    h.update(f"\0{arch}\0nvjitlink-{_nvjitlink_version()}\0maxreg-{max_registers}".encode())
    return h.hexdigest()


def register_cap(threads_per_block: int) -> int:
    """The most registers per thread that let one block of ``threads_per_block`` launch.

    An SM has 65,536 registers, allocated per warp in units of 256 (8 per thread).

    Parameters
    ----------
    threads_per_block : int
        From 1 to 1024.

    Returns
    -------
    int
        A multiple of 8, at most 255.
    """
    if not 1 <= threads_per_block <= 1024:
        raise ValueError(f"threads_per_block must be from 1 to 1024, got {threads_per_block}")
    warps = -(-threads_per_block // 32)
    return min(255, 65536 // (warps * 32) // 8 * 8)


def link_ptx(ptx: str, arch: str, *, name: str = "lithos", max_registers: int | None = None) -> bytes:
    """Link one PTX module to a cubin for ``arch`` (for example ``"sm_90"``).

    Parameters
    ----------
    ptx : str
        The PTX module text.
    arch : str
        Target SM architecture, ``sm_<CC>``.
    name : str
        A name for error messages.
    max_registers : int, optional
        Cap on registers per thread (``-maxrregcount``): a rewritten kernel needs a few
        more than the original, and a block size chosen for the original must still fit.

    Returns
    -------
    bytes
        The cubin.

    Raises
    ------
    AtomizeError
        If nvJitLink rejects the PTX (for example a PTX ``.version`` newer than the
        installed nvJitLink supports); the linker's log is included.
    """
    key = _cache_key(ptx, arch, max_registers)
    with _lock:
        cubin = _memory_cache.get(key)
    if cubin is not None:
        return cubin
    settings = get_settings()
    path = settings.cache_dir / f"{key}.cubin"
    if settings.disk_cache and path.is_file():
        cubin = path.read_bytes()
    else:
        cubin = _link_uncached(ptx, arch, name, max_registers)
        if settings.disk_cache:
            _write_atomically(path, cubin)
    with _lock:
        _memory_cache[key] = cubin
    return cubin


def _link_uncached(ptx: str, arch: str, name: str, max_registers: int | None) -> bytes:
    from cuda.core import Linker, LinkerOptions, ObjectCode

    linker = None
    try:
        # nvJitLink assembles the PTX while the linker is constructed, so errors come from both steps.
        options = LinkerOptions(arch=arch, name=name, max_register_count=max_registers)
        linker = Linker(ObjectCode.from_ptx(ptx.encode(), name=name), options=options)
        return bytes(linker.link("cubin").code)
    except Exception as exc:  # cuda.core raises nvJitLinkError / CUDAError; keep their logs
        raise AtomizeError(
            f"linking rewritten PTX of {name!r} for {arch} failed with nvJitLink {_nvjitlink_version()}: {exc}"
        ) from exc
    finally:
        if linker is not None:
            linker.close()


def _write_atomically(path: Path, data: bytes) -> None:
    # A concurrent process may write the same key; rename makes each write all-or-nothing.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def cuda_include_dirs() -> list[str]:
    """Header directories for NVRTC: CuPy's, and the CUDA toolkit's as CuPy adds them.

    The toolkit's ``mma.h`` includes ``crt/mma.h``, which some installs keep outside the
    runtime headers' directory (seen on the lent H100: the CUDA 13 wheel's ``include`` had
    no ``crt/``); the first toolkit include directory that has it is added too.
    """
    import cupy
    from cuda import pathfinder

    dirs = [str(Path(cupy.__file__).parent / "_core" / "include")]
    for lib in ("cudart", "cccl"):
        try:
            found = pathfinder.find_nvidia_header_directory(lib)
        except Exception:  # pathfinder raises its own error types when a toolkit part is absent
            found = None
        if found:
            dirs.append(str(found))
    candidates = [*dirs[1:2], *(os.path.join(os.environ[v], "include") for v in ("CUDA_PATH", "CUDA_HOME")
                                if os.environ.get(v)), "/usr/local/cuda/include"]
    with_crt = next((d for d in candidates if os.path.isfile(os.path.join(d, "crt", "mma.h"))), None)
    if with_crt is not None and with_crt not in dirs:
        dirs.append(with_crt)
    return dirs


def cuda_source_to_ptx(
    code: str,
    options: Sequence[str],
    compute_capability: str,
    name_expressions: Sequence[str] = (),
    *,
    filename: str = "lithos_kernel.cu",
) -> tuple[str, dict[str, str]]:
    """Compile CUDA C++ to PTX with NVRTC, as CuPy's RawKernel/RawModule would.

    CuPy 14 compiles raw kernels straight to cubin, so their PTX must be produced again
    from the source. The options mirror CuPy's NVRTC path: the user's options, ``-ftz=true``,
    ``--device-as-default-execution-space`` and CuPy's include directory. The PTX is cached
    on disk (keyed by source, options, target and NVRTC version), so later processes skip
    the compile.

    Parameters
    ----------
    code : str
        CUDA C++ source.
    options : sequence of str
        The kernel's own NVRTC options.
    compute_capability : str
        For example ``"90"``; PTX is generated for ``compute_<cc>``.
    name_expressions : sequence of str
        Template instantiations to lower, as for ``cupy.RawModule``.
    filename : str
        Name used in compiler messages.

    Returns
    -------
    tuple of (str, dict)
        The PTX and a mapping from each name expression to its lowered (mangled) name.

    Raises
    ------
    AtomizeError
        If NVRTC fails; its log is included.
    """
    from cuda.bindings import nvrtc

    settings = get_settings()
    key = hashlib.sha256(
        json.dumps([code, list(options), compute_capability, list(name_expressions), nvrtc.nvrtcVersion()[1:]]).encode()
    ).hexdigest()
    cached_path = settings.cache_dir / f"{key}.ptx.json"
    if settings.disk_cache and cached_path.is_file():
        cached = json.loads(cached_path.read_text())
        return cached["ptx"], cached["mapping"]
    ptx, mapping = _nvrtc_compile(code, options, compute_capability, name_expressions, filename)
    if settings.disk_cache:
        _write_atomically(cached_path, json.dumps({"ptx": ptx, "mapping": mapping}).encode())
    return ptx, mapping


def _nvrtc_compile(code: str, options: Sequence[str], compute_capability: str, name_expressions: Sequence[str],
                   filename: str) -> tuple[str, dict[str, str]]:
    from cuda.bindings import nvrtc

    def check(result: tuple, what: str) -> tuple:
        err, *rest = result
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise AtomizeError(f"NVRTC {what} failed: {err.name}")
        return tuple(rest)

    opts = [*options, "-ftz=true", "--device-as-default-execution-space",
            *(f"-I{d}" for d in cuda_include_dirs()), f"-arch=compute_{compute_capability}"]
    (prog,) = check(nvrtc.nvrtcCreateProgram(code.encode(), filename.encode(), 0, [], []), "create")
    try:
        for expr in name_expressions:
            check(nvrtc.nvrtcAddNameExpression(prog, expr.encode()), f"add name expression {expr!r}")
        (result,) = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        if result != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            (size,) = check(nvrtc.nvrtcGetProgramLogSize(prog), "log size")
            log = b" " * size
            check(nvrtc.nvrtcGetProgramLog(prog, log), "log")
            raise AtomizeError(f"NVRTC could not compile {filename} ({result.name}):\n{log.decode(errors='replace').rstrip(chr(0))}")
        (size,) = check(nvrtc.nvrtcGetPTXSize(prog), "PTX size")
        ptx = b" " * size
        check(nvrtc.nvrtcGetPTX(prog, ptx), "get PTX")
        mapping = {}
        for expr in name_expressions:
            (lowered,) = check(nvrtc.nvrtcGetLoweredName(prog, expr.encode()), f"lowered name of {expr!r}")
            mapping[expr] = lowered.decode()
        return ptx.decode().rstrip("\0"), mapping
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
