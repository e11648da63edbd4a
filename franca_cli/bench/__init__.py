"""``franca bench ...``: benchmarks that print JSON on stdout (figures, never timed tests).

    franca bench download --n 2000            # img2dataset vs a plain HTTP fetch of the same URLs
    franca bench dedup --n 100000             # fingerprint + dedup images/s, time(n) / time(n/4)
    franca bench step --profile tiny          # the full Franca step vs the unavoidable backbone work
    franca bench train                        # Ray Train images/s with 1 and 2 workers, the loader alone
    franca bench loader --profile vitb14      # loader images/s per core: decode, multi-crop, CyclicMask
    franca bench gpu                          # the GPU check: step images/s, MFU, memory, eval features/s
    franca bench quality --minutes 60         # k-NN of a wall-budget pretraining vs random init
    franca bench eval                         # the evaluation suite end to end on a tiny pretrained model
    franca bench ablation                     # pretraining variants at equal compute, k-NN with standard errors
    franca bench pipeline                     # the demo's wall time by stage and the orchestration overhead
    franca bench cache                        # content keys of a 1 GB file, a re-run served from the store

``franca bench NAME --help`` says what each one measures and its goal.
"""

from __future__ import annotations

import argparse
import importlib

# One module of this package per benchmark, named as its subcommand, in the order `franca bench --help` lists them
# (the pipeline's). A benchmark module has a docstring (its --help text) and defines
#     HELP: str                                                  the one-line summary in `franca bench --help`
#     add_arguments(parser: argparse.ArgumentParser) -> None     its options
#     run(args: argparse.Namespace) -> int                       prints the JSON, returns the exit status
# Adding one is its module (e.g. bench/cache.py) plus its name here. Helpers that several benchmarks share live in
# datasets.py (the benchmark data and the shards written from it), not in this file.
BENCHMARKS: tuple[str, ...] = (
    "select",
    "download",
    "dedup",
    "step",
    "train",
    "loader",
    "gpu",
    "quality",
    "eval",
    "ablation",
    "pipeline",
    "cache",
)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``franca bench`` and one subcommand per module named in ``BENCHMARKS``."""
    parser = sub.add_parser("bench", help="benchmarks (JSON on stdout)", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    bench = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in BENCHMARKS:
        module = importlib.import_module(f"{__name__}.{name}")
        p = bench.add_parser(name, help=module.HELP, description=module.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(func=module.run)
