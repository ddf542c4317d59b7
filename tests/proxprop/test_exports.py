"""The package's top-level names load lazily but are the submodules' own objects."""

from __future__ import annotations

import subprocess
import sys

import pytest

import proxprop


@pytest.mark.parametrize("name", proxprop.__all__)
def test_every_export_is_the_defining_modules_object(name):
    value = getattr(proxprop, name)
    defining = __import__(value.__module__, fromlist=[name])
    assert getattr(defining, name) is value
    assert name in dir(proxprop)


def test_unknown_name_raises_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'ProxPropLinearr'"):
        _ = proxprop.ProxPropLinearr


def test_from_import_of_a_layer_loads_torch_only_then():
    probe = (
        "import sys, proxprop\n"
        "before = 'torch' in sys.modules\n"
        "from proxprop import ProxPropLinear\n"
        "print(before, 'torch' in sys.modules, ProxPropLinear.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True", "ProxPropLinear"]
