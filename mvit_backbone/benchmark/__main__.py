"""The subprocess entry of :func:`~mvit_backbone.benchmark.peak_memory_subprocess`: one JSON spec
of :func:`~mvit_backbone.benchmark.measure_peak_memory` in, peak MiB out."""
import json
import sys

from .backbone import measure_peak_memory

print(measure_peak_memory(**json.loads(sys.argv[1])))
