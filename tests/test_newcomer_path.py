"""A newcomer's path, run as printed: `make demo`'s job with a tiny budget, then each command
the demo prints (predictions, evaluation, resuming, analysis), then the README's commands
with the tiny-budget arguments of test_newcomer_readme.CHEAP, and the ONNX export of trained
weights checked with onnxruntime at batch 1 and 2.

Everything runs in a sandbox folder that links the repository's code, configs and weights, so
the commands' relative paths (``output/demo/...``, ``datasets/shapes/...``) stay inside it.
"""
import json
import os
import subprocess

import pytest

from test_newcomer_readme import CHEAP, TINY_DEMO, all_commands, classify

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def run(command: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": REPO}
    done = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """(sandbox, stdout) of a 2-iteration demo on 8 train / 4 val images."""
    sandbox = tmp_path_factory.mktemp("newcomer")
    for name in (".venv", "configs", "tools", "weights", "mvit_backbone", "projects"):
        os.symlink(os.path.join(REPO, name), sandbox / name)
    done = run(".venv/bin/python tools/demo.py --max-iter 2 " + " ".join(f"'{o}'" for o in TINY_DEMO),
               sandbox)
    return sandbox, done.stdout


def printed_next_commands(stdout: str) -> list[str]:
    lines = stdout[stdout.index("Next, from the trained model:"):].splitlines()[1:]
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_demo_saves_its_model_and_prints_commands_that_work(demo_run):
    sandbox, stdout = demo_run
    assert (sandbox / "output/demo/model_final.pth").is_file()
    assert (sandbox / "output/demo/last_checkpoint").read_text() == "model_final.pth"
    commands = printed_next_commands(stdout)
    tools = [c.split()[1] for c in commands]
    assert tools == ["tools/predict.py", "tools/lazyconfig_train_net.py",
                     "tools/lazyconfig_train_net.py", "tools/analyze_model.py"]
    outputs = [run(c, sandbox) for c in commands]

    predict, evaluate, resume, analyze = outputs
    pngs = sorted(os.listdir(sandbox / "output/demo/predict"))
    assert pngs == ["000001.png", "000002.png"]
    assert "detection" in predict.stdout
    assert "copypaste: Task: segm" in evaluate.stdout + evaluate.stderr
    log = resume.stdout + resume.stderr
    assert "Resumed from output/demo/model_final.pth at iteration 2" in log
    assert "train.max_iter=4" in commands[2]
    assert "parameters:" in analyze.stdout and "flops (208x277, 100 detections)" in analyze.stdout
    for out in outputs:  # only the tools' own messages: no third-party warnings
        assert "Warning:" not in out.stderr, out.stderr[-2000:]


def test_readme_commands_run(demo_run):
    sandbox, _ = demo_run
    for command in all_commands():
        kind, prefix = classify(command)
        if kind == "cheap":
            extra = " ".join(f"'{a}'" for a in CHEAP[prefix])
            done = run(f"{command} {extra}", sandbox)
            if "export_onnx.py" in command:
                report = json.loads(done.stdout[done.stdout.index("{"):])
                assert report["checked_batches"] == [1, 2] and report["max_abs_error"] < 1e-4
