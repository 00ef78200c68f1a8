"""The subprocess entry of :func:`~mvit_backbone.benchmark.memory_subprocess`: one JSON spec in,
peak MiB out. A spec with a ``row`` is one row of the attention benchmark
(:func:`~mvit_backbone.benchmark.attention.measure_row_memory`), any other one of
:func:`~mvit_backbone.benchmark.measure_peak_memory`."""
import json
import sys

from .backbone import measure_peak_memory

spec = json.loads(sys.argv[1])
if "row" in spec:
    from .attention import measure_row_memory

    print(measure_row_memory(**spec))
else:
    print(measure_peak_memory(**spec))
