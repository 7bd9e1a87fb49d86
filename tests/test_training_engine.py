"""The training engine: exact resume, interruption, non-finite losses, validation, logs, options."""
import json
import os
import signal

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from cdism_fast.training import (
    CHECKPOINT_NAME,
    LOG_NAME,
    CheckpointError,
    NonFiniteLossError,
    ShardedStreamSampler,
    TrainConfig,
    Trainer,
    load_checkpoint,
    read_log,
)

# Tiny tensors: one thread avoids OpenMP synchronisation, which dominates (and explodes on a busy machine).
pytestmark = pytest.mark.usefixtures("one_thread")


class IndexedPairs(Dataset):
    """(lr, hr) pairs that depend on the index only, as the engine requires."""

    def __init__(self, count=13, size=6):
        generator = torch.Generator().manual_seed(123)
        self.lr = torch.rand(count, 3, size, size, generator=generator)
        self.hr = torch.nn.functional.interpolate(self.lr, scale_factor=2, mode="bilinear") ** 1.5

    def __len__(self):
        return len(self.lr)

    def __getitem__(self, index):
        return self.lr[index], self.hr[index]


class TinySR(nn.Module):
    """Conv, dropout (draws from the global RNG, so RNG state must be resumed), pixel shuffle."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Dropout(0.2),
                                  nn.Conv2d(8, 12, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, x):
        return self.body(x)


def l1_step(model, batch):
    lr, hr = batch
    return (model(lr) - hr).abs().mean()


def crashing_step(at_call):
    """The L1 step, raising "simulated crash" on its ``at_call``-th call."""
    calls = {"n": 0}

    def step(model, batch):
        calls["n"] += 1
        if calls["n"] == at_call:
            raise RuntimeError("simulated crash")
        return l1_step(model, batch)

    return step


def make_trainer(out_dir, iterations=12, step_loss=l1_step, validate=None, optimizer=None, **config):
    torch.manual_seed(7)
    model = TinySR()
    optimizer = (optimizer or (lambda params: torch.optim.Adam(params, lr=3e-3)))(model.parameters())
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[4, 9], gamma=0.5)
    config.setdefault("ema_decay", 0.9)
    config.setdefault("progress", False)
    config.setdefault("checkpoint_every", 0)
    return Trainer(model, step_loss, optimizer, IndexedPairs(),
                   TrainConfig(iterations=iterations, batch_size=4, seed=3, **config), out_dir,
                   scheduler=scheduler, validate=validate, kind="test")


def assert_same_state(a: Trainer, b: Trainer):
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(x, y), f"model {name} differs"
    for (name, x), (_, y) in zip(a.ema.module.state_dict().items(), b.ema.module.state_dict().items()):
        assert torch.equal(x, y), f"EMA {name} differs"
    state_a, state_b = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for key in state_a:
        for name in state_a[key]:
            assert torch.equal(torch.as_tensor(state_a[key][name]), torch.as_tensor(state_b[key][name]))
    assert a.scheduler.state_dict() == b.scheduler.state_dict()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    trainer = make_trainer(tmp_path_factory.mktemp("straight"))
    result = trainer.fit()
    assert result.status == "completed" and result.iteration == 12
    return trainer, torch.get_rng_state()


def test_sigint_saves_and_resume_is_bit_identical(tmp_path, uninterrupted):
    reference, reference_rng = uninterrupted
    calls = {"n": 0}

    def interrupting_step(model, batch):
        calls["n"] += 1
        if calls["n"] == 5:  # Ctrl-C arrives during the 5th iteration
            os.kill(os.getpid(), signal.SIGINT)
        return l1_step(model, batch)

    before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    first = make_trainer(tmp_path, step_loss=interrupting_step)
    result = first.fit()
    assert result.status == "interrupted" and result.iteration == 5
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["iteration"] == 5
    assert signal.getsignal(signal.SIGINT) is before  # handler restored

    second = make_trainer(tmp_path)
    assert second.fit(resume=True).iteration == 12
    assert_same_state(reference, second)
    assert torch.equal(torch.get_rng_state(), reference_rng)


def test_crash_mid_run_resumes_from_last_periodic_checkpoint_bit_identically(tmp_path, uninterrupted):
    reference, _ = uninterrupted
    with pytest.raises(RuntimeError, match="simulated crash"):
        make_trainer(tmp_path, step_loss=crashing_step(7), checkpoint_every=4).fit()
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["iteration"] == 4
    resumed = make_trainer(tmp_path, checkpoint_every=4)
    assert resumed.fit(resume=True).iteration == 12
    assert_same_state(reference, resumed)


def test_obproxsg_phase_survives_resume_bit_identically(tmp_path):
    from cdism_fast.optim import OBProxSG

    def optimizer(params):  # Prox-SG for 3 epochs of 2 steps, then orthant steps
        return OBProxSG(params, lr=0.05, lam=0.05, n_p=3, steps_per_epoch=2)

    straight = make_trainer(tmp_path / "straight", iterations=9, optimizer=optimizer)
    straight.fit()
    assert straight.optimizer.phase == "orthant"
    with pytest.raises(RuntimeError):
        make_trainer(tmp_path / "resumed", iterations=9, optimizer=optimizer, step_loss=crashing_step(6),
                     checkpoint_every=5).fit()
    saved = load_checkpoint(tmp_path / "resumed" / CHECKPOINT_NAME)["optimizer"]["obproxsg"]
    assert saved["steps"] == 5 and saved["phase"] == "prox_sg"
    resumed = make_trainer(tmp_path / "resumed", iterations=9, optimizer=optimizer)
    resumed.fit(resume=True)
    assert resumed.optimizer.steps == 9 and resumed.optimizer.phase == "orthant"
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    assert any((p == 0).any() for p in resumed.model.parameters())  # the penalty did zero weights


def test_keyboard_interrupt_before_the_step_saves_the_iteration_start(tmp_path, uninterrupted):
    """A KeyboardInterrupt raised inside the forward pass (second Ctrl-C) saves a consistent state."""
    reference, _ = uninterrupted
    calls = {"n": 0}

    def interrupted_forward(model, batch):
        calls["n"] += 1
        output = model(batch[0])  # dropout has drawn from the RNG already
        if calls["n"] == 6:
            raise KeyboardInterrupt
        return (output - batch[1]).abs().mean()

    result = make_trainer(tmp_path, step_loss=interrupted_forward).fit()
    assert result.status == "interrupted" and result.iteration == 5
    resumed = make_trainer(tmp_path)
    resumed.fit(resume=True)
    assert_same_state(reference, resumed)


def test_resume_with_dataloader_workers_matches(tmp_path, uninterrupted):
    reference, _ = uninterrupted
    make_trainer(tmp_path, iterations=6, num_workers=1).fit()
    resumed = make_trainer(tmp_path, num_workers=1)
    resumed.fit(resume=True)
    assert_same_state(reference, resumed)


def test_non_finite_loss_stops_naming_the_iteration_and_keeps_the_checkpoint(tmp_path):
    calls = {"n": 0}

    def exploding_step(model, batch):
        calls["n"] += 1
        loss = l1_step(model, batch)
        return loss * float("inf") if calls["n"] == 7 else loss

    trainer = make_trainer(tmp_path, step_loss=exploding_step, checkpoint_every=5)
    with pytest.raises(NonFiniteLossError, match=r"inf at iteration 7 .*last good checkpoint"):
        trainer.fit()
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["iteration"] == 5
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())  # the bad step was not taken
    assert read_log(tmp_path / LOG_NAME, "non_finite_loss")[0]["iteration"] == 7


def test_validation_is_logged_as_json_lines(tmp_path):
    seen = []

    def validate(model):
        seen.append((model.training, torch.is_grad_enabled()))
        return {"psnr": 30.0 + len(seen), "ssim": 0.9}

    trainer = make_trainer(tmp_path, iterations=7, validate=validate, validate_every=3, log_every=2)
    result = trainer.fit()
    assert seen == [(False, False)] * 3  # iterations 3, 6 and the end (7)
    assert trainer.model.training  # put back in training mode
    records = read_log(tmp_path / LOG_NAME, "validation")
    assert [r["iteration"] for r in records] == [3, 6, 7]
    assert [r["psnr"] for r in records] == [31.0, 32.0, 33.0]
    assert result.validation == {"iteration": 7, "psnr": 33.0, "ssim": 0.9}
    train_records = read_log(tmp_path / LOG_NAME, "train")
    assert [r["iteration"] for r in train_records] == [2, 4, 6, 7]
    assert all(r["loss"] > 0 and r["iterations_per_second"] > 0 and 0 <= r["data_fraction"] <= 1
               for r in train_records)
    for line in (tmp_path / LOG_NAME).read_text().splitlines():
        json.loads(line)


def test_progress_bar_shows_rate_loss_and_eta(tmp_path, capsys):
    make_trainer(tmp_path, iterations=3, progress=True).fit()
    err = capsys.readouterr().err
    assert "3/3" in err and "it/s" in err and "loss=" in err and "<" in err  # tqdm's elapsed<remaining


def test_resume_refuses_other_settings_and_kinds(tmp_path):
    make_trainer(tmp_path, iterations=2).fit()
    with pytest.raises(ValueError, match="batch_size is 5 but the run being resumed used 4"):
        model = TinySR()
        Trainer(model, l1_step, torch.optim.Adam(model.parameters()), IndexedPairs(),
                TrainConfig(iterations=4, batch_size=5, seed=3, progress=False), tmp_path, kind="test").fit(True)
    with pytest.raises(CheckpointError, match="'test' run, not of this 'prune' run"):
        model = TinySR()
        Trainer(model, l1_step, torch.optim.Adam(model.parameters()), IndexedPairs(),
                TrainConfig(iterations=4, batch_size=4, seed=3, progress=False), tmp_path, kind="prune").fit(True)
    extended = make_trainer(tmp_path, iterations=4)  # more iterations than before is fine
    assert extended.fit(resume=True).iteration == 4


def test_completed_run_resumes_to_nothing(tmp_path):
    make_trainer(tmp_path, iterations=2).fit()
    again = make_trainer(tmp_path, iterations=2)
    result = again.fit(resume=True)
    assert result.status == "completed" and result.iteration == 2


def test_bf16_autocast_on_cpu_trains(tmp_path):
    trainer = make_trainer(tmp_path, iterations=2, amp="bf16")
    assert trainer.fit().iteration == 2
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in trainer.model.parameters())


@pytest.mark.parametrize("field, value, message", [
    ("iterations", 0, "iterations must be a positive integer, got 0"),
    ("batch_size", 2.5, "batch_size must be a positive integer, got 2.5"),
    ("checkpoint_every", -1, "checkpoint_every must be an integer >= 0"),
    ("amp", "fp8", "amp must be one of"),
    ("grad_clip", 0.0, "grad_clip must be > 0"),
    ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\)"),
])
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{"iterations": 1, field: value})


def test_fp16_needs_cuda(tmp_path):
    with pytest.raises(ValueError, match="--amp fp16 needs a CUDA device"):
        make_trainer(tmp_path, amp="fp16")


def test_compile_option_trains(tmp_path):
    trainer = make_trainer(tmp_path, iterations=2, compile=True)
    assert trainer.fit().iteration == 2


def test_sampler_epochs_are_permutations_sharded_without_overlap():
    length, world = 10, 3
    streams = [ShardedStreamSampler(length, seed=5, rank=r, world_size=world) for r in range(world)]
    for epoch in range(3):
        shards = [s.epoch_indices(epoch) for s in streams]
        assert all(len(shard) == 4 for shard in shards)  # ceil(10 / 3), padded by wrapping around
        union = torch.cat(shards)
        assert set(union.tolist()) == set(range(length))
    assert not torch.equal(streams[0].epoch_indices(0), streams[0].epoch_indices(1))
    # starting after k samples continues the same stream
    full = iter(ShardedStreamSampler(length, seed=5, rank=1, world_size=world))
    expected = [next(full) for _ in range(11)][7:]
    resumed = iter(ShardedStreamSampler(length, seed=5, rank=1, world_size=world, start=7))
    assert [next(resumed) for _ in range(4)] == expected


@pytest.mark.parametrize("kwargs, message", [
    (dict(length=0), "length"), (dict(length=4, rank=2, world_size=2), r"rank must be an integer in \[0, 2\)"),
    (dict(length=4, start=-1), "start must be an integer >= 0"),
])
def test_sampler_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ShardedStreamSampler(**kwargs)
