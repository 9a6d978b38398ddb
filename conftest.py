"""What the tests share: the project's folder and one way to run its scripts as a user would."""

import os
import pickle
import struct
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


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote the official CIFAR archives (protocol 2): str and bytes as Python 2's str
    (BINSTRING: no _codecs.encode global, read back as bytes by encoding="bytes") and numpy's array rebuilder under
    its numpy 1 name, numpy.core.multiarray._reconstruct. Their only globals are that, numpy.ndarray and numpy.dtype."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        raw = obj.encode() if isinstance(obj, str) else obj
        size = bytes([len(raw)]) if len(raw) < 256 else struct.pack("<i", len(raw))
        self.write((pickle.SHORT_BINSTRING if len(raw) < 256 else pickle.BINSTRING) + size + raw)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if getattr(obj, "__name__", None) == "_reconstruct":  # numpy 2 would write numpy._core.multiarray
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            return self.memoize(obj)
        super().save_global(obj, name)


def write_cifar_file(path, batch):
    """One file of the official CIFAR python archives: a dict of bytes keys, numpy arrays and lists, as Py2Pickler."""
    with open(path, "wb") as f:
        Py2Pickler(f, protocol=2).dump(batch)


def pytest_collection_modifyitems(items):
    """With pytest-xdist's `--dist loadgroup`, the Slurm tests share one worker and so one cluster."""
    for item in items:
        if item.module.__name__ == "test_slurm":
            item.add_marker(pytest.mark.xdist_group("slurm"))
