"""The ablation table of the model cards, from evaluation results on the same suite.

    python benchmarks/ablation_table.py      # after evaluate_pretrained.py (and --weights benchmarks/ablation/NAME)

Each row is one results file of `benchmarks/results/` (written by
`evaluate_pretrained.py`); each cell is "fraction faster than tuned Adam / median /
IQM" for one group. Rows whose results file is missing are listed as such, not left out.
"""
from __future__ import annotations

from minilopt import evaluate as E

from _common import RESULTS

ROWS = (   # (results file stem, what changed, outer steps)
    ("evaluate_mlp", "`mlp`: per-parameter MLP, ratio meta-loss", 5000),
    ("evaluate_scheduled", "`scheduled`: + nominal Adam term and learned schedule, ratio meta-loss (shipped)", 1300),
    ("evaluate_scheduled_log_6014", "`scheduled` with the log meta-loss", 6014),
    ("evaluate_scheduled_log_7500", "`scheduled` with the log meta-loss, more outer steps", 7500),
    ("evaluate_velo_651", "`velo` H=32/P=16 from an Adam start, log meta-loss", 651),
    ("evaluate_velo", "`velo`, 934 more outer steps (shipped)", 1585),
)


def cell(s: dict) -> str:
    return f"{s['faster_than_1x']:.0%} / {s['median']:.2f}× / {s['iqm']:.2f}×"


def table() -> str:
    lines = ["| optimizer: lever | outer steps | in-family | out-of-family | all | in-family median vs cosine Adam "
             "| diverged | ended above its start |", "|---|---:|---|---|---|---:|---:|---:|"]
    for stem, lever, steps in ROWS:
        path = RESULTS / f"{stem}.json"
        if not path.exists():
            lines.append(f"| {lever} | {steps} | not evaluated | | | | | |")
            continue
        r = E.load_results(path)
        s, c = r["summary"], r["summary_cosine"]
        lines.append(f"| {lever} | {steps} | {cell(s['in-family'])} | {cell(s['out-of-family'])} | {cell(s['all'])} | "
                     f"{c['in-family']['median']:.2f}× | {s['all']['diverged']} | "
                     f"{s['all'].get('ended_above_start', 'n/a')} |")
    tasks = {len(E.load_results(RESULTS / f"{stem}.json")["tasks"]) for stem, _, _ in ROWS
             if (RESULTS / f"{stem}.json").exists()}
    return (f"Each cell: faster than tuned Adam / median / IQM, on {' or '.join(map(str, sorted(tasks)))} suite tasks "
            f"(`python benchmarks/ablation_table.py`).\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    print(table())
