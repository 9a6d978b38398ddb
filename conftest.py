"""What the tests share: the project's folder and one way to run its scripts as a user would."""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # 2 cores shared with other jobs: one thread each is faster


def run_script(script, *args, cwd=HERE, env=ONE_THREAD, umask=None):
    """`python script args...` in a fresh process, its output captured as text."""
    return subprocess.run(
        [sys.executable, os.path.join(HERE, script), *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
    )


def pytest_collection_modifyitems(items):
    """With pytest-xdist's `--dist loadgroup`, the Slurm tests share one worker and so one cluster."""
    for item in items:
        if item.module.__name__ == "test_slurm":
            item.add_marker(pytest.mark.xdist_group("slurm"))
