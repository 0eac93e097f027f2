"""Compiles every Triton kernel specialisation of ms_deform_attn for sm_80 and sm_90 ahead of
time, with no GPU and no CUDA toolkit (Triton's own LLVM, ptxas and cuobjdump), and prints each
one's registers per thread and local memory (spills) as a markdown table.

    python tools/triton_aot_check.py [--archs 80 90] [--head-dim 32] [--json F]

Exits 1 when a forward kernel has a stack frame (ptxas's spills: the forward keeps its
accumulators in registers, and a spill there costs every call) or a compile fails. Compiled
kernels land in Triton's cache, so a second run takes seconds. Run without TRITON_INTERPRET
(the interpreter's kernels cannot be compiled).
"""

import argparse
import json
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from deformable_detr.layers.ms_deform_attn_triton import specializations

CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict:
    """{"registers": REG, "local": LOCAL bytes, "stack": STACK bytes} of the cubin's kernel."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [CUOBJDUMP, "-res-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    fields = dict(re.findall(r"(REG|STACK|LOCAL):(\d+)", text))
    return {
        "registers": int(fields["REG"]),
        "local": int(fields["LOCAL"]),
        "stack": int(fields["STACK"]),
    }


def compile_one(job):
    """(spec index, arch) -> a table row."""
    index, arch, head_dim = job
    name, kernel, signature, constexprs, options = specializations(head_dim)[index]
    signature = dict(signature, **{k: "constexpr" for k in constexprs})
    row = {"kernel": name, "arch": f"sm_{arch}"}
    try:
        compiled = triton.compile(
            ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
            target=GPUTarget("cuda", arch, 32),
            options=options,
        )
        row.update(resource_usage(compiled.asm["cubin"]))
    except Exception as e:  # reported in the table and the exit status
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter's kernels cannot be compiled")
    count = len(specializations(args.head_dim))
    jobs = [(i, a, args.head_dim) for a in args.archs for i in range(count)]
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        rows = pool.map(compile_one, jobs, chunksize=1)
    print("| kernel | arch | registers | local (spill) bytes | stack bytes |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['kernel']} | {r['arch']} | failed: {r['error']} | | |")
        else:
            print(
                f"| {r['kernel']} | {r['arch']} | {r['registers']} | {r['local']} | {r['stack']} |"
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    failed = [r for r in rows if "error" in r]
    spills = [
        r
        for r in rows
        if r["kernel"].startswith("forward") and r.get("local", 0) + r.get("stack", 0)
    ]
    for r in failed:
        print(f"error: {r['kernel']} ({r['arch']}) did not compile: {r['error']}", file=sys.stderr)
    for r in spills:
        print(
            f"error: {r['kernel']} ({r['arch']}) spills: {r['stack']} bytes of stack",
            file=sys.stderr,
        )
    return 1 if failed or spills else 0


if __name__ == "__main__":
    sys.exit(main())
