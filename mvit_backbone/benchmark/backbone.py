"""Speed and memory of ``mvit_backbone.MViT`` against ``detectron2.modeling.MViT``.

Both models are built with detectron2's arguments for an MViTv2 variant and share the same
weights (detectron2's ``state_dict`` loaded into ours). Timings are interleaved in one process
(reference, ours, reference, ours, ...) after warm-up, so load from other processes hits both
alike; the reported figure per model is the median, and the ratio is ours / detectron2.
Peak memory is measured per configuration in a fresh subprocess (``python -m
mvit_backbone.benchmark SPEC``) by :class:`~mvit_backbone.engine.memory.PeakMemoryMeter`: on CPU
the growth of peak RSS over the RSS before the step, on CUDA ``torch.cuda.max_memory_allocated``.

Shapes: inputs are (batch, 3, H, W) images; "fwd" runs the backbone under ``no_grad`` in eval
mode, "fwd+bwd" runs it in train mode and back-propagates the sum of all feature maps.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..engine.memory import PeakMemoryMeter
from ..engine.progress import Progress

MODES = ("fwd", "fwd+bwd")


@dataclass
class BenchResult:
    """One configuration: medians in seconds, peak memory in MiB, ratios ours / detectron2."""

    variant: str
    height: int
    width: int
    batch: int
    mode: str
    d2_s: float
    ours_s: float
    time_ratio: float
    d2_mib: float | None = None
    ours_mib: float | None = None
    mem_ratio: float | None = None


def reference_kwargs(variant: str) -> dict:
    """detectron2 ``MViT`` arguments of an MViTv2 variant, as in detectron2's COCO configs."""
    from ..mvit import mvitv2_variant

    return dict(
        mvitv2_variant(variant),
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        rel_pos_zero_init=False,
        drop_path_rate=0.0,
    )


def build_model(impl: str, variant: str, **ours_kwargs) -> nn.Module:
    """``impl="d2"``: ``detectron2.modeling.MViT``; ``"ours"``: ``mvit_backbone.MViT``."""
    if impl == "d2":
        from detectron2.modeling import MViT as D2MViT

        return D2MViT(**reference_kwargs(variant))
    from ..detection import MViT

    return MViT(**reference_kwargs(variant), **ours_kwargs)


