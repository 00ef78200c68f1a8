"""Install detectron2's pure-Python code from the ``sal-detectron2`` wheel.

detectron2 has no release on the package index. ``sal-detectron2==0.7.2`` is an upstream
snapshot published as a CPython-3.10-only wheel. This script downloads it, removes the
compiled extension (``detectron2/_C*.so``) and the wheel's top-level ``tools`` package,
retags it ``py3-none-any`` and installs it with its dependencies. Nothing in mvit_backbone
needs detectron2's compiled ops (ROIAlign/NMS come from torchvision; COCO evaluation runs
with ``use_fast_impl=False``).

An already importable detectron2 (for example a CUDA build from source) is left alone.

Usage: python tools/install_detectron2.py [--force]
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile

WHEEL = "sal-detectron2==0.7.2"


def _run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.check_call(cmd)


def detectron2_works() -> bool:
    if importlib.util.find_spec("detectron2") is None:
        return False
    probe = "import detectron2.modeling, detectron2.engine, detectron2.evaluation"
    return subprocess.call([sys.executable, "-c", probe], stderr=subprocess.DEVNULL) == 0


def _strip_wheel(unpacked: str) -> None:
    for so in glob.glob(os.path.join(unpacked, "detectron2", "_C*.so")):
        os.remove(so)
    shutil.rmtree(os.path.join(unpacked, "tools"), ignore_errors=True)
    (dist_info,) = glob.glob(os.path.join(unpacked, "*.dist-info"))
    top_level = os.path.join(dist_info, "top_level.txt")
    with open(top_level) as f:
        names = [n for n in f.read().split() if n != "tools"]
    with open(top_level, "w") as f:
        f.write("\n".join(names) + "\n")
    wheel_meta = os.path.join(dist_info, "WHEEL")
    with open(wheel_meta) as f:
        lines = f.read().splitlines()
    lines = [ln for ln in lines if ln.strip() and not ln.startswith(("Tag:", "Root-Is-Purelib:"))]
    lines += ["Root-Is-Purelib: true", "Tag: py3-none-any"]
    with open(wheel_meta, "w") as f:
        f.write("\n".join(lines) + "\n")
    record = os.path.join(dist_info, "RECORD")
    if os.path.exists(record):
        os.remove(record)  # `wheel pack` writes a fresh one


def install(force: bool = False) -> None:
    if not force and detectron2_works():
        print("detectron2 already importable; leaving it alone.")
        return
    pip = [sys.executable, "-m", "pip"]
    with tempfile.TemporaryDirectory() as tmp:
        _run(pip + ["download", "--no-deps", "--only-binary=:all:", "--python-version", "3.10",
                    "-d", tmp, WHEEL])
        (whl,) = glob.glob(os.path.join(tmp, "*.whl"))
        unpack_dir = os.path.join(tmp, "unpacked")
        _run([sys.executable, "-m", "wheel", "unpack", whl, "-d", unpack_dir])
        (unpacked,) = glob.glob(os.path.join(unpack_dir, "*"))
        _strip_wheel(unpacked)
        out_dir = os.path.join(tmp, "dist")
        os.makedirs(out_dir)
        _run([sys.executable, "-m", "wheel", "pack", unpacked, "-d", out_dir])
        (fixed,) = glob.glob(os.path.join(out_dir, "*.whl"))
        _run(pip + ["install", "--force-reinstall", "--no-deps", fixed])
    if not detectron2_works():
        raise SystemExit("detectron2 was installed but does not import; see the errors above.")
    print("detectron2 installed (pure Python).")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="reinstall even if detectron2 imports")
    install(parser.parse_args().force)
