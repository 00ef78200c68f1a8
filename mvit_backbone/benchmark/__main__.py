"""The subprocess entry of :func:`~mvit_backbone.benchmark.memory_subprocess`: one JSON spec in,
peak MiB out. ``kind`` "backbone" (default): :func:`~mvit_backbone.benchmark.measure_peak_memory`;
"video": :func:`~mvit_backbone.benchmark.measure_video_peak_memory`."""
import json
import sys

from .backbone import measure_peak_memory
from .video import measure_video_peak_memory

spec = json.loads(sys.argv[1])
measure = {"backbone": measure_peak_memory, "video": measure_video_peak_memory}[spec.pop("kind", "backbone")]
print(measure(**spec))
