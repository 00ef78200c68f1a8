"""Benchmark harness: our models against their references with the same weights, in one process.

``backbone``: ``mvit_backbone.MViT`` against ``detectron2.modeling.MViT`` (time, peak memory,
saved activations, page faults, kernel floor, attention and Linear kernels, compile);
``classifier``: our MViTv2 classifiers against timm's; ``video``: our MViTv2-S video model
against torchvision's ``mvit_v2_s``; ``attention``: attention mechanisms side by side (MViTv2
Table 4; rows in ``ATTENTION_VARIANTS``); ``attention_distance``: the mean attention distance
per head (MViTv1 Fig. A.6). ``tools/benchmark_backbone.py``, ``tools/benchmark_video.py`` and
``tools/benchmark_attention.py`` are the command lines; ``python -m mvit_backbone.benchmark SPEC``
is the fresh process of one peak-memory measurement.
"""
from .attention import ATTENTION_VARIANTS, DETECTION_OVERRIDES, AttentionResult, run_attention_benchmark
from .backbone import (
    FLOOR_KERNELS,
    LINEAR_SHAPES,
    MODES,
    WINDOW_BATCHES,
    BenchResult,
    attention_kernels,
    build_model,
    build_pair,
    compile_speedup,
    interleaved,
    keep_freed_memory,
    kernel_floor,
    linear_kernels,
    measure_peak_memory,
    memory_subprocess,
    page_faults,
    peak_memory_subprocess,
    plot,
    reference_kwargs,
    run_benchmark,
    run_step,
    saved_activation_mib,
    step_peak_memory,
    time_pair,
    to_markdown,
)
from .classifier import (
    CLASSIFIER_BATCHES,
    TIMM_NAMES,
    ClassifierBenchResult,
    build_timm_pair,
    run_timm_benchmark,
    timm_markdown,
)
from .video import (
    TORCHVISION_NAMES,
    VideoBenchResult,
    build_video_model,
    build_video_pair,
    measure_video_peak_memory,
    run_video_benchmark,
    video_markdown,
    write_video_results,
)

__all__ = [
    "ATTENTION_VARIANTS",
    "AttentionResult",
    "DETECTION_OVERRIDES",
    "CLASSIFIER_BATCHES",
    "FLOOR_KERNELS",
    "LINEAR_SHAPES",
    "MODES",
    "TIMM_NAMES",
    "TORCHVISION_NAMES",
    "WINDOW_BATCHES",
    "BenchResult",
    "ClassifierBenchResult",
    "VideoBenchResult",
    "attention_kernels",
    "build_model",
    "build_pair",
    "build_timm_pair",
    "build_video_model",
    "build_video_pair",
    "compile_speedup",
    "interleaved",
    "keep_freed_memory",
    "kernel_floor",
    "linear_kernels",
    "measure_peak_memory",
    "measure_video_peak_memory",
    "memory_subprocess",
    "page_faults",
    "peak_memory_subprocess",
    "plot",
    "reference_kwargs",
    "run_attention_benchmark",
    "run_benchmark",
    "run_step",
    "run_timm_benchmark",
    "run_video_benchmark",
    "saved_activation_mib",
    "step_peak_memory",
    "time_pair",
    "timm_markdown",
    "to_markdown",
    "video_markdown",
    "write_video_results",
]
