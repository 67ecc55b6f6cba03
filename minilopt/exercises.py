"""Generate the learner notebooks in `exercises/` from `solutions/`.

`solutions/NN_topic.ipynb` is the single source. In its code cells, an answer sits
between whole-line markers:

    ### BEGIN SOLUTION
    ### TASK: update the step size from the last two gradients
    ### HINT: the loss after a step depends on alpha through that step
    ### HINT: one line: alpha plus kappa times a scalar built from g and g_prev
    alpha = alpha + kappa * jnp.vdot(g, g_prev)
    ### END SOLUTION

The exercise version replaces the block, markers included, by a
`raise NotImplementedError("Exercise: <task>")` at the marker's indentation: the
stub names the task, not the answer. The hints escalate (first the idea, then the
shape of the code, never the line itself) and go, folded, into a markdown cell
right after the code cell, so a learner opens one at a time. A block with hints but
no TASK keeps them in the stub's message. Outputs and execution counts are dropped,
so regenerating is byte-identical.

    python -m minilopt.exercises            # rewrite exercises/
    python -m minilopt.exercises --check    # exit 1 if exercises/ is stale
"""
from __future__ import annotations

import argparse
import copy
import json
import pathlib
import sys

BEGIN, END, HINT, TASK = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:", "### TASK:"
ROOT = pathlib.Path(__file__).resolve().parent.parent


def blank_source(source: str, where: str = "cell") -> str:
    """The source with every solution block replaced by a NotImplementedError."""
    return _blank(source, where)[0]


def _blank(source: str, where: str) -> tuple[str, list[list[str]]]:
    """(blanked source, the folded hints of each block that names a TASK)."""
    out, inside, folded, indent = [], False, [], ""
    for number, line in enumerate(source.splitlines(keepends=True), 1):
        stripped = line.strip()
        if stripped == BEGIN:
            if inside:
                raise ValueError(f"{where}, line {number}: nested {BEGIN}; close the first block with {END}")
            inside, task, hints, indent = True, None, [], line[: len(line) - len(line.lstrip())]
        elif stripped == END:
            if not inside:
                raise ValueError(f"{where}, line {number}: {END} without a {BEGIN} before it")
            inside = False
            if task is None:  # no TASK line: the hints are the stub's message
                message = " ".join(hints) or "see the lesson above"
            else:
                message = task + (" (stuck? open the hints below this cell)" if hints else "")
                if hints:
                    folded.append(hints)
            out.append(f"{indent}raise NotImplementedError({('Exercise: ' + message)!r})\n")
        elif inside:
            if stripped.startswith(HINT):
                hints.append(stripped[len(HINT):].strip())
            elif stripped.startswith(TASK):
                task = stripped[len(TASK):].strip()
        else:
            out.append(line)
    if inside:
        raise ValueError(f"{where}: {BEGIN} is never closed; add a whole-line {END}")
    return "".join(out), folded


def hints_markdown(hints: list[str]) -> str:
    """Escalating hints as folded <details> blocks (JupyterLab renders them closed)."""
    parts = ["**Stuck?** Open one hint at a time: the first gives the idea, the next the shape of the code.\n"]
    for number, hint in enumerate(hints, 1):
        parts.append(f"\n<details><summary>Hint {number}</summary>\n\n{hint}\n\n</details>\n")
    return "".join(parts)


def make_exercise(notebook: dict, where: str = "notebook") -> dict:
    """A copy of a solutions notebook (as JSON) with answers blanked, outputs cleared,
    and each blank's folded hints in a markdown cell after it."""
    nb = copy.deepcopy(notebook)
    cells = []
    for i, cell in enumerate(nb["cells"]):
        cell.get("metadata", {}).pop("execution", None)
        cells.append(cell)
        if cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        blanked, folded = _blank(src, f"{where}, cell {i}")
        cell["source"] = blanked.splitlines(keepends=True)
        cell["outputs"], cell["execution_count"] = [], None
        for k, hints in enumerate(folded):
            hint_cell = {"cell_type": "markdown", "metadata": {},
                         "source": hints_markdown(hints).splitlines(keepends=True)}
            if "id" in cell:  # nbformat >= 4.5: ids are unique and stable across regenerations
                hint_cell["id"] = f"{cell['id']}-hints{k or ''}"[:64]
            cells.append(hint_cell)
    nb["cells"] = cells
    return nb


def render(notebook: dict) -> str:
    return json.dumps(notebook, indent=1, ensure_ascii=False, sort_keys=True) + "\n"


def generate(solutions=ROOT / "solutions", exercises=ROOT / "exercises") -> dict[str, str]:
    """{file name: exercise JSON text} for every notebook in `solutions`."""
    result = {}
    for path in sorted(pathlib.Path(solutions).glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        result[path.name] = render(make_exercise(nb, str(path)))
    return result


def stale(solutions=ROOT / "solutions", exercises=ROOT / "exercises") -> list[str]:
    """Names of exercise notebooks that are missing, different, or orphaned."""
    wanted = generate(solutions)
    exercises = pathlib.Path(exercises)
    have = {p.name for p in exercises.glob("*.ipynb")}
    bad = [n for n, text in wanted.items() if not (exercises / n).exists()
           or (exercises / n).read_text(encoding="utf-8") != text]
    return sorted(bad + [n for n in have - set(wanted)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report stale exercises")
    args = parser.parse_args(argv)
    if args.check:
        bad = stale()
        if bad:
            print("exercises/ is out of date with solutions/: " + ", ".join(bad)
                  + "\nrun: python -m minilopt.exercises", file=sys.stderr)
            return 1
        print("exercises/ is in sync with solutions/")
        return 0
    out = ROOT / "exercises"
    out.mkdir(exist_ok=True)
    wanted = generate()
    for name, text in wanted.items():
        (out / name).write_text(text, encoding="utf-8")
    for orphan in set(p.name for p in out.glob("*.ipynb")) - set(wanted):
        (out / orphan).unlink()
    print(f"wrote {len(wanted)} exercise notebooks to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
