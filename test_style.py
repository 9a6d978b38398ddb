"""The project's promises on its own code: formatted and lint-clean as ruff.toml says (./run_all.sh --test checks both
before pytest), and the line budget, counted on the code as `ruff format` writes it, blank lines and docstrings too."""

import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
LOOP = ["cli.py", "models.py", "prune.py", "tweaks.py", "data.py", "runs.py", "train.py", "hessian.py", "landscape.py"]
TOOLS = ["report.py", "bench.py"]
BUDGET = [(LOOP, 2000), (TOOLS, 600)]  # the loop and its analysis; the tools on top
BUDGET += [(["grid.py"], 300), (["bill.py"], 300), (["runner.py"], 300)]  # the grid, its bill, its runner: each alone


def formatted_lines(folder, name):
    """The lines of folder/name once `ruff format` (with the project's ruff.toml) has written it."""
    with open(os.path.join(folder, name)) as f:
        source = f.read()
    command = [sys.executable, "-m", "ruff", "format", "--config", os.path.join(HERE, "ruff.toml")]
    out = subprocess.run([*command, "--stdin-filename", name, "-"], input=source, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return len(out.stdout.splitlines())


def over_budget(folder):
    """One line per group of files over its limit, naming each file's count; empty if every group is within."""
    failures = []
    for files, limit in BUDGET:
        counts = {name: formatted_lines(folder, name) for name in files}
        if sum(counts.values()) >= limit:
            each = ", ".join(f"{name} {n}" for name, n in counts.items())
            failures.append(f"{sum(counts.values())} lines, limit {limit}: {each}")
    return failures


def test_the_loop_and_the_tools_keep_their_line_budget():
    assert not over_budget(HERE)


def test_the_budget_fails_naming_the_files_when_a_module_grows(tmp_path):
    for name in LOOP + TOOLS + ["grid.py", "bill.py", "runner.py"]:
        shutil.copy(os.path.join(HERE, name), tmp_path)
    grown = sum(formatted_lines(HERE, name) for name in LOOP)
    with open(tmp_path / "train.py", "a") as f:
        f.write("".join(f"\n\ndef extra_{i}():\n    return {i}\n" for i in range((2000 - grown) // 4 + 1)))
    (failure,) = over_budget(tmp_path)
    assert failure.startswith(f"{formatted_lines(tmp_path, 'train.py') - formatted_lines(HERE, 'train.py') + grown} ")
    assert "limit 2000: cli.py " in failure and "models.py " in failure and "landscape.py " in failure
