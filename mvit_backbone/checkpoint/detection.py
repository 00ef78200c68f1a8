"""detectron2's ``DetectionCheckpointer`` reading its files with our safe reader.

Saving, resuming (model, optimizer, scheduler, iteration) and detectron2's model-zoo name
heuristics are detectron2's; only the reading differs: every file goes through
:func:`~mvit_backbone.checkpoint.reader.read_checkpoint`, so no file runs code, and
``last_checkpoint`` may only name a file inside the checkpoint folder.
"""
from __future__ import annotations

import os
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer

from .reader import CheckpointReadError, read_checkpoint


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose files are read by :func:`read_checkpoint`."""

    def _load_file(self, filename: str) -> dict[str, Any]:
        if filename.endswith(".pkl"):
            data = self._read_dict(filename)
            if "model" in data and "__author__" in data:  # detectron2 model zoo
                return data
            blobs = data.get("blobs", data)  # Caffe2 / Detectron1 model zoo
            weights = {k: v for k, v in blobs.items() if not k.endswith("_momentum")}
            return {"model": weights, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            data = self._read_dict(filename)
            if "model_state" not in data:
                raise CheckpointReadError(f"checkpoint {filename} has no 'model_state' (pycls)")
            weights = {k: v for k, v in data["model_state"].items()
                       if not k.endswith("num_batches_tracked")}
            return {"model": weights, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)  # ends in _torch_load

    def _torch_load(self, f: str) -> dict[str, Any]:
        return self._read_dict(f)

    @staticmethod
    def _read_dict(filename: str) -> dict[str, Any]:
        data = read_checkpoint(filename)
        if not isinstance(data, dict):
            raise CheckpointReadError(
                f"checkpoint {filename} holds a {type(data).__name__}, not a dict of weights"
            )
        return data

    def get_checkpoint_file(self) -> str:
        """The file ``last_checkpoint`` names, which must be a file name in ``save_dir``."""
        name = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with self.path_manager.open(name, "r") as f:
                last_saved = f.read().strip()
        except OSError:
            return ""  # deleted by another process since has_checkpoint()
        if os.path.basename(last_saved) != last_saved or last_saved in ("", ".", ".."):
            raise CheckpointReadError(
                f"{name} names {last_saved!r}; it may only name a checkpoint file in {self.save_dir}"
            )
        return os.path.join(self.save_dir, last_saved)
