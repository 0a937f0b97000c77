"""Diagnostic: SASS of a kernel before and after the atom rewrite (needs cuobjdump)."""
import subprocess
import sys
import tempfile

sys.path.insert(0, ".")
from lithos_atom.bench.atoms import BURN  # noqa: E402
from lithos_atom.compile import cuda_source_to_ptx, link_ptx  # noqa: E402
from lithos_atom.ptx import rewrite_module  # noqa: E402

ptx, _ = cuda_source_to_ptx(BURN, ("-std=c++17",), "90")
for name, text in (("original", ptx), ("rewritten", rewrite_module(ptx).ptx)):
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(link_ptx(text, "sm_90", name=name))
    sass = subprocess.run(["cuobjdump", "-sass", f.name], capture_output=True, text=True).stdout
    body = [ln.strip() for ln in sass.splitlines() if ln.strip().startswith("/*") and ";" in ln]
    print(f"==== {name}: {len(body)} instructions")
    print("\n".join(body))
