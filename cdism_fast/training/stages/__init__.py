"""The stages of the workflow as Python functions (the ``cdism-fast`` commands call these).

Each stage's own options are one frozen dataclass (:class:`PruneOptions`,
:class:`CompressOptions`, :class:`DistillOptions`, listed in
:data:`STAGE_OPTIONS`) whose fields the command line, the workflow presets and
``stage.json`` all read.

* :func:`train_teacher` (stage 0): L1 loss and Adam, from scratch.
* :func:`prune` (stage 1): Charbonnier loss back-propagated, λ‖θ‖₁ applied by
  :class:`~cdism_fast.optim.OBProxSG`'s proximal and orthant steps (never added
  to the loss, so it is not counted twice); writes ``density.json``.
* :func:`compress` (stage 2): the compact structure from the density
  (:func:`~cdism_fast.compress.compress_config`) and a before/after table.
* :func:`distill` (stage 3): the compact student from random initialisation (or from
  the teacher's weights, ``DistillOptions.init``),
  :func:`~cdism_fast.ops.distillation_loss` against the frozen teacher (eval
  mode, ``no_grad``), AdaMax with betas (0.9, 0.99); ``kd=False`` trains the
  same student on the ground truth alone, with the same budget.

Pruning and distillation share :class:`TargetOptions` (``targets``,
``holdout``, ``teacher_cache``): with ``targets="teacher"`` the images of
``--data`` are LR inputs as they are and the targets are the teacher's outputs.

Every training stage writes into its own folder: ``stage.json`` (command,
settings, status), ``checkpoint.pt`` (resumable), ``log.jsonl`` and
``model.pt`` (the result, readable by :func:`~cdism_fast.training.artifacts.read_model_file` and by
:func:`cdism_fast.models.load_pretrained`).
"""
from .common import (
    CACHE_OFF,
    DENSITY_FILE,
    FLOPS_SIZE,
    MODEL_FILE,
    SAMPLES_PER_EPOCH,
    STUDENT_FILE,
    TARGETS,
    TRAINING_FILES,
    StageResult,
    StageSettings,
    TargetOptions,
    TeacherOutputs,
    check_cache_folder,
    data_fingerprint,
    default_holdout,
    flops_size,
    load_stage_model,
    make_validator,
    training_pairs,
    unlabelled_split,
    validation_sets,
    with_overrides,
)
from .stage0_teacher import train_teacher
from .stage1_prune import PruneOptions, density_report, prune
from .stage2_compress import (
    CompressOptions,
    check_student_family,
    compress,
    density_value,
    format_table,
    structure_table,
)
from .stage3_distill import (
    INITS,
    STRUCTURE_SPEC,
    DistillOptions,
    check_patch_size,
    distill,
    init_problem,
    initial_weights,
    student_from,
    teacher_only_loss,
)

__all__ = [
    "StageSettings", "PruneOptions", "CompressOptions", "DistillOptions", "TargetOptions", "STAGE_OPTIONS",
    "StageResult", "train_teacher", "prune", "compress", "distill", "student_from", "teacher_only_loss",
    "density_report", "structure_table", "format_table", "training_pairs", "unlabelled_split", "default_holdout",
    "validation_sets", "make_validator", "TeacherOutputs", "load_stage_model", "MODEL_FILE", "DENSITY_FILE",
    "STUDENT_FILE", "FLOPS_SIZE", "flops_size", "SAMPLES_PER_EPOCH", "TRAINING_FILES", "STRUCTURE_SPEC",
    "CACHE_OFF", "TARGETS", "check_cache_folder", "check_patch_size", "density_value", "data_fingerprint",
    "with_overrides", "check_student_family", "INITS", "init_problem", "initial_weights",
]

#: The options dataclass of each stage that has options beyond its :class:`StageSettings`. Fields of
#: :class:`TargetOptions` belong to every stage whose dataclass extends it (one declaration, one option).
STAGE_OPTIONS = {"prune": PruneOptions, "compress": CompressOptions, "distill": DistillOptions}
