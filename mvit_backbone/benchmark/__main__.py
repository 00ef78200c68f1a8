"""The subprocess entry of :func:`~mvit_backbone.benchmark.memory_subprocess`: one JSON spec in,
peak MiB out. A spec with a ``row`` is one row of the attention benchmark
(:func:`~mvit_backbone.benchmark.attention.measure_row_memory`); otherwise ``kind`` "backbone"
(default, :func:`~mvit_backbone.benchmark.measure_peak_memory`) or "video"
(:func:`~mvit_backbone.benchmark.video.measure_video_peak_memory`)."""
import json
import sys

spec = json.loads(sys.argv[1])
if "row" in spec:
    from .attention import measure_row_memory

    print(measure_row_memory(**spec))
elif spec.pop("kind", "backbone") == "video":
    from .video import measure_video_peak_memory

    print(measure_video_peak_memory(**spec))
else:
    from .backbone import measure_peak_memory

    print(measure_peak_memory(**spec))
