"""tools/benchmark_backbone.py end to end, and the allocator setting of its timings."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# A 64 MiB tensor allocated, written and freed 4 times after 6 warm-up rounds: by default glibc
# maps (and the kernel faults in) fresh pages every time; with keep_freed_memory() they are
# reused once the heap has grown its free blocks (the warm-up: 2-4 rounds fault here).
FAULTS_SCRIPT = """
import resource, sys, torch
from mvit_backbone.benchmark import keep_freed_memory
if sys.argv[1] == "keep":
    keep_freed_memory()
for _ in range(6):
    torch.empty(16 * 2**20).fill_(1.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
    torch.empty(16 * 2**20).fill_(1.0)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", FAULTS_SCRIPT, mode], check=True,
                         capture_output=True, text=True, cwd=REPO)
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_reuses_large_blocks_without_page_faults():
    pages = 4 * 64 * 2**20 // 4096
    assert _faults("keep") < 0.01 * pages
    # the default allocator returns the blocks (faulted in again, in 4 KiB or 2 MiB pages)
    assert _faults("default") >= 4 * 32


@pytest.mark.slow
def test_benchmark_tool_writes_table_json_and_plot(tmp_path):
    out = tmp_path / "bench"
    cmd = [sys.executable, "tools/benchmark_backbone.py", "--variants", "T", "--sizes", "64x96",
           "--batches", "1", "--repeats", "1", "--threads", "1", "--keep-freed-memory",
           "--out", str(out)]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["mode"], r["height"], r["width"]) for r in rows] == [
        ("fwd", 64, 96), ("fwd+bwd", 64, 96)]
    for r in rows:
        assert r["d2_s"] > 0 and r["ours_s"] > 0
        assert r["time_ratio"] == pytest.approx(r["ours_s"] / r["d2_s"])
        assert r["d2_mib"] > 0 and r["ours_mib"] > 0
    table = out.with_suffix(".md").read_text()
    assert "| MViTv2-T | 64×96 | 1 | fwd+bwd |" in table
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kernel_floor_counts_matmul_and_attention_kernels_of_a_training_step():
    from mvit_backbone.benchmark import kernel_floor

    row = kernel_floor("T", 64, 96, 1, "fwd+bwd", repeats=1)
    # training on CPU runs the folded flash kernel forward and backward, and Linear layers
    assert row["matmul_s"] > 0 and row["attention_s"] > 0
    assert row["floor_ratio"] == pytest.approx((row["matmul_s"] + row["attention_s"]) / row["d2_s"])
    assert row["time_ratio"] == pytest.approx(row["ours_s"] / row["d2_s"])


def test_attention_kernels_time_every_implementation_with_its_flop_rate():
    from mvit_backbone.benchmark import attention_kernels

    windows, heads, q_window, kv_window, dim = 2, 2, 8, 4, 16
    result = attention_kernels(windows, heads, q_window, kv_window, dim=dim, repeats=1)
    assert set(result) == {"attend", "explicit_attend", "sdpa_attend", "folded_attend"}
    gflop = 4 * windows * heads * q_window**2 * kv_window**2 * dim / 1e9
    for times in result.values():
        assert times["fwd"] > 0 and times["fwd+bwd"] > 0
        assert times["fwd_gflops"] == pytest.approx(gflop / times["fwd"])


def test_timm_comparison_runs_both_modes_on_the_same_function(tmp_path):
    import torch

    from mvit_backbone.benchmark import (
        build_timm_pair, plot_timm, run_timm_benchmark, timm_markdown,
    )

    reference, ours = build_timm_pair("mvitv2_t")
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=0, atol=1e-4)
    lines: list[str] = []
    # the timing plumbing, at a small size
    results = run_timm_benchmark(size=64, batches={"fwd": 1, "fwd+bwd": 1}, repeats=1,
                                 log=lines.append)
    assert [(r.mode, r.batch, r.size) for r in results] == [("fwd", 1, 64), ("fwd+bwd", 1, 64)]
    for r in results:
        assert r.timm_s > 0 and r.ours_s > 0 and r.time_ratio == pytest.approx(r.ours_s / r.timm_s)
    assert lines[-1].startswith("eta: 0:00:00  mode: 2/2")
    assert "| `mvitv2_t` / timm `mvitv2_tiny` | 64² | 1 | fwd+bwd |" in timm_markdown(results)
    plot_timm(results, str(tmp_path / "timm.png"))
    assert (tmp_path / "timm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_timm_kernel_floor_profiles_both_classifiers():
    from mvit_backbone.benchmark import timm_kernel_floor

    rows = timm_kernel_floor(size=64, batches={"fwd+bwd": 1}, repeats=1, profiled_steps=1)
    (row,) = rows
    assert row["mode"] == "fwd+bwd" and row["timm_model"] == "mvitv2_tiny"
    # both steps run Linear layers and attention matmuls (timm: bmm + softmax; ours: its node)
    for prefix in ("", "timm_"):
        assert row[f"{prefix}matmul_s"] > 0 and row[f"{prefix}attention_s"] > 0
    assert row["floor_ratio"] == pytest.approx((row["matmul_s"] + row["attention_s"]) / row["timm_s"])
    assert row["time_ratio"] == pytest.approx(row["ours_s"] / row["timm_s"])
    # the profiled step holds its kernels and more
    assert row["profiled_step_s"] > row["matmul_s"] + row["attention_s"]
    assert row["timm_profiled_step_s"] > row["timm_matmul_s"] + row["timm_attention_s"]
