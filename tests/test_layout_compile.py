"""The default memory layout per device and model, and torch.compile(fullgraph=True) of the models."""
import pytest
import torch

from cdism_fast import models
from cdism_fast.training.engine import TrainConfig, Trainer, uses_channels_last

from tolerances import assert_close

pytestmark = pytest.mark.usefixtures("one_thread")
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _tiny(family):
    options = {"num_heads": 3, "window_size": 4, "drop_path_rate": 0.0} if family == "swinir" else {}
    torch.manual_seed(0)
    return models.from_structure(family, 1, 2, 12, 2, **options)


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


@pytest.mark.parametrize("family", ["edsr", "swinir"])
def test_compiled_model_is_one_graph_with_the_custom_ops_and_equals_eager(family):
    from cdism_fast.ops import available_backends, distillation_loss

    options = {}
    if family == "swinir":
        if "cpp" not in available_backends("window_attention", CPU):
            pytest.skip("the C++ extension is not built: no cpp window attention to compile")
        options = {"attention_backend": "cpp"}
    # One block of one layer: inductor's code generation, not the model, is what this test waits for.
    model = models.from_structure(family, 1, 1, 12, 2, **({"num_heads": 3, "window_size": 4, "drop_path_rate": 0.0,
                                                           **options} if family == "swinir" else {}))
    compiled = torch.compile(model, fullgraph=True, dynamic=False)  # inductor, as the --compile training step
    x, teacher, gt = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 24, 24), torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))

    def gradients(net):
        loss = distillation_loss(net(x), teacher, gt)
        return [loss, *torch.autograd.grad(loss, list(model.parameters()))]

    for got, want in zip(gradients(compiled), gradients(model)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("amp,dtype", [("none", torch.float32), ("bf16", torch.bfloat16)])
def test_compile_option_trains_like_eager(tmp_path, amp, dtype):
    """In fp32 to fp32's tolerance; under bf16 autocast (what --amp auto picks on a CPU with bf16 units) to
    bf16's: inductor's bf16 kernels round otherwise than eager's."""
    results = []
    for compile_model in (False, True):
        model = _tiny("edsr")
        data = [(torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(i)),
                 torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i + 9))) for i in range(4)]
        trainer = Trainer(model, lambda m, b: (m(b[0]) - b[1]).abs().mean(),
                          torch.optim.Adam(model.parameters(), lr=1e-3), data,
                          TrainConfig(iterations=2, batch_size=2, compile=compile_model, progress=False,
                                      checkpoint_every=0, amp=amp), tmp_path / str(compile_model))
        assert trainer.fit().status == "completed"
        results.append(torch.cat([p.detach().flatten() for p in trainer.model.parameters()]))
    assert_close(results[1], results[0], dtype)


def test_compiled_training_at_a_second_patch_size_in_one_process(tmp_path):
    """Prune then distill in one process compiles one family at two sizes: the second must not go
    dynamic (inductor could not build its backward: TypeError: cannot determine truth value of Relational)."""
    for step, size in enumerate((16, 12)):
        model = models.from_structure("edsr", 1, 1, 12, 2)
        data = [(torch.rand(3, size, size), torch.rand(3, 2 * size, 2 * size)) for _ in range(2)]
        trainer = Trainer(model, lambda m, b: (m(b[0]) - b[1]).abs().mean(),
                          torch.optim.SGD(model.parameters(), lr=1e-3), data,
                          TrainConfig(iterations=1, batch_size=2, compile=True, progress=False, checkpoint_every=0,
                                      channels_last=False), tmp_path / str(step))
        assert trainer.fit().status == "completed"
