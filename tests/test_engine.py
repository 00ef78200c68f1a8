"""The shared training pieces: ETA format, the warm-up + cosine schedule, progress lines, the
peak-memory meter, and the one training loop on a tiny regression problem."""
from __future__ import annotations

import logging
import math
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
from detectron2.solver import LRMultiplier
from detectron2.utils.events import EventStorage

from mvit_backbone.engine import (
    Progress,
    ProgressWriter,
    TrainLoop,
    WarmupCosine,
    format_eta,
    progress_line,
)


def test_format_eta_is_hours_minutes_seconds() -> None:
    assert format_eta(0) == "0:00:00"
    assert format_eta(3725.9) == "1:02:05"
    assert format_eta(90000) == "25:00:00"  # hours are not wrapped into days
    assert format_eta(-5) == "0:00:00"


def test_warmup_cosine_values() -> None:
    schedule = WarmupCosine(peak=1e-3, warmup=0.2, start=1e-6, end=1e-5)
    assert schedule(0.0) == pytest.approx(1e-6)
    assert schedule(0.1) == pytest.approx((1e-6 + 1e-3) / 2)  # half-way up the warm-up
    assert schedule(0.2) == pytest.approx(1e-3)
    assert schedule(0.6) == pytest.approx((1e-3 + 1e-5) / 2)  # half-way down the cosine
    assert schedule(1.0) == pytest.approx(1e-5)
    assert schedule(1.5) == pytest.approx(1e-5)
    values = [schedule(i / 100) for i in range(20, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert WarmupCosine(warmup=0.0)(0.0) == 1.0  # no warm-up: starts at the peak
    with pytest.raises(ValueError, match="warmup"):
        WarmupCosine(warmup=-0.1)


def test_warmup_cosine_drives_detectron2_lr_scheduler() -> None:
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler = LRMultiplier(optimizer, WarmupCosine(warmup=0.5, start=0.1), max_iter=4)
    lrs = []
    for _ in range(4):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs == pytest.approx([0.05, 0.275, 0.5, 0.25])


def test_progress_eta_uses_median_step_time_and_follows_total() -> None:
    progress = Progress(total=10)
    progress.times.extend([1.0, 1.0, 100.0])  # one slow step does not swing the estimate
    progress.done = 3
    assert progress.seconds_per_step() == 1.0
    assert progress.eta_seconds() == 7.0
    progress.total = 5
    assert progress.eta_seconds() == 2.0
    assert progress.line({"loss": 0.5}).startswith("eta: 0:00:02  iter: 3/5  loss: 0.5  time: 1.000")


def test_progress_line_with_memory() -> None:
    line = progress_line(40, 100, 2.0, {"loss": 0.25, "lr": 1e-3}, memory_mib=1234.4, unit="config")
    assert line == "eta: 0:02:00  config: 40/100  loss: 0.25  lr: 0.001  time: 2.000  max_mem: 1234M"


def test_peak_memory_meter_sees_a_freed_allocation() -> None:
    """In a fresh process: glibc settings made by other tests (``keep_freed_memory``) would
    serve the allocation from memory the process already holds."""
    code = """
import torch
from mvit_backbone.engine.memory import PeakMemoryMeter
meter = PeakMemoryMeter("cpu")
with meter:
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, written
    del block
growth = meter.growth_mib()
assert meter.peak_mib() >= meter.base_mib + growth - 1e-6
meter.reset()
print(growth, meter.growth_mib())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    growth, after_reset = map(float, out.stdout.split())
    assert growth > 48
    assert after_reset < 48


def test_progress_writer_prints_the_shared_line(caplog: pytest.LogCaptureFixture) -> None:
    writer = ProgressWriter(max_iter=10, logger=logging.getLogger("test.progress"))
    with caplog.at_level(logging.INFO, logger="test.progress"), EventStorage(0) as storage:
        for _ in range(4):
            storage.put_scalars(total_loss=2.0, loss_cls=1.0, lr=0.01, time=0.5)
            storage.step()
        storage.iter = 3
        writer.write()
    line = caplog.records[-1].getMessage()
    assert line.startswith("eta: 0:00:03  iter: 4/10  loss_cls: 1  total_loss: 2  lr: 0.01  time: 0.500")
    assert "max_mem: " in line
    with caplog.at_level(logging.INFO, logger="test.progress"), EventStorage(0) as storage:
        storage.put_scalars(total_loss=2.0, lr=0.01)  # before IterationTimer's first time
        writer.write()
    assert caplog.records[-1].getMessage().startswith("eta: n/a  iter: 1/10  total_loss: 2  lr: 0.01  max_mem: ")


def _regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    x = torch.randn(64, 4)
    return nn.Linear(4, 1), x, x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])


def test_train_loop_learns_follows_the_schedule_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    model, x, y = _regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = WarmupCosine(warmup=0.25, start=0.1, end=0.0)
    loop = TrainLoop(model, optimizer, lambda b: nn.functional.mse_loss(model(b[0]), b[1]), schedule,
                     log_period=10, log=logging.getLogger("test.loop"))
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    progress = Progress(total=40)
    seen: list[tuple[int, float, float]] = []
    with caplog.at_level(logging.INFO, logger="test.loop"):
        for epoch in range(10):  # one run per epoch, as the ImageNet trainer does
            stats = loop.run(batches, progress, prefix=f"epoch {epoch + 1}/10  ",
                             on_step=lambda i, m: seen.append((i, m["lr"], m["loss"])))
            assert stats["iters"] == 4
    assert [i for i, _, _ in seen] == list(range(40))
    for i, lr, _ in seen:
        assert lr == pytest.approx(0.1 * schedule(i / 40))
    assert seen[-1][2] < 0.1 * seen[0][2]
    lines = [r.getMessage() for r in caplog.records]
    # every 10 iterations and at the end of every run
    logged = [int(line.split("iter: ")[1].split("/")[0]) for line in lines]
    assert logged == [4, 8, 10, 12, 16, 20, 24, 28, 30, 32, 36, 40]
    assert lines[-1].startswith("epoch 10/10  eta: 0:00:00  iter: 40/40  loss: ")
    assert loop.run(batches, progress)["iters"] == 0  # training is done


def test_train_loop_sums_loss_dicts_and_stops_on_nan() -> None:
    model, x, y = _regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loop = TrainLoop(model, optimizer, lambda b: {"a": model(b).mean(), "b": model(b).abs().mean()},
                     WarmupCosine())
    metrics = loop.step(x, iteration=0)
    assert metrics["loss"] == pytest.approx(metrics["a"] + metrics["b"])
    before = model.weight.detach().clone()
    with pytest.raises(FloatingPointError, match="iteration 7"):
        loop.step(torch.full_like(x, math.nan), iteration=7)
    assert torch.equal(model.weight, before)  # no step on a NaN loss


def test_train_loop_paced_by_a_budget_ends_on_time() -> None:
    model, x, y = _regression()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def slow_loss(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        import time

        time.sleep(0.01)
        return nn.functional.mse_loss(model(batch[0]), batch[1])

    loop = TrainLoop(model, optimizer, slow_loss, WarmupCosine(), log_period=1000)
    progress = Progress(total=10**6)
    stats = loop.run(iter(lambda: (x, y), None), progress, budget_seconds=0.5)
    # the total is re-estimated every 5 iterations; sleeping alone allows at most 50
    assert 5 <= stats["iters"] <= 50 and progress.done == progress.total
    assert 0.3 < stats["seconds"] < 1.5


def _stop_together_worker(rank: int, init_file: str, results) -> None:
    """One process of a 2-process gloo run: rank 1 cannot load its second batch; rank 0 has a
    NaN loss in its first step of a second loop."""
    import torch.distributed as dist

    from mvit_backbone.data.checks import DatasetError
    from mvit_backbone.engine.loop import NonFiniteLossError, check_finite_loss_everywhere

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    model, x, y = _regression()
    ddp = nn.parallel.DistributedDataParallel(model)
    loop = TrainLoop(ddp, torch.optim.SGD(ddp.parameters(), lr=0.01),
                     lambda b: nn.functional.mse_loss(ddp(b[0]), b[1]), WarmupCosine())

    def batches(broken_at: int | None):
        for i in range(4):
            if i == broken_at:
                raise DatasetError(f"cannot decode image file /data/img{i}.png (rank {rank})")
            yield x[i * 16:(i + 1) * 16], y[i * 16:(i + 1) * 16]

    outcome = []
    progress = Progress(total=4)
    try:
        loop.run(batches(1 if rank == 1 else None), progress)
    except DatasetError as e:
        outcome.append(("data", progress.done, str(e)))
    try:
        loss = torch.tensor(math.nan if rank == 0 else 1.0)
        check_finite_loss_everywhere(loss, {"loss_cls": loss}, iteration=5)
    except NonFiniteLossError as e:
        outcome.append(("nan", None, str(e)))
    dist.destroy_process_group()
    results[rank] = outcome


def test_bad_data_or_nan_loss_in_one_process_stops_every_process(tmp_path) -> None:
    """Two gloo processes with DDP: bad data met by rank 1 alone, then a NaN loss on rank 0
    alone, stop both processes at the same point (without the agreement the other one would
    wait forever in DDP's gradient all-reduce); each names the failing rank and its message."""
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").Manager().dict()
    context = mp.start_processes(_stop_together_worker, args=(str(tmp_path / "init"), results),
                                 nprocs=2, join=False, start_method="spawn")
    start = time.monotonic()
    while not context.join(timeout=5):
        if time.monotonic() - start > 120:
            for process in context.processes:
                process.kill()
            pytest.fail("a process is stuck waiting for the other")
    rank0, rank1 = results[0], results[1]
    assert [kind for kind, _, _ in rank0] == ["data", "nan"] == [kind for kind, _, _ in rank1]
    assert rank0[0][1] == rank1[0][1] == 1  # both stopped after the one finished iteration
    assert rank1[0][2] == "cannot decode image file /data/img1.png (rank 1)"
    assert rank0[0][2] == "rank 1: cannot decode image file /data/img1.png (rank 1)"
    assert rank0[1][2].startswith("non-finite loss nan at iteration 5")
    assert rank1[1][2].startswith("rank 0: non-finite loss nan at iteration 5")
