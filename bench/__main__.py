"""Run every benchmark: `./dev bench [NAME...] [--json FILE]`.

Each benchmark measures Kiln and a peer tool side by side in the same run
and prints the ratio, since the machines are noisy; `stress` instead counts
what goes wrong when builds, GCs and kills meet on one store (goal: none).
"""

from __future__ import annotations

import argparse
import json

from bench import (
    build_graph,
    c_wasm,
    cc,
    go_cache,
    hash_file,
    large_tree,
    native_step,
    native_vs_nix,
    recursive,
    remote,
    stress,
    tree_put,
    wasm_action,
    wasm_calls,
    wasm_compute,
    wasm_module_cache,
)

BENCHMARKS = {
    "hash": hash_file.main,
    "tree": tree_put.main,
    "wasm": wasm_action.main,
    "compute": wasm_compute.main,
    "module-cache": wasm_module_cache.main,
    "graph": build_graph.main,
    "native": native_step.main,
    "nix": native_vs_nix.main,
    "c-wasm": c_wasm.main,
    "stress": stress.main,
    "remote": remote.main,
    "go": go_cache.main,
    "cc": cc.main,
    "calls": wasm_calls.main,
    "recursive": recursive.main,
    "large-tree": large_tree.main,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="./dev bench")
    parser.add_argument("names", nargs="*", help=f"which to run: {', '.join(BENCHMARKS)}")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    results = []
    for name in args.names or BENCHMARKS:
        results.extend(BENCHMARKS[name]())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
