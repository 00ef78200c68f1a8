"""Run the ImageNet entry point under ``torchrun`` with two gloo processes."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
ENTRY = REPO / "projects" / "MViTv2" / "train_imagenet.py"


def torchrun_imagenet(cfg, workdir: Path, processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node processes train_imagenet.py --config`` a YAML
    file of ``cfg`` (a ``TrainConfig``) written into ``workdir``; one thread per process."""
    cfg_file = workdir / "torchrun_config.yaml"
    cfg_file.write_text(yaml.safe_dump({k: list(v) if isinstance(v, tuple) else v
                                        for k, v in vars(cfg).items()}))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           str(processes), str(ENTRY), "--config", str(cfg_file)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=workdir)
