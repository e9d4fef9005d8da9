"""Side memory: the bytes a learner's save holds beyond the model's own weights."""
from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

from safetensors.torch import save as save_tensors

import rerelrp


def bytes_beyond_weights(learner: rerelrp.ReReLRP) -> int:
    """Bytes that ``learner.save`` writes beyond the model's own weights and buffers: the size of the save minus
    the size of a zip, written the same way, that holds only the model's state dict (masks, freeze masks, memory,
    detectors, options and the description remain)."""
    with tempfile.TemporaryDirectory() as folder:
        path = learner.save(Path(folder) / "learner.zip")
        weights = Path(folder) / "weights.zip"
        state = {f"model.{k}": v.detach().cpu().contiguous() for k, v in learner.subnetworks().net.state_dict().items()}
        with zipfile.ZipFile(weights, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            archive.writestr("tensors.safetensors", save_tensors(state))
        return path.stat().st_size - weights.stat().st_size
