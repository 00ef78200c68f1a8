"""The tools as a newcomer meets them: --help with defaults and an example, overrides after the
flags, one-line errors (no traceback unless --debug), CPU fallback, class names, the message
when no detection passes the threshold, benchmark output under output/.

The tools run in this process (``runpy``, as ``python tools/x.py`` runs them), so the test pays
for detectron2's import once.
"""
import logging
import os
import runpy
import sys

import pytest
import torch

from mvit_backbone.data.coco_synthetic import SHAPE_CLASSES

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs/Demo/mask_rcnn_mvitv2_demo.py")
COCO_CONFIG = os.path.join(REPO, "configs/COCO-InstanceSegmentation/mask_rcnn_mvitv2_t_3x.py")
TOOLS = ["analyze_model", "benchmark_backbone", "convert_checkpoint", "demo", "demo_pretrain",
         "export_onnx", "lazyconfig_train_net", "predict", "train_net"]


def run_tool(name: str, *argv: str) -> int:
    """``python tools/<name>.py argv...`` in this process; returns the exit status."""
    old = sys.argv
    sys.argv = [f"tools/{name}.py", *argv]
    try:
        runpy.run_path(os.path.join(REPO, "tools", f"{name}.py"), run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = old
    return 0


@pytest.fixture
def mvit_log(caplog):
    """caplog that sees the package's log (detectron2's setup_logger stops its propagation)."""
    logger = logging.getLogger("mvit_backbone")
    propagate = logger.propagate
    # records reach caplog through this handler only, once, whatever the tools set
    logger.propagate = False
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.propagate = propagate


@pytest.fixture
def tiny_demo_data(tmp_path):
    """Overrides that point the demo config at a tiny dataset, written in tmp_path."""
    from mvit_backbone.data.coco_synthetic import write_coco_split

    write_coco_split(tmp_path / "shapes", "train", 2, 0)
    write_coco_split(tmp_path / "shapes", "val", 2, 1)
    return [f"demo.dataset_root={tmp_path / 'shapes'}", "demo.splits={train:[2,0],val:[2,1]}"]


@pytest.mark.parametrize("tool", TOOLS)
def test_help_shows_defaults_and_an_example(tool, capsys):
    assert run_tool(tool, "--help") == 0
    out = capsys.readouterr().out
    assert "example:\n" in out and "--debug" in out
    if tool not in ("convert_checkpoint",):  # every other tool has a flag with a default
        assert "(default: " in out


def test_analyze_model_takes_overrides_after_multi_value_flags(capsys):
    """--tasks and --config-file take several values; key=value after them are overrides."""
    assert run_tool("analyze_model", "--config-file", DEMO_CONFIG, "--tasks", "parameter") == 0
    default = capsys.readouterr().out.strip().splitlines()[-1]
    assert run_tool("analyze_model", "--config-file", DEMO_CONFIG, "--tasks", "parameter",
                    "model.roi_heads.num_classes=40") == 0
    more_classes = capsys.readouterr().out.strip().splitlines()[-1]
    assert "parameters:" in default and "parameters:" in more_classes
    assert default != more_classes  # the override reached the model


def test_config_path_typo_is_one_line(capsys):
    assert run_tool("analyze_model", "--config-file", DEMO_CONFIG.replace("demo.py", "dmeo.py")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err
    assert err.startswith("error: config file") and "did you mean 'mask_rcnn_mvitv2_demo.py'" in err


def test_unknown_override_key_names_the_close_match_and_the_valid_keys(capsys):
    assert run_tool("analyze_model", "--config-file", DEMO_CONFIG,
                    "model.backbone.bottom_up.window_mdoe=none") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "did you mean 'window_mode'" in err and "valid keys:" in err and "embed_dim" in err


def test_debug_shows_the_traceback():
    with pytest.raises(Exception, match="window_mdoe"):
        run_tool("analyze_model", "--debug", "--config-file", DEMO_CONFIG,
                 "model.backbone.bottom_up.window_mdoe=none")


def test_unregistered_dataset_is_one_line_and_cuda_config_falls_back_to_cpu(capsys, mvit_log):
    code = run_tool("lazyconfig_train_net", "--config-file", COCO_CONFIG,
                        "dataloader.train.dataset.names=my_trian", "dataloader.test.dataset.names=my_val")
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2
    assert err.startswith("error: dataset 'my_trian'") and "--register-coco" in err
    if not torch.cuda.is_available():  # train.device is cuda in the COCO configs
        assert "no GPU found: running on the CPU (train.device=cpu)" in mvit_log.text


def test_yacs_unknown_key_is_one_line(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("VERSION: 2\nMODEL:\n  BACKBONE:\n    NAME: build_mvitv2_fpn_backbone\n")
    assert run_tool("train_net", "--config-file", str(config), "MODEL.MVITV2.VARIANTT", "T") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown config key 'MODEL.MVITV2.VARIANTT'" in err and "did you mean 'VARIANT'" in err


def test_predict_errors_are_one_line(tmp_path, tiny_demo_data, capsys):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("not pixels")
    assert run_tool("predict", "--config-file", DEMO_CONFIG, "--weights", "x.pth",
                    str(not_an_image), *tiny_demo_data) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {not_an_image} is not an image file that can be read (UnidentifiedImageError)"

    image = tmp_path / "shapes" / "val" / "000001.jpg"
    assert run_tool("predict", "--config-file", DEMO_CONFIG, "--weights", str(tmp_path / "no.pth"),
                    str(image), *tiny_demo_data) == 2
    assert "no.pth' does not exist" in capsys.readouterr().err

    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"PK\x03\x04 truncated")
    assert run_tool("predict", "--config-file", DEMO_CONFIG, "--weights", str(corrupt),
                    str(image), *tiny_demo_data) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "corrupt.pth" in err


def test_predict_says_when_nothing_passes_the_threshold(tmp_path, tiny_demo_data, capsys):
    """The shipped pre-trained backbone in an untrained detector: nothing scores 0.99."""
    out = tmp_path / "out"
    image = tmp_path / "shapes" / "val" / "000001.jpg"
    assert run_tool("predict", "--config-file", DEMO_CONFIG,
                    "--weights", os.path.join(REPO, "weights/mvitv2_demo_shapes_pretrain.pth"),
                    "--output", str(out), "--score-thresh", "0.99", str(image),
                    *tiny_demo_data) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"{out / '000001.png'}: no detection with score >= 0.99")
    assert (out / "000001.png").is_file()


def test_class_names_come_from_the_registered_dataset(tmp_path):
    from detectron2.config import LazyConfig

    from mvit_backbone.engine.cli import register_config_datasets
    from mvit_backbone.engine.predict import dataset_metadata

    cfg = LazyConfig.load(DEMO_CONFIG)
    cfg = LazyConfig.apply_overrides(cfg, [f"demo.dataset_root={tmp_path}",
                                           "demo.splits={train:[1,0],val:[1,1]}"])
    register_config_datasets(cfg, validate=False)
    assert dataset_metadata("shapes_val").thing_classes == list(SHAPE_CLASSES)


def test_cpu_fallback_for_lazy_and_yacs_configs(mvit_log):
    if torch.cuda.is_available():
        pytest.skip("a GPU is there: nothing falls back")
    from detectron2.config import LazyConfig, get_cfg

    from mvit_backbone.engine.cli import use_cpu_without_gpu

    lazy = LazyConfig.load(COCO_CONFIG)
    assert lazy.train.device == "cuda"
    yacs = get_cfg()
    yacs.MODEL.DEVICE = "cuda"
    assert use_cpu_without_gpu(lazy) and use_cpu_without_gpu(yacs)
    assert not use_cpu_without_gpu(lazy)  # already on the CPU: nothing to say
    assert lazy.train.device == "cpu" and yacs.MODEL.DEVICE == "cpu"
    assert mvit_log.text.count("no GPU found") == 2


def test_benchmark_writes_under_output_and_warns_about_one_repeat(tmp_path, monkeypatch, mvit_log):
    with open(os.path.join(REPO, ".gitignore")) as f:
        assert "output/" in f.read().split()
    monkeypatch.chdir(tmp_path)
    assert run_tool("benchmark_backbone", "--variants", "T", "--sizes", "64", "--batches", "1",
                    "--modes", "fwd", "--repeats", "1", "--no-memory", "--threads", "1") == 0
    assert "--repeats 1: a median of fewer than 3" in mvit_log.text
    for suffix in (".md", ".json", ".png"):
        assert (tmp_path / "output" / f"benchmark_backbone{suffix}").is_file()
    assert sorted(os.listdir(tmp_path)) == ["output"]


def test_no_third_party_warnings_at_import():
    import subprocess

    out = subprocess.run([sys.executable, "-c", "import mvit_backbone.engine"], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0 and out.stderr == ""
