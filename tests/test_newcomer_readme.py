"""The README's commands cannot drift: every command in a ```bash block of README.md and
projects/MViTv2/README.md is either run (with a tiny budget, after a tiny demo run, by the slow
test in test_newcomer_path.py) or listed here as too expensive, with the reason; the flags of
every command must exist in its tool's --help.
"""
import os
import re
import runpy
import shlex
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
READMES = ("README.md", "projects/MViTv2/README.md")
DEMO = ".venv/bin/python tools/lazyconfig_train_net.py --config-file configs/Demo/mask_rcnn_mvitv2_demo.py"
# the tiny dataset the slow test's demo run writes (and the commands must then use)
TINY_DEMO = ["demo.splits={train:[8,0],val:[4,1]}"]

# command prefix -> arguments appended for a tiny budget; run after a tiny demo run
CHEAP: dict[str, list[str]] = {
    ".venv/bin/python tools/predict.py --config-file configs/Demo/": TINY_DEMO,
    f"{DEMO} --eval-only": TINY_DEMO,
    f"{DEMO} --resume": TINY_DEMO + ["train.max_iter=4"],
    f"{DEMO} train.output_dir=": TINY_DEMO + ["train.max_iter=2"],
    ".venv/bin/python tools/analyze_model.py --config-file configs/Demo/": [],
    ".venv/bin/python tools/export_onnx.py --config-file configs/Demo/": [],
}
# command prefix -> why it is not run (its flags are still checked against --help)
EXPENSIVE: dict[str, str] = {
    "make demo": "12 minutes; its job runs with a tiny budget in test_newcomer_path.py",
    "make test": "the whole test suite",
    "python tools/lazyconfig_train_net.py": "COCO training and evaluation on GPUs",
    "python tools/train_net.py": "COCO training with a detectron2 model-zoo YAML",
    ".venv/bin/python projects/MViTv2/train_imagenet.py": "6-7 minutes of training on 2 cores",
    "torchrun": "ImageNet on 8 GPUs",
    "python projects/MViTv2/train_imagenet.py": "needs ImageNet and its weights",
    ".venv/bin/python projects/MViTv2/train_video.py": "about 10 minutes of training on 2 cores; "
    "the same entry point runs with a tiny budget in test_video_train.py",
}


def readme_commands(path: str) -> list[str]:
    """The commands of the ```bash blocks of ``path``: comment lines dropped, continuation
    lines joined, trailing comments removed."""
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        block = block.replace("\\\n", " ")
        for line in block.splitlines():
            line = line.split(" # ")[0].strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def all_commands() -> list[str]:
    return [c for readme in READMES for c in readme_commands(readme)]


def classify(command: str) -> tuple[str, str]:
    """("cheap" or "expensive", the matching prefix); the longest prefix wins."""
    matches = [(len(p), "cheap", p) for p in CHEAP if command.startswith(p)]
    matches += [(len(p), "expensive", p) for p in EXPENSIVE if command.startswith(p)]
    if not matches:
        raise AssertionError(f"README command in neither CHEAP nor EXPENSIVE: {command}")
    _, kind, prefix = max(matches)
    return kind, prefix


def script_help(script: str, capsys) -> str:
    """``--help`` of a repository script, run in this process."""
    old = sys.argv
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(os.path.join(REPO, script), run_name="__main__")
    except SystemExit:
        pass
    finally:
        sys.argv = old
    return capsys.readouterr().out


def test_every_readme_command_is_run_or_listed_as_expensive():
    commands = all_commands()
    kinds = [classify(c)[0] for c in commands]
    assert kinds.count("cheap") >= len(CHEAP)  # the newcomer's path is in the README
    assert all(reason for reason in EXPENSIVE.values())


def test_readme_command_flags_exist(capsys):
    helps: dict[str, str] = {}
    for command in all_commands():
        tokens = shlex.split(command)
        if tokens[0] == "make":
            with open(os.path.join(REPO, "Makefile")) as f:
                assert re.search(rf"^{tokens[1]}:", f.read(), flags=re.M), command
            continue
        scripts = [t for t in tokens if t.endswith(".py") and "/" in t and os.path.isfile(
            os.path.join(REPO, t))]
        if not scripts:
            assert classify(command)[0] == "expensive", command
            continue
        script = scripts[0]
        if script not in helps:
            helps[script] = script_help(script, capsys)
        flags = {t.split("=")[0] for t in tokens[tokens.index(script) + 1:] if t.startswith("--")}
        missing = [f for f in flags if not re.search(rf"{re.escape(f)}\b", helps[script])]
        assert not missing, f"{command}: {missing} not in {script} --help"


@pytest.mark.parametrize("readme", READMES)
def test_readme_has_commands(readme):
    assert readme_commands(readme)
