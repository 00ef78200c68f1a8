"""Run a training script whose N-th checkpoint write stops half-way, for tests that SIGKILL a
real process in the middle of writing a checkpoint.

    python tests/helpers/kill_during_save.py N SCRIPT [ARGS ...]

The N-th call of ``torch.save`` made by :mod:`mvit_backbone.checkpoint.saving` writes half of
the bytes to the (temporary) file, flushes them, prints ``WRITING <file>`` and waits to be
killed. Everything else is the script's own code path.
"""
import io
import runpy
import sys
import time

import torch

from mvit_backbone.checkpoint import saving

stop_at, script, *args = int(sys.argv[1]), sys.argv[2], *sys.argv[3:]
calls = 0
real_save = torch.save


class HalfWritingTorch:
    """Stands in for the ``torch`` module inside ``saving``: only ``save`` differs."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def save(obj, f):
        global calls
        calls += 1
        if calls < stop_at:
            return real_save(obj, f)
        buffer = io.BytesIO()
        real_save(obj, buffer)
        f.write(buffer.getvalue()[: buffer.tell() // 2])
        f.flush()
        print(f"WRITING {f.name}", flush=True)
        time.sleep(600)


saving.torch = HalfWritingTorch()
sys.argv = [script, *args]
runpy.run_path(script, run_name="__main__")
