"""Networks from nnU-Net plans, built only from an allow-list.

nnU-Net builds a network from the plans' ``architecture`` entry with ``pydoc.locate``, which
imports and calls whatever dotted name the plans hold: a model folder whose ``plans.json`` names
``torch.hub.load`` (with a ``hubconf.py`` beside it) runs that code, no pickle involved. Plans are
our architecture contract (the SE-ResNet presets live there), so every network we build or load —
our trainers, plain nnU-Net rows, ``nnunet_joint_predict`` — first passes
:func:`check_architecture`:

* ``network_class_name`` is our :class:`~nnunet_joint.network.unet.SEResNetUNet` or a network class
  defined in ``dynamic_network_architectures.architectures`` (nnU-Net's own U-Nets);
* every ``_kw_requires_import`` value is ``None`` or a ``torch.nn`` module class (conv, norm,
  dropout, nonlinearity), named as ``module.Class`` without attribute chains.

Names are resolved with :func:`importlib.import_module` on the allowed module and one
``getattr``; nothing else is imported or called.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Mapping

from torch import nn

from nnunet_joint.errors import InputError

SERESNET_UNET = "nnunet_joint.network.unet.SEResNetUNet"
DYNAMIC_ARCHITECTURES = "dynamic_network_architectures.architectures"


def _split(name: Any, where, what: str) -> tuple[str, str]:
    if not isinstance(name, str) or name.count(".") < 1 or not all(part.isidentifier() for part in name.split(".")):
        raise InputError(where, f"{what} {name!r} is not a dotted class name")
    module, _, attribute = name.rpartition(".")
    return module, attribute


def _class_in(module_name: str, attribute: str) -> Any:
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return module.__dict__.get(attribute)


def _dynamic_architecture(module_name: str, class_name: str) -> type | None:
    """A class of dynamic-network-architectures' architectures; like nnU-Net, by class name when moved."""
    found = _class_in(module_name, class_name) if module_name.startswith(DYNAMIC_ARCHITECTURES + ".") else None
    if found is None:  # nnU-Net maps old locations (e.g. ``architectures.residual_unet``) by class name
        package = importlib.import_module(DYNAMIC_ARCHITECTURES)
        for info in pkgutil.iter_modules(package.__path__):
            found = _class_in(f"{DYNAMIC_ARCHITECTURES}.{info.name}", class_name)
            if found is not None:
                break
    if isinstance(found, type) and issubclass(found, nn.Module) and found.__module__.startswith(DYNAMIC_ARCHITECTURES):
        return found
    return None


def network_class(name: Any, where=None) -> type:
    """The allowed network class a plans ``network_class_name`` names.

    Raises:
        InputError: anything outside the allow-list (the file ``where`` is named in the message).
    """
    module, attribute = _split(name, where, "network_class_name")
    if name == SERESNET_UNET:
        from nnunet_joint.network.unet import SEResNetUNet

        return SEResNetUNet
    if module == DYNAMIC_ARCHITECTURES or module.startswith(DYNAMIC_ARCHITECTURES + "."):
        found = _dynamic_architecture(module, attribute)
        if found is not None:
            return found
    raise InputError(where, f"refused: network_class_name {name!r} is not an allowed network "
                            f"({SERESNET_UNET} or a class of {DYNAMIC_ARCHITECTURES})")


def torch_nn_class(name: Any, where=None) -> type | None:
    """``None``, or the ``torch.nn`` module class a ``_kw_requires_import`` entry names."""
    if name is None:
        return None
    module, attribute = _split(name, where, "_kw_requires_import value")
    found = _class_in(module, attribute) if module == "torch.nn" or module.startswith("torch.nn.") else None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise InputError(where, f"refused: {name!r} in _kw_requires_import is not a torch.nn module class")
    return found


def check_architecture(architecture: Mapping[str, Any], where=None) -> tuple[type, dict]:
    """Validate a plans ``architecture`` entry; return the class and its kwargs with imports resolved."""
    if not isinstance(architecture, Mapping):
        raise InputError(where, "the configuration has no 'architecture' entry")
    cls = network_class(architecture.get("network_class_name"), where)
    kwargs = architecture.get("arch_kwargs")
    requires = architecture.get("_kw_requires_import", [])
    if not isinstance(kwargs, Mapping) or not isinstance(requires, (list, tuple)):
        raise InputError(where, "the architecture needs 'arch_kwargs' (a mapping) and '_kw_requires_import' (a list)")
    kwargs = dict(kwargs)
    for key in requires:
        if key not in kwargs:
            raise InputError(where, f"_kw_requires_import names {key!r}, which arch_kwargs lacks")
        kwargs[key] = torch_nn_class(kwargs[key], where)
    return cls, kwargs


def build_network(architecture: Mapping[str, Any], input_channels: int, num_classes: int,
                  deep_supervision: bool | None = None, where=None, **overrides: Any) -> nn.Module:
    """The network of a plans ``architecture`` entry, after :func:`check_architecture`.

    ``overrides`` replace or add keyword arguments (our trainers add their heads this way:
    ``num_cls_classes``, ``segmentation``). nnU-Net's ``initialize`` hook is applied as its
    ``get_network_from_plans`` does.
    """
    cls, kwargs = check_architecture(architecture, where)
    kwargs.update(overrides)
    if deep_supervision is not None:
        kwargs["deep_supervision"] = deep_supervision
    try:
        network = cls(input_channels=input_channels, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as e:
        raise InputError(where, f"the plans' arch_kwargs do not build {cls.__name__} ({e})") from None
    if hasattr(network, "initialize"):
        network.apply(network.initialize)
    return network
