"""Tokens per prompt of the two digraph prompt encodings (trace option `prompt`) on the same
instances: the mean prompt length (row `prompt_len`, <bos> to `=`) of the test split of each
config, written once with `edges` and once with `adjacency`.

    python experiments/calibration/prompt_tokens.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from retroplan.traces.suite import SuiteSpec, generate_suite, open_suite

CONFIGS = [
    ("graph", {"num_nodes": 8, "min_distance": 2, "max_distance": 3}),
    ("graph", {"num_nodes": 12, "min_distance": 2, "max_distance": 4}),
    ("graph", {}),
    ("graph", {"num_nodes": 12, "out_degree": 3, "min_distance": 2, "max_distance": 4}),
    ("pathstar", {}),
]
SIZES = {"train": 1, "val": 1, "test": 1000}


def main() -> None:
    print("| task | config | edges: tokens/prompt | adjacency: tokens/prompt | ratio |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for k, (task, config) in enumerate(CONFIGS):
            mean = {}
            for prompt in ("edges", "adjacency"):
                spec = SuiteSpec(task, "optimal", config, {"prompt": prompt}, 0, SIZES)
                suite = open_suite(generate_suite(spec, Path(tmp) / f"{k}-{prompt}", progress=False))
                mean[prompt] = float(suite.split("test").prompt_len.mean())
            shown = ", ".join(f"{key}={value}" for key, value in config.items()) or "defaults"
            print(f"| {task} | {shown} | {mean['edges']:.1f} | {mean['adjacency']:.1f} | "
                  f"{mean['adjacency'] / mean['edges']:.2f} |")


if __name__ == "__main__":
    main()
