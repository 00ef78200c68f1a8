"""detectron2's ``DetectionCheckpointer`` reading its files with our safe reader, writing them
atomically, and resuming from the newest intact one.

What is saved and restored (model, optimizer, scheduler, iteration) and detectron2's model-zoo
name heuristics are detectron2's. What differs:

- every file is read by :func:`~mvit_backbone.checkpoint.reader.read_checkpoint`, so no file
  runs code, and ``last_checkpoint`` may only name a file inside the checkpoint folder;
- checkpoints and the ``last_checkpoint`` tag are written to a temporary file and renamed
  (:func:`~mvit_backbone.checkpoint.saving.atomic_save`): a killed process never leaves half a
  file;
- resuming takes the file the tag names, or, when the tag is empty or missing or that file is
  truncated or unreadable, the newest intact ``model_*.pth`` of the folder, and logs which.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from detectron2.checkpoint import DetectionCheckpointer

from .reader import CheckpointReadError, read_checkpoint
from .saving import atomic_save, atomic_write_text, checkpoint_candidates, load_newest_intact

# our own messages under our name (fvcore's checkpoint logger may be set up not to propagate)
logger = logging.getLogger(__name__)

CHECKPOINT_PATTERN = "model_*.pth"  # what detectron2's PeriodicCheckpointer writes


class SafeDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` whose files are read by :func:`read_checkpoint`, written
    atomically, and resumed from the newest intact one (see the module docstring).

    After a resume, ``resumed_from`` is the file that was loaded (``None`` before)."""

    resumed_from: str | None = None
    _preloaded: tuple[str, dict[str, Any]] | None = None

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``save_dir/{name}.pth`` atomically and tag it as the last checkpoint."""
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def has_checkpoint(self) -> bool:
        """Whether there is anything to resume from: the tag, or any ``model_*.pth``."""
        return super().has_checkpoint() or bool(checkpoint_candidates(self.save_dir,
                                                                      CHECKPOINT_PATTERN))

    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """With ``resume``: load the newest intact checkpoint of ``save_dir`` (the tagged one
        first) with its optimizer, scheduler and iteration; otherwise the model weights of
        ``path``.

        Raises:
            CheckpointReadError: ``resume`` and checkpoints exist, but none of them reads.
        """
        if not (resume and self.has_checkpoint()):
            return super().resume_or_load(path, resume=resume)
        tagged = self.get_checkpoint_file()
        if not tagged:
            logger.warning(f"{os.path.join(self.save_dir, 'last_checkpoint')} is empty or "
                           "missing; looking for the newest intact checkpoint")
        candidates = checkpoint_candidates(self.save_dir, CHECKPOINT_PATTERN, tagged or None)
        found, data = load_newest_intact(candidates, lambda p: self._read_dict(str(p)))
        self.resumed_from = str(found)
        self._preloaded = (self.resumed_from, data)  # read once: load() takes it from here
        try:
            return self.load(self.resumed_from)
        finally:
            self._preloaded = None

    def _load_file(self, filename: str) -> dict[str, Any]:
        if self._preloaded is not None and self._preloaded[0] == filename:
            return self._preloaded[1]
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
        """The file ``last_checkpoint`` names, which must be a file name in ``save_dir``; ``""``
        when the tag is missing or empty."""
        name = os.path.join(self.save_dir, "last_checkpoint")
        try:
            with self.path_manager.open(name, "r") as f:
                last_saved = f.read().strip()
        except OSError:
            return ""  # deleted by another process since has_checkpoint()
        if not last_saved:
            return ""  # an interrupted tag write of an older version, or emptied by hand
        if os.path.basename(last_saved) != last_saved or last_saved in (".", ".."):
            raise CheckpointReadError(
                f"{name} names {last_saved!r}; it may only name a checkpoint file in {self.save_dir}"
            )
        return os.path.join(self.save_dir, last_saved)
