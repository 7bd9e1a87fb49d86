"""The default memory layout per device and model, and torch.compile(fullgraph=True) of the models."""
import pytest
import torch

from cdism_fast import models
from cdism_fast.training.engine import TrainConfig, Trainer, uses_channels_last

pytestmark = pytest.mark.usefixtures("one_thread")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _tiny(family):
    options = {"num_heads": 3, "window_size": 4, "drop_path_rate": 0.0} if family == "swinir" else {}
    torch.manual_seed(0)
    return models.from_structure(family, 12, 2, 1, 2, **options)


def test_default_layout_is_the_one_measured_faster():
    edsr, swinir = _tiny("edsr"), _tiny("swinir")
    assert uses_channels_last(None, CPU, edsr) and not uses_channels_last(None, CPU, swinir)
    assert uses_channels_last(None, CUDA, edsr) and uses_channels_last(None, CUDA, swinir)
    assert not uses_channels_last(False, CPU, edsr) and uses_channels_last(True, CPU, swinir)


def test_trainer_applies_the_default_layout(tmp_path):
    model = _tiny("edsr")
    trainer = Trainer(model, lambda m, b: m(b).mean(), torch.optim.SGD(model.parameters(), lr=0.1), [None],
                      TrainConfig(iterations=1, progress=False), tmp_path)
    assert trainer.channels_last
    weight = next(p for p in trainer.model.parameters() if p.dim() == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