def build_pair(variant: str, **ours_kwargs) -> tuple[nn.Module, nn.Module]:
    """(detectron2 model, our model) with identical weights."""
    torch.manual_seed(0)
    ref = build_model("d2", variant)
    ours = build_model("ours", variant, **ours_kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def run_step(model: nn.Module, x: torch.Tensor, mode: str) -> None:
    """One forward ("fwd", no_grad, eval) or forward+backward ("fwd+bwd", train: the sum of
    every output, a backbone's feature maps or a classifier's logits, back-propagated)."""
    if mode == "fwd":
        model.eval()
        with torch.no_grad():
            model(x)
    elif mode == "fwd+bwd":
        model.train()
        model.zero_grad(set_to_none=True)
        out = model(x)
        sum(o.float().sum() for o in (out.values() if isinstance(out, dict) else [out])).backward()
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if x.is_cuda:
        torch.cuda.synchronize()


def interleaved(
    steps: Sequence[tuple[str, Callable[[], object]]], repeats: int = 3, warmup: int = 1
) -> dict[str, list[dict[str, float]]]:
    """Runs the named steps in turn (a, b, a, b, ...), ``warmup`` rounds unrecorded, then
    ``repeats`` rounds; per name, one record per round: wall seconds and, from ``getrusage``,
    minor page faults, user and system seconds."""
    records: dict[str, list[dict[str, float]]] = {name: [] for name, _ in steps}
    for round_index in range(warmup + repeats):
        for name, step in steps:
            before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
            step()
            wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
            if round_index >= warmup:
                records[name].append(dict(
                    wall_s=wall, minor_faults=after.ru_minflt - before.ru_minflt,
                    user_s=after.ru_utime - before.ru_utime, sys_s=after.ru_stime - before.ru_stime,
                ))
    return records


def _median_wall(records: list[dict[str, float]]) -> float:
    return statistics.median(r["wall_s"] for r in records)


def time_pair(
    ref: nn.Module, ours: nn.Module, x: torch.Tensor, mode: str, repeats: int = 3, warmup: int = 1
) -> tuple[float, float]:
    """Interleaved timing; returns the median seconds of (reference, ours)."""
    records = interleaved([("ref", partial(run_step, ref, x, mode)),
                           ("ours", partial(run_step, ours, x, mode))], repeats, warmup)
    return _median_wall(records["ref"]), _median_wall(records["ours"])


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> None:
    """Make glibc's malloc keep freed memory in this process, for timings free of page faults.

    By default glibc serves large blocks with fresh ``mmap``s and returns freed memory to the
    kernel, so every large tensor of a step is page-faulted (and zeroed by the kernel) anew;
    detectron2's MViT spends 1-10 s of system time per step on this at 1024², and how fast the
    kernel serves the faults changes from run to run. With no ``mmap`` blocks and no trimming,
    freed memory is reused by the next step, as a caching allocator (jemalloc, tcmalloc, the
    CUDA allocator) would do. The setting is process-wide and permanent: call it in a
    benchmark process only, before the models are built. Raises RuntimeError where the C
    library has no ``mallopt`` (not glibc) or refuses the settings.
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        raise RuntimeError("keep_freed_memory needs glibc's mallopt; this C library has none")
    # int arguments: the largest trim threshold mallopt takes is INT_MAX (2 GiB of free heap)
    if not (mallopt(_M_MMAP_MAX, 0) and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)):
        raise RuntimeError("glibc's mallopt refused M_MMAP_MAX=0 / M_TRIM_THRESHOLD=INT_MAX")


def step_peak_memory(step: Callable[[], object], device: str = "cpu") -> float:
    """Peak memory (MiB) of ``step()``, in this process (call it in a fresh one).

    CPU: the growth of the process's peak RSS over one step, the first: a warm-up step would
    leave its memory in glibc's heap. CUDA: after one warm-up step, the growth of
    ``torch.cuda.max_memory_allocated`` over a step. Both read
    :class:`~mvit_backbone.engine.memory.PeakMemoryMeter`.
    """
    if device.startswith("cuda"):
        step()
        gc.collect()
        torch.cuda.empty_cache()
    gc.collect()
    with PeakMemoryMeter(device) as meter:
        step()
    return meter.growth_mib()


def measure_peak_memory(
    impl: str, variant: str, height: int, width: int, batch: int, mode: str, device: str = "cpu"
) -> float:
    """Peak memory (MiB) of one step of ``build_model(impl, variant)`` (:func:`step_peak_memory`)."""
    torch.manual_seed(0)
    model = build_model(impl, variant).to(device)
    x = torch.randn(batch, 3, height, width, device=device)

    def step() -> None:
        run_step(model, x, mode)
        model.zero_grad(set_to_none=True)

    return step_peak_memory(step, device)


def memory_subprocess(spec: dict, threads: int | None = None) -> float:
    """Run ``python -m mvit_backbone.benchmark SPEC`` (a fresh Python process measuring one
    peak memory, see ``__main__``); returns its MiB."""
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run(
        [sys.executable, "-m", "mvit_backbone.benchmark", json.dumps(spec)],
        capture_output=True, text=True, env=env,
    )
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory subprocess for {spec} failed:\n{out.stderr[-3000:]}")
    return float(out.stdout.strip().splitlines()[-1])


def peak_memory_subprocess(
    impl: str, variant: str, height: int, width: int, batch: int, mode: str, device: str = "cpu",
    threads: int | None = None,
) -> float:
    """:func:`measure_peak_memory` in a fresh Python process; returns MiB."""
    spec = dict(impl=impl, variant=variant, height=height, width=width, batch=batch, mode=mode,
                device=device)
    return memory_subprocess(spec, threads)


def run_benchmark(
    variants: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    batches: Sequence[int],
    modes: Sequence[str] = MODES,
    repeats: int = 3,
    device: str = "cpu",
    memory: bool = True,
    timing: bool = True,
    log=print,
) -> list[BenchResult]:
    """Every (variant, size, batch, mode): interleaved medians (unless ``timing=False``, then
    NaN) and, optionally, peak memory; ``log`` gets each result and a progress line with ETA."""
    results = []
    progress = Progress(len(variants) * len(sizes) * len(batches) * len(modes), unit="config")
    for variant in variants:
        ref, ours = build_pair(variant)
        ref.to(device)
        ours.to(device)
        for (h, w) in sizes:
            for batch in batches:
                x = torch.randn(batch, 3, h, w, device=device)
                for mode in modes:
                    t_ref, t_ours = (time_pair(ref, ours, x, mode, repeats=repeats) if timing
                                     else (float("nan"), float("nan")))
                    r = BenchResult(variant, h, w, batch, mode, t_ref, t_ours, t_ours / t_ref)
                    if memory:
                        threads = torch.get_num_threads()
                        r.d2_mib = peak_memory_subprocess("d2", variant, h, w, batch, mode, device, threads)
                        r.ours_mib = peak_memory_subprocess("ours", variant, h, w, batch, mode, device, threads)
                        r.mem_ratio = r.ours_mib / r.d2_mib
                    progress.step()
                    log(json.dumps(asdict(r)))
                    log(progress.line())
                    results.append(r)
        del ref, ours
        gc.collect()
    return results


def saved_activation_mib(model: nn.Module, x: torch.Tensor) -> float:
    """MiB of the tensors autograd saves for backward in one training forward (distinct storages
    counted once): the activation memory of training, free of allocator and RSS effects."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    return sum(n for (ptr, _), n in seen.items() if ptr not in params) / 2**20


def compile_speedup(
    variant: str, height: int, width: int, batch: int = 1, repeats: int = 3, device: str = "cpu"
) -> dict:
    """Eager against ``torch.compile(fullgraph=True)`` forward of our backbone (eval, no_grad).

    Returns the compile time (first call, seconds), the interleaved medians of both and the
    speedup eager / compiled.
    """
    torch.manual_seed(0)
    model = build_model("ours", variant).to(device).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(batch, 3, height, width, device=device)
    start = time.perf_counter()
    run_step(compiled, x, "fwd")
    compile_s = time.perf_counter() - start
    eager_s, compiled_s = time_pair(model, compiled, x, "fwd", repeats=repeats)
    return dict(variant=variant, height=height, width=width, batch=batch, compile_s=compile_s,
                eager_s=eager_s, compiled_s=compiled_s, speedup=eager_s / compiled_s)


# window batches of the Hwin models at 1024² (windows, heads, query window, key window):
# MViTv2-T stage 1 (25 windows of 56² queries, 14² pooled keys, one head) and MViTv2-B stage 3
# (16 windows of 14² queries and keys, four heads); 96 channels per head in both
WINDOW_BATCHES = {"T stage 1": (25, 1, 56, 14), "B stage 3": (16, 4, 14, 14)}


def attention_kernels(
    windows: int, heads: int, q_window: int, kv_window: int, dim: int = 96,
    repeats: int = 5, device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """Median seconds of one window batch (e.g. one of ``WINDOW_BATCHES``), with rel-pos,
    through each attend implementation of ``mvit_backbone.kernels`` and the reference ("fwd"
    under no_grad and "fwd+bwd"), and the forward's GFLOP/s counting q·kᵀ and p·v only
    ("fwd_gflops")."""
    from ..kernels import explicit_attend, folded_attend, sdpa_attend
    from ..layers import RelPos, attend, rel_pos_lookup

    torch.manual_seed(0)
    tables = [torch.randn(2 * q_window - 1, dim, device=device) for _ in range(2)]
    lookups = [rel_pos_lookup(q_window, kv_window, t) for t in tables]
    q = torch.randn(windows, heads, q_window**2, dim, device=device)
    k, v = (torch.randn(windows, heads, kv_window**2, dim, device=device) for _ in range(2))
    shapes = ((q_window, q_window), (kv_window, kv_window))
    scale = dim**-0.5
    gflop = 4 * windows * heads * q_window**2 * kv_window**2 * dim / 1e9

    def run(fn, q, k, v):
        return fn(q, k, v, scale, RelPos(lookups, *shapes))

    results: dict[str, dict[str, float]] = {}
    for fn in (attend, explicit_attend, sdpa_attend, folded_attend):
        times: dict[str, list[float]] = {"fwd": [], "fwd+bwd": []}
        for _ in range(repeats + 1):
            with torch.no_grad():
                start = time.perf_counter()
                run(fn, q, k, v)
                times["fwd"].append(time.perf_counter() - start)
            qg, kg, vg = (t.clone().requires_grad_() for t in (q, k, v))
            start = time.perf_counter()
            run(fn, qg, kg, vg).sum().backward()
            times["fwd+bwd"].append(time.perf_counter() - start)
        name = fn.__name__
        results[name] = {mode: statistics.median(t[1:]) for mode, t in times.items()}
        results[name]["fwd_gflops"] = gflop / results[name]["fwd"]
    return results


def page_faults(variant: str, height: int, width: int, batch: int, mode: str,
                repeats: int = 3) -> list[dict]:
    """Minor page faults, wall, user and system seconds of each step (``getrusage``), both
    models interleaved after one warm-up step each: where the wall time goes besides compute."""
    ref, ours = build_pair(variant)
    x = torch.randn(batch, 3, height, width)
    records = interleaved([("detectron2", partial(run_step, ref, x, mode)),
                           ("ours", partial(run_step, ours, x, mode))], repeats)
    return [dict(model=name, mode=mode, **r) for rounds in zip(*records.values())
            for name, r in zip(records, rounds)]


# the kernels that bound our step from below: matmuls (Linear layers forward and backward) and
# the attention kernels (the flash kernel of global attention; the batched matmuls and softmax
# of the explicit window attention in training)
FLOOR_KERNELS = {
    "matmul": ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm", "aten::addmm_"),
    "attention": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                  "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
                  "aten::bmm", "aten::_softmax", "aten::_softmax_backward_data"),
}


def kernel_seconds(model: nn.Module, x: torch.Tensor, mode: str, steps: int = 1) -> dict[str, float]:
    """Seconds per step ``model`` spends in each group of :data:`FLOOR_KERNELS`, and in all
    ops (``"profiled_step"``): ``torch.profiler`` self time, the mean of ``steps`` profiled
    steps."""
    with torch.profiler.profile() as prof:
        for _ in range(steps):
            run_step(model, x, mode)
    self_s = {e.key: e.self_cpu_time_total / 1e6 / steps for e in prof.key_averages()}
    groups = {group: sum(self_s.get(k, 0.0) for k in keys) for group, keys in FLOOR_KERNELS.items()}
    return {**groups, "profiled_step": sum(self_s.values())}


def pair_kernel_floor(ref: nn.Module, ours: nn.Module, x: torch.Tensor, mode: str,
                      ref_name: str, repeats: int = 3, profiled_steps: int = 1) -> dict:
    """Both models' median steps, interleaved, then (profiled after the timings) the seconds of
    each one's matmul and attention kernels (:func:`kernel_seconds`): ``{ref_name}_s``,
    ``ours_s``, ``time_ratio``; ``matmul_s``, ``attention_s`` and ``profiled_step_s`` (ours)
    and the same with the prefix ``{ref_name}_``; and ``floor_ratio`` = (ours' matmul +
    attention kernel seconds) / the reference's step: the ratio ours would reach if everything
    else in its step (norms, convs, copies, page faults, Python) cost nothing."""
    t_ref, t_ours = time_pair(ref, ours, x, mode, repeats=repeats)
    ours_kernels = kernel_seconds(ours, x, mode, profiled_steps)
    ref_kernels = kernel_seconds(ref, x, mode, profiled_steps)
    floor = sum(ours_kernels[group] for group in FLOOR_KERNELS)
    return {f"{ref_name}_s": t_ref, "ours_s": t_ours, "time_ratio": t_ours / t_ref,
            **{f"{group}_s": s for group, s in ours_kernels.items()},
            **{f"{ref_name}_{group}_s": s for group, s in ref_kernels.items()},
            "floor_ratio": floor / t_ref}


def kernel_floor(variant: str, height: int, width: int, batch: int, mode: str,
                 repeats: int = 3) -> dict:
    """:func:`pair_kernel_floor` of ours against detectron2's MViT (``variant``) on a random
    (batch, 3, height, width) input."""
    ref, ours = build_pair(variant)
    row = pair_kernel_floor(ref, ours, torch.randn(batch, 3, height, width), mode, "d2", repeats)
    return dict(variant=variant, height=height, width=width, batch=batch, mode=mode, **row)


# (tokens, in, out) of MViTv2-T's Linear layers at 1024²: qkv, MLP fc1/fc2 of stages 1-4
LINEAR_SHAPES = (
    (65536, 96, 288), (65536, 96, 384), (65536, 384, 96), (16384, 192, 768),
    (16384, 768, 192), (4096, 384, 1152), (4096, 384, 1536), (1024, 768, 3072),
)


def linear_kernels(repeats: int = 5) -> list[dict[str, float]]:
    """GFLOP/s of ``F.linear`` (MKL sgemm) and of our oneDNN ``linear`` on the MViT Linear
    shapes, forward (interleaved, medians), and the max abs difference of their outputs."""
    from ..kernels.linear import linear

    results = []
    for tokens, d_in, d_out in LINEAR_SHAPES:
        torch.manual_seed(0)
        x, w, b = torch.randn(tokens, d_in), torch.randn(d_out, d_in), torch.randn(d_out)
        with torch.no_grad():
            records = interleaved([("mkl", partial(F.linear, x, w, b)),
                                   ("onednn", partial(linear, x, w, b))], repeats)
            err = (F.linear(x, w, b) - linear(x, w, b)).abs().max().item()
        gflop = 2 * tokens * d_in * d_out / 1e9
        mkl, onednn = _median_wall(records["mkl"]), _median_wall(records["onednn"])
        results.append(dict(tokens=tokens, d_in=d_in, d_out=d_out, mkl_gflops=gflop / mkl,
                            onednn_gflops=gflop / onednn, speedup=mkl / onednn, max_abs_diff=err))
    return results


def to_markdown(results: Iterable[BenchResult], device: str = "cpu") -> str:
    """A markdown table of the results."""
    unit = "peak RSS growth" if device == "cpu" else "max_memory_allocated"
    lines = [
        f"| model | input | batch | mode | detectron2 s | ours s | time ours/d2 | d2 MiB | ours MiB | memory ours/d2 ({unit}) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        mem = ("-", "-", "-") if r.mem_ratio is None else (
            f"{r.d2_mib:.0f}", f"{r.ours_mib:.0f}", f"{r.mem_ratio:.2f}")
        lines.append(
            f"| MViTv2-{r.variant} | {r.height}×{r.width} | {r.batch} | {r.mode} | "
            + ("- | - | - |" if math.isnan(r.time_ratio) else
               f"{r.d2_s:.3f} | {r.ours_s:.3f} | {r.time_ratio:.2f} |")
            + f" {mem[0]} | {mem[1]} | {mem[2]} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: Sequence, path: str, labels: Sequence[str] | None = None,
         reference: str = "detectron2") -> None:
    """Bar chart of the time ratios (``time_ratio``) per configuration and, where results have
    them, the memory ratios (``mem_ratio``), written to ``path`` (PNG); ``labels`` default to
    :class:`BenchResult`'s."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if labels is None:
        labels = [f"{r.variant} {r.height}×{r.width} b{r.batch}\n{r.mode}" for r in results]
    xs = range(len(results))
    mem = [getattr(r, "mem_ratio", None) for r in results]
    with_memory = any(m is not None for m in mem)
    width = 0.4 if with_memory else 0.6
    shift = width / 2 if with_memory else 0.0
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(results)), 4))
    ax.bar([x - shift for x in xs], [r.time_ratio for r in results], width, label="time")
    if with_memory:
        ax.bar([x + shift for x in xs], [m if m is not None else 0.0 for m in mem], width,
               label="peak memory")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel(f"ours / {reference}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

