"""ImageNet weights for the SE-ResNet encoder: one ``checkpoint_filter_fn`` beside the model (timm's idea).

The encoder's parameter names are timm's ``seresnet18/34/50`` names, so conversion is only:
unwrap the checkpoint, drop the ImageNet classifier (``fc.*``) and adapt the first conv from RGB
to the CT's channel count. Nothing is downloaded: the user passes a file (e.g. timm's
``seresnet50.a1_in1k`` weights saved as ``.safetensors`` or ``.pth``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from nnunet_joint.checkpoints import LoadReport, compare_state_dicts, load_state_dict_file, unwrap_state_dict
from nnunet_joint.errors import InputError
from nnunet_joint.network.seresnet import ARCHITECTURES, SEBottleneck, SEResNetEncoder

#: ImageNet classifier keys, not part of the encoder
CLASSIFIER_PREFIX = "fc."


def adapt_input_conv(weight: torch.Tensor, in_chans: int) -> torch.Tensor:
    """Adapt a first-conv weight ``(out, 3, kh, kw)`` trained on RGB to ``in_chans`` input channels.

    One channel: the sum over RGB, so a grey image ``g`` (= ``r = g = b``) gives the same
    activation as the RGB network would (segmentation_models_pytorch does the same). ``C``
    channels: the RGB mean repeated ``C`` times and scaled by ``3 / C``, which keeps the
    activation for an input replicated over all channels.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a conv weight (out, in, kh, kw), got shape {tuple(weight.shape)}")
    if weight.shape[1] == in_chans:
        return weight.clone()
    if weight.shape[1] != 3:
        raise ValueError(f"can only adapt an RGB (3-channel) first conv, got {weight.shape[1]} channels")
    if in_chans == 1:
        return weight.sum(dim=1, keepdim=True)
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_chans, 1, 1) * (3.0 / in_chans)


def describe_checkpoint_depth(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the SE-ResNet a state dict comes from (``seresnet50``), or say it is none of ours."""
    blocks_in_layer3 = len({k.split(".")[1] for k in state_dict if re.match(r"^layer3\.\d+\.", k)})
    bottleneck = "layer1.0.conv3.weight" in state_dict
    for depth, (block, layout) in ARCHITECTURES.items():
        if (block is SEBottleneck) == bottleneck and layout[2] == blocks_in_layer3:
            return f"seresnet{depth}"
    if any(k.startswith("layer0.") for k in state_dict):
        return "a Cadene-style se_resnet (layer0.*, se_module.*; not timm's layout)"
    return "not a timm seresnet18/34/50"


def checkpoint_filter_fn(state_dict: dict, encoder: SEResNetEncoder) -> dict[str, torch.Tensor]:
    """Convert a timm SE-ResNet checkpoint (possibly wrapped, possibly ``module.``-prefixed) to encoder keys."""
    state_dict = unwrap_state_dict(state_dict, "ImageNet checkpoint")
    out = {k: v for k, v in state_dict.items() if not k.startswith(CLASSIFIER_PREFIX)}
    if "conv1.weight" in out:
        out["conv1.weight"] = adapt_input_conv(out["conv1.weight"], encoder.input_channels)
    return out


def load_imagenet_weights(encoder: SEResNetEncoder, path: str | os.PathLike) -> LoadReport:
    """Load ImageNet weights into ``encoder``, strictly: every encoder tensor must come from the file.

    ``num_batches_tracked`` counters may be absent (some exports drop them); everything else
    must be present with the right shape, and the file must hold nothing but the encoder and
    the ImageNet classifier.

    Raises:
        InputError: the file is unreadable or unsafe, or is another architecture
            (e.g. "checkpoint is seresnet50 but the encoder is seresnet18").
    """
    path = Path(path)
    raw = load_state_dict_file(path)
    converted = checkpoint_filter_fn(raw, encoder)
    target = encoder.state_dict()
    report = compare_state_dicts(target, converted)
    report.missing_in_checkpoint = [k for k in report.missing_in_checkpoint if not k.endswith("num_batches_tracked")]
    report.skipped_head = [k for k in raw if k.startswith(CLASSIFIER_PREFIX)]
    problems = report.missing_in_checkpoint or report.shape_mismatch or report.unexpected
    if problems:
        what = ("missing" if report.missing_in_checkpoint else
                "has another shape" if report.shape_mismatch else "is not an encoder weight")
        key = problems[0]
        found, expected = describe_checkpoint_depth(raw), f"seresnet{encoder.depth}"
        verdict = (f"checkpoint does not fit the {expected} encoder" if found == expected
                   else f"checkpoint is {found} but the encoder is {expected}")
        raise InputError(
            path,
            f"{verdict} (first problem: {key} {what}; {len(report.missing_in_checkpoint)} missing, "
            f"{len(report.shape_mismatch)} mismatched, {len(report.unexpected)} unexpected)",
        )
    encoder.load_state_dict({k: converted[k] for k in report.loaded}, strict=False)
    return report
