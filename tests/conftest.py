import os

import pytest
import torch

# Two cores here; keep each test deterministic and single-process friendly.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAPER_NUMBERS = os.path.join(REPO, "..", "shared", "reference", "paper_numbers.json")


@pytest.fixture(scope="session")
def paper_numbers() -> dict:
    import json

    if not os.path.exists(PAPER_NUMBERS):
        pytest.fail(f"paper numbers not found at {PAPER_NUMBERS} (shared/ must sit beside the repo)")
    with open(PAPER_NUMBERS) as f:
        return json.load(f)


@pytest.fixture(autouse=True)
def _library_logs_reach_caplog():
    """Tools and the demo set up detectron2's logger for ``mvit_backbone``, which stops its
    records at that logger; after a test that ran one in-process, let them propagate again, so
    that later tests' ``caplog`` sees them."""
    import logging

    yield
    logging.getLogger("mvit_backbone").propagate = True
