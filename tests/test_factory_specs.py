"""Factory specs resolved to their callables: each form, the names that do not exist, and the specs refused."""

from __future__ import annotations

import pytest
from torch import nn

from weightsurgery.errors import TargetError
from weightsurgery.factory import build_target


def test_timm_spec_with_a_pretrained_tag():
    assert build_target("timm:resnet18.a1_in1k", num_classes=3).fc.out_features == 3


def test_torchvision_spec():
    model = build_target("torchvision:resnet18", num_classes=10, meta=False)
    assert model.fc.out_features == 10 and not model.fc.weight.is_meta


def test_import_spec_with_dotted_attribute_and_callable():
    assert isinstance(build_target("torch.nn:Linear", in_features=2, out_features=3), nn.Linear)
    assert build_target("torch:nn.Linear", in_features=2, out_features=3).weight.is_meta
    assert build_target(nn.Linear, in_features=2, out_features=3).weight.shape == (3, 2)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("timm:resnet5000", r"^timm has no model 'resnet5000'; closest: resnet50"),
        ("torchvision:vit_b_17", r"^torchvision has no model 'vit_b_17'; closest: vit_b_16"),
        ("resnet18", r"^target 'resnet18' is not a factory spec; write it as 'timm:NAME'"),
        ("timm:", r"is not a factory spec"),
        ("torch.nn:Lineer", r"'torch.nn' has no attribute 'Lineer'; closest: Linear"),
        ("no_such_module_xyz:f", r"module 'no_such_module_xyz' cannot be imported; .* PYTHONPATH"),
        ("torch:pi", r"names a float, not a callable"),
        ("../models:build", r"'\.\./models' is not a module name; .* not a file: add its folder to PYTHONPATH"),
        ("pkg.models:build-net", r"'build-net' is not an attribute name"),
    ],
)
def test_bad_specs_name_the_fix(spec: str, message: str):
    with pytest.raises(TargetError, match=message):
        build_target(spec)


@pytest.mark.parametrize(
    "spec",
    ["os:system", "subprocess:run", "shutil:rmtree", "builtins:eval", "posix:system", "math:pi", "builtins:dict",
     "collections:OrderedDict", "os.path:join",
     "torch.serialization:os.system"],  # reached through a third-party module: refused by where it is defined
)
def test_standard_library_callables_are_refused_before_anything_runs(spec: str, tmp_path):
    marker = tmp_path / "ran"
    with pytest.raises(TargetError, match=r"is refused: it comes from Python's standard library \(.*a TARGET runs code"):
        build_target(spec, command=f"touch {marker}")
    assert not marker.exists()
