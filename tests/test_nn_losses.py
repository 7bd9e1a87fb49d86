"""The nn.Module wrappers and their registration in BasicSR's loss registry."""
import sys
import types

import numpy as np
import pytest
import torch

from cdism_fast import nn as cnn
from cdism_fast import ops
from cdism_fast.integrations import basicsr as cdism_basicsr

import float64_references as ref
from tolerances import assert_close


def _pair(shape=(2, 3, 20, 22)):
    x = torch.rand(shape)
    return x, x + 0.1 * torch.randn(shape)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_charbonnier_module(reduction):
    x, y = _pair()
    loss = cnn.CharbonnierLoss(eps=1e-2, reduction=reduction, loss_weight=0.5)(x, y)
    expected = 0.5 * np.asarray(ref.charbonnier(ref.as_float64(x), ref.as_float64(y), 1e-2, reduction))
    assert_close(loss, torch.from_numpy(np.asarray(expected)), dtype=torch.float32)


@pytest.mark.parametrize("weight_shape", [(2, 3, 20, 22), (2, 1, 20, 22)])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_charbonnier_elementwise_weight(weight_shape, reduction):
    # BasicSR's weighted mean: sum(loss * weight) / sum(weight broadcast to the loss).
    x, y = _pair()
    weight = torch.rand(weight_shape)
    loss = cnn.CharbonnierLoss(reduction=reduction, loss_weight=2.0)(x, y, weight)
    elements = ref.charbonnier(ref.as_float64(x), ref.as_float64(y), ops.CHARBONNIER_EPS, "none")
    weighted = elements * np.broadcast_to(ref.as_float64(weight), elements.shape)
    expected = weighted.sum() / (np.broadcast_to(ref.as_float64(weight), elements.shape).sum()
                                 if reduction == "mean" else 1.0)
    assert_close(loss, torch.tensor(2.0 * expected, dtype=torch.float64), dtype=torch.float32)


def test_charbonnier_bad_weight():
    x, y = _pair()
    with pytest.raises(ValueError, match="weight must be a tensor that broadcasts"):
        cnn.CharbonnierLoss()(x, y, torch.rand(2, 2, 20, 22))
    with pytest.raises(ValueError, match="got list"):
        cnn.CharbonnierLoss()(x, y, [1.0])


def test_pyramid_modules_match_the_ops():
    x, y = _pair((2, 3, 37, 33))
    gt = torch.rand_like(x)
    assert_close(cnn.LaplacianPyramidLoss(levels=4, reduction="sum", loss_weight=3.0)(x, y),
                 3.0 * ops.laplacian_loss(x, y, 4, "sum"))
    assert_close(cnn.DistillationLoss(alpha=0.2, student_loss="charbonnier", levels=3, loss_weight=0.5)(x, y, gt),
                 0.5 * ops.distillation_loss(x, y, gt, 0.2, "charbonnier", 3))
    assert_close(cnn.GaussianHighPass()(x), ops.gaussian_highpass(x))


def test_each_module_of_nn_holds_one_kind_and_the_package_exports_them_all():
    from cdism_fast.nn import filters, losses

    assert {name for name, obj in vars(losses).items() if isinstance(obj, type) and issubclass(obj, torch.nn.Module)
            and obj.__module__ == losses.__name__} == {"CharbonnierLoss", "LaplacianPyramidLoss", "DistillationLoss"}
    assert cnn.GaussianHighPass is filters.GaussianHighPass
    assert set(cnn.__all__) == {"functional", "CharbonnierLoss", "DistillationLoss", "GaussianHighPass",
                                "LaplacianPyramidLoss"}


def test_distillation_module_leaves_the_teacher_alone():
    student, teacher = (t.requires_grad_() for t in _pair((1, 3, 24, 24)))
    cnn.DistillationLoss()(student, teacher, torch.rand(1, 3, 24, 24)).backward()
    assert student.grad is not None and teacher.grad is None


def test_pyramid_losses_refuse_weights():
    x, y = _pair()
    with pytest.raises(ValueError, match="weight must be None for LaplacianPyramidLoss"):
        cnn.LaplacianPyramidLoss(levels=3)(x, y, torch.ones_like(x))
    with pytest.raises(ValueError, match="weight must be None for DistillationLoss"):
        cnn.DistillationLoss(levels=3)(x, y, y, torch.ones_like(x))


