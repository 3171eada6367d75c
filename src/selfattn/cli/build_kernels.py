"""``selfattn build-kernels``: compile the C attention kernel ahead of time (container images, DDP jobs).

Builds each requested variant into the kernel cache (``SELFATTN_CACHE``, default ``~/.cache/selfattn``)
with ``CC`` (default gcc) exactly as the first attention call would, so later processes only load it.
Building needs no AVX-512 on the build machine; loading is checked only where the CPU can run the code.
"""

from __future__ import annotations

import argparse

from . import CLIError


def register(sub) -> None:
    p = sub.add_parser("build-kernels", help="compile the C attention kernels ahead of time",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=["bf16", "f32", "all"], default="all",
                   help="which build: bf16 (AVX-512 BF16), f32 (AVX-512F) or all (default)")
    p.add_argument("--cc", help="C compiler (default: $CC or gcc)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..attention import cpu_kernel

    variants = ["bf16", "f32"] if args.variant == "all" else [args.variant]
    for variant in variants:
        try:
            path = cpu_kernel.build(variant, cc=args.cc)
        except cpu_kernel.KernelUnavailable as exc:
            raise CLIError(f"{variant}: {exc}") from None
        why = cpu_kernel.cpu_reason(variant)
        if why is None and args.cc in (None, cpu_kernel.compiler()):
            try:
                cpu_kernel.kernel(variant)  # loads it and checks its version symbol
            except cpu_kernel.KernelUnavailable as exc:
                raise CLIError(f"{variant}: built {path} but {exc}") from None
            note = "loaded and checked"
        else:
            note = f"not loaded here: {why}" if why else "not loaded here: built with another compiler"
        print(f"{variant}: {path} ({note})")
    return 0
