"""Networks from plans: only allowed classes are built; a hostile plans.json runs no code."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from fake_models import PLAIN_ARCHITECTURE, write_model_folder
from nnunet_joint.errors import InputError
from nnunet_joint.network.from_plans import build_network, check_architecture, network_class, torch_nn_class
from nnunet_joint.network.unet import SEResNetUNet

PLAIN = PLAIN_ARCHITECTURE
SERESNET = {"network_class_name": "nnunet_joint.network.unet.SEResNetUNet",
            "arch_kwargs": {"encoder_name": "seresnet18", "strides": [[1, 1]] + [[2, 2]] * 5,
                            "decoder_channels": [16, 32, 64, 128, 256], "n_conv_per_stage_decoder": 2},
            "_kw_requires_import": []}


def test_allowed_networks_build():
    from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

    plain = build_network(PLAIN, 1, 3, deep_supervision=False)
    assert type(plain) is PlainConvUNet
    assert tuple(plain(torch.zeros(1, 1, 16, 16)).shape) == (1, 3, 16, 16)
    ours = build_network(SERESNET, 1, 5, deep_supervision=True, num_cls_classes=3)
    assert type(ours) is SEResNetUNet and ours.cls_head is not None and ours.decoder.deep_supervision
    # nnU-Net maps the old module of its residual U-Net by class name; so do we
    assert network_class("dynamic_network_architectures.architectures.residual_unet.ResidualEncoderUNet") \
        is ResidualEncoderUNet


@pytest.mark.parametrize("name", [
    "torch.hub.load", "os.system", "builtins.eval", "subprocess.Popen",
    "dynamic_network_architectures.architectures.unet.os.system",  # attribute chain through an allowed module
    "dynamic_network_architectures.architectures.unet.np",  # a module, not a network class
    "dynamic_network_architectures.building_blocks.helper.convert_dim_to_conv_op",
    "nnunet_joint.network.unet.SEResNetUNet.__init__", "nnunet_joint.study.training.run_nnunet",
    "PlainConvUNet", "", None, 3, "a b.c",
])
def test_network_classes_outside_the_allow_list_are_refused(name):
    with pytest.raises(InputError, match="refused|not a dotted class name"):
        network_class(name, where="plans.json")


@pytest.mark.parametrize("name", ["builtins.eval", "torch.hub.load", "torch.nn.functional.relu", "os.system",
                                  "torch.nn.modules.conv.F", "torch.load", "torch.nn.init.kaiming_normal_"])
def test_kw_requires_import_only_names_torch_nn_module_classes(name):
    with pytest.raises(InputError, match="refused|not a dotted class name"):
        torch_nn_class(name, where="plans.json")
    hostile = {**PLAIN, "arch_kwargs": {**PLAIN["arch_kwargs"], "nonlin": name}}
    with pytest.raises(InputError):
        check_architecture(hostile, where="plans.json")


def test_torch_nn_classes_resolve():
    assert torch_nn_class("torch.nn.LeakyReLU") is torch.nn.LeakyReLU
    assert torch_nn_class("torch.nn.modules.conv.Conv2d") is torch.nn.Conv2d
    assert torch_nn_class(None) is None


def _model_folder(root: Path, architecture: dict) -> Path:
    buffer = io.BytesIO()
    torch.save({"network_weights": {"w": torch.zeros(1)}, "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "2d"}}, buffer)
    return write_model_folder(root, architecture, buffer.getvalue())


def test_predict_refuses_a_model_folder_whose_plans_name_code(tmp_path):
    """The audit's case: plans name ``torch.hub.load`` with a hubconf.py beside them; nothing may run."""
    from nnunet_joint.inference.models import load_model

    marker = tmp_path / "pwned"
    hostile = {"network_class_name": "torch.hub.load",
               "arch_kwargs": {"repo_or_dir": str(tmp_path), "model": "evil", "source": "local"},
               "_kw_requires_import": []}
    folder = _model_folder(tmp_path, hostile)
    (tmp_path / "hubconf.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef evil(**kw):\n    return None\n")
    (folder / "hubconf.py").write_text((tmp_path / "hubconf.py").read_text())
    with pytest.raises(InputError, match=r"refused: network_class_name 'torch.hub.load'") as err:
        load_model(folder, None, torch.device("cpu"))
    assert err.value.where == str(folder / "plans.json")
    assert not marker.exists()

    nested = {**PLAIN, "arch_kwargs": {**PLAIN["arch_kwargs"], "conv_op": "builtins.exec"}}
    (folder / "plans.json").write_text((folder / "plans.json").read_text().replace(
        json.dumps(hostile), json.dumps(nested)))
    with pytest.raises(InputError, match="builtins.exec"):
        load_model(folder, None, torch.device("cpu"))