@pytest.mark.parametrize("make, match", [
    (lambda: cnn.CharbonnierLoss(eps=-1), "eps must be >= 0"),
    (lambda: cnn.CharbonnierLoss(reduction="avg"), "reduction must be one of"),
    (lambda: cnn.CharbonnierLoss(loss_weight="1"), "loss_weight must be a number"),
    (lambda: cnn.LaplacianPyramidLoss(levels=0), "levels must be an integer"),
    (lambda: cnn.LaplacianPyramidLoss(reduction="none"), "reduction must be one of"),
    (lambda: cnn.DistillationLoss(alpha=-1), "alpha must be >= 0"),
    (lambda: cnn.DistillationLoss(student_loss="mse"), "student_loss must be one of"),
    (lambda: cnn.DistillationLoss(loss_weight=True), "loss_weight must be a number"),
])
def test_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_repr_shows_the_options():
    assert "levels=4" in repr(cnn.LaplacianPyramidLoss(levels=4))
    assert "student_loss='charbonnier'" in repr(cnn.DistillationLoss(student_loss="charbonnier"))
    assert "eps=0.01" in repr(cnn.CharbonnierLoss(eps=0.01))


def test_module_under_torch_compile():
    x, y = _pair((2, 3, 34, 33))
    x.requires_grad_()
    loss_fn = cnn.LaplacianPyramidLoss(loss_weight=2.0)
    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    assert_close(compiled(x, y), loss_fn(x, y))


def test_functional_names_are_the_ops():
    for name in cnn.functional.__all__:
        assert getattr(cnn.functional, name) is getattr(ops, name)


# --- BasicSR --------------------------------------------------------------------------------------------------

class FakeRegistry:
    """The behaviour of basicsr.utils.registry.Registry that register() relies on."""

    def __init__(self, name):
        self._name, self._obj_map = name, {}

    def register(self, obj=None):
        assert obj is not None, "cdism_fast registers by calling register(obj)"
        assert obj.__name__ not in self._obj_map, f"An object named '{obj.__name__}' was already registered"
        self._obj_map[obj.__name__] = obj

    def get(self, name):
        return self._obj_map[name]

    def __contains__(self, name):
        return name in self._obj_map


@pytest.fixture
def fake_basicsr(monkeypatch):
    registry = types.ModuleType("basicsr.utils.registry")
    registry.LOSS_REGISTRY = FakeRegistry("loss")
    registry.LOSS_REGISTRY.register(type("CharbonnierLoss", (torch.nn.Module,), {}))  # BasicSR's own
    package, utils = types.ModuleType("basicsr"), types.ModuleType("basicsr.utils")
    package.utils, utils.registry = utils, registry
    for name, module in (("basicsr", package), ("basicsr.utils", utils), ("basicsr.utils.registry", registry)):
        monkeypatch.setitem(sys.modules, name, module)
    return registry.LOSS_REGISTRY


def _build_loss(registry, options):
    """BasicSR's build_loss: the class named by `type`, the other options as keyword arguments."""
    options = dict(options)
    return registry.get(options.pop("type"))(**options)


def test_basicsr_register_and_build(fake_basicsr):
    registered = cdism_basicsr.register()
    assert set(registered) == {"CdismCharbonnierLoss", "CdismLaplacianPyramidLoss", "CdismDistillationLoss"}
    x, y = _pair((2, 3, 40, 36))
    loss = _build_loss(fake_basicsr, {"type": "CdismLaplacianPyramidLoss", "levels": 3, "loss_weight": 2.0})
    assert isinstance(loss, cnn.LaplacianPyramidLoss)
    assert_close(loss(x, y), 2.0 * ops.laplacian_loss(x, y, 3))
    charbonnier = _build_loss(fake_basicsr, {"type": "CdismCharbonnierLoss", "eps": 1e-6, "reduction": "sum"})
    assert_close(charbonnier(x, y, None), ops.charbonnier(x, y, 1e-6, "sum"))
    distill = _build_loss(fake_basicsr, {"type": "CdismDistillationLoss", "alpha": 0.5})
    assert_close(distill(x, y, y), ops.distillation_loss(x, y, y, 0.5))
    assert fake_basicsr.get("CharbonnierLoss").__module__ != cdism_basicsr.__name__  # BasicSR's own is kept
    assert cdism_basicsr.register() == registered  # again: harmless


def test_basicsr_name_taken_by_another_object(fake_basicsr):
    fake_basicsr.register(type("CdismDistillationLoss", (torch.nn.Module,), {}))
    with pytest.raises(RuntimeError, match="already holds another object named 'CdismDistillationLoss'"):
        cdism_basicsr.register()
    assert "CdismCharbonnierLoss" not in fake_basicsr  # nothing registered by the failed call


def test_basicsr_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "basicsr", None)  # makes `import basicsr...` raise ImportError
    with pytest.raises(ImportError, match="needs BasicSR"):
        cdism_basicsr.register()
