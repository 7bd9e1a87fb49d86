"""Presets of the whole workflow (``cdism-fast run --preset NAME``).

``demo``
    Runs everything on the built-in photographs (scikit-image's sample
    images) in under 10 minutes on a 2-core CPU, including the ``--no-kd``
    student. The teacher is a small EDSR (N_c = 32, N_b = 4, 122K parameters)
    trained from scratch for 600 iterations. Because the demo prunes for 300
    iterations rather than 100k, λ is raised (``DEMO_LAMBDA``) so that the
    short schedule reaches a density like the paper's (d ≈ 0.06 here, 0.03
    for EDSR in the paper), and the penalty is restricted to the deep-feature
    module (``penalty="deep"``; the paper, and the paper presets, penalise
    every parameter): d is the deep module's density either way (0.0595 and
    0.0596 measured), but at λ = 0.04 a penalised head and tail are zeroed
    too and the pruned teacher then outputs a flat grey image (16.9 dB),
    while with the shallow modules spared it keeps 32.5 dB. The pruned model
    only measures d: the student is distilled from the original teacher.
    The distillation loss is summed per pyramid level (``reduction="sum"``,
    Niklaus and Liu's Laplacian loss) instead of averaged (the authors' code,
    the paper presets): with per-level means the coarsest level carries
    2⁴ × 4⁴ times the per-pixel weight of the finest, its L1 gradient (which
    does not shrink with the error) is about 17 times the finest level's on
    the demo's batches, and in a short schedule the student spends its
    updates matching the teacher's low-pass image. Measured on the demo
    (5.7K-parameter student, 1500 iterations, held-out photographs,
    bicubic 32.92 dB): mean-reduced KD 31.44 dB, no KD 33.16 dB; at 600
    iterations, the Laplacian term alone reaches 30.51 dB with means and
    33.57 dB with sums. ``cdism-fast distill --reduction mean`` runs the
    authors' form. The student starts from scratch: with ``init="auto"``
    (inherited from the teacher, its no-KD twin too) the distilled student
    reached 33.881 dB against 33.880 from scratch (bf16, ``--threads 1``,
    the held-out photographs), no gain at this budget. Everything else
    follows the paper.

``cpu-291``
    Compresses a published model (``--teacher``, e.g. IMDN_x2.pth; any
    scale: ``--scale 3`` or ``4`` with a ×3/×4 teacher, the benchmarks'
    ``LR_bicubic/X3``/``X4`` images are then used) on the classic 291
    training images (``--data T91 --data BSD200``) and evaluates on the
    standard benchmarks (``--val Set5 --val Set14 --val B100``), in 44
    (IMDN ×2) to 51 (PAN ×2) minutes on a 2-core CPU at ×2, bf16 autocast
    on. The patch sizes are in LR pixels at every scale, so at ×4 the
    images whose LR side is under 48 pixels (51 of T91's 91 for
    distillation, 7 for pruning's 32) are skipped, one warning counting them;
    a smaller ``--patch-size`` keeps them. It distils two students
    from the same teacher: the teacher family's own compressed structure
    (stage 2) and the paper's EDSRmini (N_b 8, N_l 1, N_c 16, 49.6K), each
    with its no-KD twin at the same budget. The budget decides the rest:
    pruning runs 340 iterations on 16 LR patches of 32² instead of 100k on
    48² (a published IMDN step on 48² patches takes 1 s here, on 32² 0.45 s),
    so λ is raised (``CPU291_LAMBDA``) to reach, in that schedule, a density
    that puts the family's student under 10% of the teacher's parameters;
    as in the demo the penalty spares the head and tail (``penalty="deep"``)
    and the pruned model only measures d. Distillation runs 8,000 iterations
    of 16 patches of 48² (the paper: 800k) at a higher learning rate (2e-3,
    halved at 4k, 6k and 7k) with the distillation loss summed over pyramid
    levels, for the reasons given for the demo. The family's own student
    starts from the teacher's weights (``init="auto"``: the blocks and channels
    of the largest magnitudes in the pruned teacher; EDSRmini, of another
    family, from scratch): measured on IMDN x2 at 1,000 iterations (the
    preset's schedule with milestones 500, 750, 875, fp32, T91), the inherited
    4/2/28 student reaches 35.655 and 35.643 dB on Set5 (seeds 0 and 1), from
    scratch 35.279 and 35.187 (``CPU291_INIT_MEASURED``). No DIV2K and 1% of the
    paper's schedule: the table it writes shows what the three stages do to
    a real published model at this budget, not the paper's numbers.

``paper-edsr`` / ``paper-swinir``
    The paper's settings, as published in the authors' configuration files
    (repository ``Pikapi22/SRModelCompression``, folder
    ``BasicSR/options/train``: ``EDSR/prune_EDSR_Mx2.yml``,
    ``EDSR/distill_EDSR_Minix2_KD.yml``, ``SwinIR/prune_SwinIRlight_SRx2.yml``,
    ``SwinIR/distill_SwinIRmini_SRx2_scratch_kd.yml``) and in the paper (λ,
    ε, α, AdaMax with betas (0.9, 0.99)). Where the two disagree the paper
    wins, and each difference is listed in ``PAPER_NOTES``. They need DIV2K
    (``--data DIV2K``) and normally an official teacher (``--teacher``);
    without one, stage 0 uses the original papers' training recipes (EDSR:
    Lim et al. 2017, §4; SwinIR lightweight: Liang et al. 2021, §4.1).
    Their students start from random weights, as the paper's (``init="scratch"``;
    the SwinIR file's name says ``scratch_kd``).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Optional

from .stages import CompressOptions, DistillOptions, PruneOptions, StageSettings

__all__ = ["WorkflowPreset", "WORKFLOWS", "PAPER_NOTES", "DEMO_LAMBDA", "CPU291_LAMBDA", "CPU291_INIT_MEASURED"]

#: λ of the demo's pruning (the paper's is 1e-4 over 100k iterations; the demo has 300). Measured on the
#: demo teacher: 0.02 gives d ≈ 0.5, 0.06 zeroes almost every weight, 0.04 gives d ≈ 0.06.
DEMO_LAMBDA = 0.04
#: λ of the cpu-291 pruning of a published teacher (340 iterations, 235 of them Prox-SG). Measured on IMDN
#: x2 (16 patches of 32², lr 5e-3, T91 + BSD200): 200 iterations (150 Prox-SG) at 0.04 give d = 0.655; at
#: 0.15, 300 (200 Prox-SG) give d = 0.094, just above the 10% of the parameters the student should stay
#: under, and 500 (350 Prox-SG) d = 0.0255 (a 21K student, 3% of the teacher); the schedule sits between.
#: Teachers with smaller weights need more: PAN x2 reaches d = 0.30 at 0.15, 0.093 at 0.3, 0.064 at 0.35 (its
#: 23.7K student, 9.1%) and 0.043 at 0.4, so its run passes ``--lam 0.35`` (docs/workflow.md).
CPU291_LAMBDA = 0.15
#: Gradient-norm clip of the cpu-291 pruning (a plain SGD step at lr 5e-3): the published PAN x2 jumps from a
#: Charbonnier loss of 0.017 to 5,106 at iteration 52 without it (at lr 2.5e-3, at 122), fp32 and bf16 alike. The
#: first batches' gradient norms are 0.006-0.02 (PAN) and 0.014-0.098 (IMDN), so the clip only stops a blow-up.
CPU291_PRUNE_GRAD_CLIP = 0.5
#: Set5 PSNR (dB, fp32-evaluated) of the cpu-291 IMDN student 4/2/28 after 1,000 distillation iterations (the
#: preset's settings, milestones 500/750/875, --amp none, T91, the pruned model of the preset's stage 1), seeds 0
#: and 1: what makes the preset's students inherit (``init="auto"``). The command: docs/workflow.md.
CPU291_INIT_MEASURED = {"inherit": (35.655, 35.643), "scratch": (35.279, 35.187)}


@dataclass(frozen=True)
class WorkflowPreset:
    name: str
    description: str
    teacher_model: str  # a preset of cdism_fast.models
    scale: int
    teacher: StageSettings  # stage 0, used when no --teacher is given (and by `cdism-fast train --preset`)
    prune: StageSettings
    prune_options: PruneOptions
    distill: StageSettings
    teacher_structure: Optional[tuple] = None  # (n_b, n_l, n_c) replacing the preset's
    compress_options: CompressOptions = CompressOptions()
    distill_options: DistillOptions = DistillOptions()
    needs_data: bool = False
    needs_teacher: bool = False
    #: The students distilled from the teacher, by stage folder: None is stage 2's compressed student, any
    #: other value a student spec of ``distill`` (e.g. ``"edsr:8,1,16"``). Each gets a no-KD twin.
    students: dict = field(default_factory=lambda: {"student": None})


WORKFLOWS: dict[str, WorkflowPreset] = {
    "demo": WorkflowPreset(
        name="demo",
        description="built-in photographs, small EDSR teacher, under 10 minutes on a 2-core CPU",
        teacher_model="edsr_baseline", teacher_structure=(4, 1, 32), scale=2,
        teacher=StageSettings(iterations=600, batch_size=16, patch_size=32, lr=1e-3, milestones=(400,),
                              checkpoint_every=200, log_every=20),
        prune=StageSettings(iterations=300, batch_size=16, patch_size=32, lr=5e-3, checkpoint_every=100,
                            log_every=20),
        prune_options=PruneOptions(lam=DEMO_LAMBDA, n_p=200, penalty="deep"),
        distill=StageSettings(iterations=1500, batch_size=16, patch_size=32, lr=2e-3, milestones=(1000,),
                              checkpoint_every=500, log_every=50),
        distill_options=DistillOptions(reduction="sum"),
    ),
    "cpu-291": WorkflowPreset(
        name="cpu-291",
        description="a published teacher (x2; --scale 3|4 for x3/x4) compressed on T91 + BSD200, evaluated on "
                    "Set5/Set14/B100, about 45 minutes on a 2-core CPU",
        teacher_model="imdn", scale=2, needs_data=True, needs_teacher=True,
        # Only `cdism-fast train --preset cpu-291` uses it: a model trained from scratch at the students' budget.
        teacher=StageSettings(iterations=8000, batch_size=16, patch_size=48, lr=2e-3, milestones=(4000, 6000, 7000),
                              checkpoint_every=500, log_every=100),
        prune=StageSettings(iterations=340, batch_size=16, patch_size=32, lr=5e-3, checkpoint_every=100,
                            log_every=50, grad_clip=CPU291_PRUNE_GRAD_CLIP),
        prune_options=PruneOptions(lam=CPU291_LAMBDA, n_p=235, penalty="deep"),
        distill=StageSettings(iterations=8000, batch_size=16, patch_size=48, lr=2e-3, milestones=(4000, 6000, 7000),
                              checkpoint_every=500, log_every=100),
        distill_options=DistillOptions(reduction="sum", init="auto"),
        students={"student": None, "edsr_mini": "edsr:8,1,16"},
    ),
    "paper-edsr": WorkflowPreset(
        name="paper-edsr",
        description="EDSR_baseline x2 → EDSRmini on DIV2K, the paper's schedule (needs a GPU and days)",
        teacher_model="edsr_baseline", scale=2, needs_data=True,
        # EDSR (Lim et al. 2017): L1, Adam 1e-4 halved every 2e5 updates, batch 16, 48x48 LR patches, 3e5 updates.
        teacher=StageSettings(iterations=300_000, batch_size=16, patch_size=48, lr=1e-4, milestones=(200_000,),
                              checkpoint_every=5_000, validate_every=5_000, num_workers=4),
        # prune_EDSR_Mx2.yml: OBProxSG lr 5e-3, lambda 1e-4, Np 60 epochs of 2560 samples (= 160 iterations of
        # batch 16), eps 1e-4, 100k iterations, MultiStepLR [20000] x0.5, batch 16, GT 96 (LR 48).
        prune=StageSettings(iterations=100_000, batch_size=16, patch_size=48, lr=5e-3, milestones=(20_000,),
                            checkpoint_every=1_000, validate_every=1_000, num_workers=4),
        prune_options=PruneOptions(lam=1e-4, n_p=60, steps_per_epoch=160, eps=1e-4, penalty="all"),
        # distill_EDSR_Minix2_KD.yml: 800k iterations, MultiStepLR [200000] x0.5, batch 16, GT 96 (LR 48),
        # EMA 0.999, alpha 0.1, L1 student loss; AdaMax (0.9, 0.99) and lr 1e-4 per the paper (see PAPER_NOTES).
        distill=StageSettings(iterations=800_000, batch_size=16, patch_size=48, lr=1e-4, milestones=(200_000,),
                              ema_decay=0.999, checkpoint_every=5_000, validate_every=5_000, num_workers=4),
    ),
    "paper-swinir": WorkflowPreset(
        name="paper-swinir",
        description="SwinIR lightweight x2 → SwinIRmini on DIV2K, the paper's schedule (needs a GPU and days)",
        teacher_model="swinir_lightweight", scale=2, needs_data=True,
        # SwinIR lightweight (Liang et al. 2021): L1, Adam 2e-4 halved at [250k, 400k, 450k, 475k], 500k
        # iterations, batch 64, 64x64 LR patches.
        teacher=StageSettings(iterations=500_000, batch_size=64, patch_size=64, lr=2e-4,
                              milestones=(250_000, 400_000, 450_000, 475_000),
                              checkpoint_every=5_000, validate_every=5_000, num_workers=4),
        # prune_SwinIRlight_SRx2.yml: OBProxSG lr 5e-3, lambda 1e-4, Np 25 epochs of 32592 samples (= 2037
        # iterations of batch 16), eps 1e-4, 500k iterations, no milestones, batch 16, GT 128 (LR 64).
        prune=StageSettings(iterations=500_000, batch_size=16, patch_size=64, lr=5e-3,
                            checkpoint_every=1_000, validate_every=5_000, num_workers=4),
        prune_options=PruneOptions(lam=1e-4, n_p=25, steps_per_epoch=2037, eps=1e-4, penalty="all"),
        # distill_SwinIRmini_SRx2_scratch_kd.yml: lr 1e-4, 800k iterations, MultiStepLR [250k, 400k, 450k] x0.5,
        # batch 16, GT 128 (LR 64), EMA 0.999, alpha 0.1, L1 student loss; AdaMax (0.9, 0.99) per the paper.
        distill=StageSettings(iterations=800_000, batch_size=16, patch_size=64, lr=1e-4,
                              milestones=(250_000, 400_000, 450_000), ema_decay=0.999,
                              checkpoint_every=5_000, validate_every=5_000, num_workers=4),
    ),
}



def __getattr__(name: str):
    if name == "PRESETS":  # WORKFLOWS under its 0.1 name, kept for one release
        warnings.warn("cdism_fast.training.presets.PRESETS is deprecated: use WORKFLOWS", DeprecationWarning,
                      stacklevel=2)
        return WORKFLOWS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Where the presets depart from the authors' configuration files, and why.
PAPER_NOTES = (
    "Distillation optimiser: the configuration files say Adam (0.9, 0.999); the paper says AdaMax (0.9, 0.99), "
    "which is used.",
    "EDSRmini distillation learning rate: the EDSR file says 1e-7, which cannot train a student from random "
    "initialisation in 800k iterations (it looks like a fine-tuning leftover); the SwinIR file's 1e-4 is used.",
    "OBProx-SG phase epochs: the files pass samples per epoch (2560, 32592) where the optimiser counts "
    "iterations, so their orthant phase never starts; here an epoch is samples / batch size iterations "
    "(160, 2037), so Prox-SG covers about the first tenth of pruning as the schedules intend.",
    "Pruning EMA: the files keep an EMA (0.999) of the weights; an average of sparse weights is not sparse, "
    "so the pruned model and its density are those of the weights themselves.",
    "The distillation teacher is in eval mode under no_grad; the released code leaves it in train mode.",
)
