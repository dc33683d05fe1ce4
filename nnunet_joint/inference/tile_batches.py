"""nnU-Net's predictor with the sliding window's tiles sent to the network several at a time.

nnU-Net's ``_internal_predict_sliding_window_return_logits`` runs the network on one tile at a
time. On a GPU that costs little; on a CPU, a 2-D network on a small tile is bound by per-operator
overhead, not by arithmetic: measured on 2 cores, the study's SE-ResNet-18 joint model on its
64 x 64 tiles takes 19 ms per tile one at a time and 6.3-7.0 ms per tile eight to sixteen at a time;
nnU-Net's 2-D U-Net on 128 x 128 tiles 68-88 ms one at a time, 51-65 ms four at a time, and
slower again at sixteen (the activations leave the cache). :func:`tiles_per_batch` therefore puts
as many tiles in a batch as make :data:`TILE_BATCH_VOXELS` (16 tiles of 64², 4 of 128², 1 of 256² and of a 3-D
model's usual patches, as nnU-Net).

Everything else is nnU-Net's: the tiles (its slicers), its Gaussian importance map, the half-precision
accumulators, the order in which tiles are added, test-time mirroring (its
``_internal_maybe_mirror_and_predict`` flips a batch as it flips one tile) and the check for
infinities. A network whose output for one tile does not depend on the other tiles in its batch
(every nnU-Net network and ours in eval mode: instance norm is per tile, batch norm uses its running
statistics) gives nnU-Net's logits up to float rounding.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache

#: Voxels of the tiles in one network call: 16 tiles of 64 x 64, 4 of 128 x 128, 1 of 256 x 256.
TILE_BATCH_VOXELS = 64 * 64 * 16


def tiles_per_batch(patch_size: Sequence[int], voxels: int = TILE_BATCH_VOXELS) -> int:
    """How many tiles of ``patch_size`` go to the network at once (at least 1)."""
    return max(1, voxels // math.prod(int(s) for s in patch_size))


class nnUNetPredictorTileBatches(nnUNetPredictor):
    """``nnUNetPredictor`` whose sliding window runs :func:`tiles_per_batch` tiles per network call."""

    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data: torch.Tensor, slicers, do_on_device: bool = True):
        batch = tiles_per_batch(self.configuration_manager.patch_size)
        if batch == 1:
            return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
        results_device = self.device if do_on_device else torch.device("cpu")
        logits = weights = tiles = predictions = None
        try:
            data = data.to(results_device)
            logits = torch.zeros((self.label_manager.num_segmentation_heads, *data.shape[1:]), dtype=torch.half,
                                 device=results_device)
            weights = torch.zeros(data.shape[1:], dtype=torch.half, device=results_device)
            gaussian = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                        value_scaling_factor=10, device=results_device) if self.use_gaussian else 1
            for start in range(0, len(slicers), batch):
                where = slicers[start:start + batch]
                tiles = torch.stack([data[s] for s in where]).to(self.device)
                predictions = self._internal_maybe_mirror_and_predict(tiles).to(results_device)
                for s, prediction in zip(where, predictions):
                    logits[s] += prediction * gaussian if self.use_gaussian else prediction
                    weights[s[1:]] += gaussian
            torch.div(logits, weights, out=logits)
            if torch.any(torch.isinf(logits)):
                raise RuntimeError("infinite logits in the sliding window (nnU-Net's half-precision accumulator "
                                   "overflowed)")
            return logits
        except Exception:
            # as nnU-Net: free the device's memory before its caller retries on the CPU (out of GPU memory)
            del logits, weights, tiles, predictions
            empty_cache(self.device)
            empty_cache(results_device)
            raise
