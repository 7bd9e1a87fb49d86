"""Students that start from the teacher (--init inherit|auto|scratch): the structure compress chose, weights that are
slices of the teacher's (the blocks and channels of the largest magnitudes in the pruned model), outputs that differ
from scratch, a start closer to the teacher; the refusals and the cross-family fallback."""
import copy
import json

import pytest
import torch

from cdism_fast.cli import main
from cdism_fast.compress import compact_model, compress_config
from cdism_fast.inheritance import block_scores, inherit, inheritance_problem
from cdism_fast.models import FAMILIES, build, from_structure, pretrained
from cdism_fast.ops import distillation_loss
from cdism_fast.training.artifacts import save_model

from helpers.images import write_noise_images, write_smooth_images
from helpers.runs import one_error_line

pytestmark = pytest.mark.usefixtures("one_thread")

#: A small teacher of every family that declares inheritance (structure n_b, n_l, n_c).
TEACHER_STRUCTURE = (4, 3, 32)


def _randomized(model, seed=0):
    """``model`` with every parameter drawn at random (biases too, so that slices of them are told apart)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return model


def inheriting_families():
    return [name for name, cls in FAMILIES.items() if cls.block_module is not None]


@pytest.mark.parametrize("family", inheriting_families())
@pytest.mark.parametrize("density", [0.1, 0.4])
def test_inherit_keeps_the_structure_compress_chose_and_takes_slices_of_the_teacher(family, density):
    teacher = _randomized(from_structure(family, *TEACHER_STRUCTURE, scale=2))
    student = compact_model(teacher, density)
    assert student.structure() == compress_config(teacher, density)
    config = student.config()
    torch.manual_seed(0)
    scratch = copy.deepcopy(student)
    kept = inherit(student, teacher)
    assert student.config() == config  # the structure and options compress chose, unchanged
    assert len(kept["blocks"]) == student.structure().n_b and kept["blocks"] == sorted(kept["blocks"])
    assert len(kept["channels"]["features"]) == student.structure().n_c
    values = torch.cat([p.detach().flatten() for p in teacher.parameters()])
    for name, parameter in student.named_parameters():
        assert torch.isin(parameter.detach(), values).all(), name  # every value is one of the teacher's
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        assert not torch.allclose(student.eval()(x), scratch.eval()(x))


def test_edsr_blocks_and_channels_are_those_of_the_largest_pruned_magnitudes():
    teacher = _randomized(from_structure("edsr", 4, 1, 32, scale=2))
    student = teacher.with_structure(2, 1, 8)
    pruned = copy.deepcopy(teacher)
    wanted_blocks, wanted = [1, 3], [2, 5, 7, 11, 13, 17, 19, 31]
    with torch.no_grad():
        for b in wanted_blocks:
            for p in pruned.body[b].parameters():
                p.mul_(100)
        pruned.conv_first.weight[wanted] *= 10_000
    kept = inherit(student, teacher, pruned)
    assert kept["blocks"] == wanted_blocks and kept["channels"]["features"] == wanted
    assert kept["chosen_from"] == "the pruned model"
    assert block_scores(pruned)[1] > block_scores(pruned)[0]
    # The values are the teacher's (the pruned model only chooses them).
    assert torch.equal(student.conv_first.weight, teacher.conv_first.weight[wanted])
    assert torch.equal(student.conv_first.bias, teacher.conv_first.bias[wanted])
    for j, b in enumerate(wanted_blocks):
        inner = kept["channels"][f"body.{b}.conv1"]
        assert torch.equal(student.body[j].conv1.weight, teacher.body[b].conv1.weight[inner][:, wanted])
        assert torch.equal(student.body[j].conv2.weight, teacher.body[b].conv2.weight[wanted][:, inner])
    shuffled = [4 * c + k for c in wanted for k in range(4)]  # a x2 pixel shuffle: 4 inputs per output channel
    assert torch.equal(student.upsample[0].weight, teacher.upsample[0].weight[shuffled][:, wanted])
    assert torch.equal(student.conv_last.weight, teacher.conv_last.weight[:, wanted])


def test_imdn_keeps_the_distilled_and_remaining_channels_of_its_first_and_last_convs():
    teacher = _randomized(from_structure("imdn", 3, 4, 32, scale=2))
    student = teacher.with_structure(2, 2, 16)
    kept = inherit(student, teacher)
    features = kept["channels"]["features"]
    for j, b in enumerate(kept["blocks"]):
        mine, theirs = getattr(student, f"IMDB{j + 1}"), getattr(teacher, f"IMDB{b + 1}")
        d1, r1 = kept["channels"][f"IMDB{b + 1}.d1"], kept["channels"][f"IMDB{b + 1}.r1"]
        rows = d1 + [8 + r for r in r1]  # the teacher's c1 gives 8 distilled channels, then 24 remaining
        assert torch.equal(mine.c1.weight, theirs.c1.weight[rows][:, features])
        d4, r3 = kept["channels"][f"IMDB{b + 1}.d4"], kept["channels"][f"IMDB{b + 1}.r3"]
        assert torch.equal(mine.c2.weight, theirs.c4.weight[d4][:, r3])  # the student's last conv is the teacher's
        pieces = d1 + [24 + d for d in d4]  # the attention reads the distilled channels of c1..c4, 8 each
        assert torch.equal(mine.c3.weight, theirs.c5.weight[features][:, pieces])
    columns = [32 * b + c for b in kept["blocks"] for c in features]
    assert torch.equal(student.c[0].weight, teacher.c[0].weight[features][:, columns])


@pytest.mark.parametrize("name,structure", [("imdn_mini_291", (2, 2, 16)), ("edsr_mini_291", (4, 1, 8))])
def test_an_inherited_student_starts_closer_to_its_teacher_than_scratch(name, structure, tmp_path):
    from cdism_fast.data import folder_dataset

    teacher = pretrained(name)
    torch.manual_seed(0)
    scratch = teacher.with_structure(*structure)
    inherited = copy.deepcopy(scratch)
    inherit(inherited, teacher)
    dataset = folder_dataset(write_smooth_images(tmp_path / "images", 2, seed=5, size=(64, 64)), 2)
    lr = torch.stack([dataset[i][0] for i in range(2)]).float() / 255
    with torch.no_grad():
        target = teacher(lr)
        losses = {key: float(distillation_loss(model.eval()(lr), target, target, alpha=0.1, reduction="sum"))
                  for key, model in (("scratch", scratch), ("inherit", inherited))}
    assert losses["inherit"] < losses["scratch"], losses


def test_who_cannot_inherit_says_why_naming_both_families():
    assert inheritance_problem(build("imdn"), build("edsr_mini")) == (
        "the student is of family edsr and the teacher of family imdn: only a student of the teacher's own family "
        "can inherit its weights")
    for name, cls in FAMILIES.items():
        if cls.block_module is None:
            problem = inheritance_problem(build(next(iter(cls.presets))), build(next(iter(cls.presets))))
            assert problem == f"family {name} cannot inherit: {cls.inheritance_refusal}"
    assert "larger than the teacher (n_b 8 > 2)" in inheritance_problem(
        build("edsr_mini").with_structure(2, 1, 16), build("edsr_mini"))
    assert "options" in inheritance_problem(build("edsr"), build("edsr_mini"))  # res_scale 0.1 against 1.0
    # IMDN: a student block of one conv would read the whole features with the teacher's last conv, which reads
    # the narrower remaining channels of the conv before it.
    assert "needs 28 channels of the teacher's 21 in IMDB1.r1" in inheritance_problem(
        pretrained("imdn_mini_291"), build("imdn").with_structure(2, 1, 28))
    with pytest.raises(ValueError, match="is not a copy of the teacher"):
        teacher = build("edsr_mini")
        inherit(teacher.with_structure(2, 1, 8), teacher, pruned=teacher.with_structure(4, 1, 16))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("inherit")
    teacher = _randomized(from_structure("imdn", 2, 2, 16, scale=2))
    save_model(root / "imdn.pt", teacher)
    save_model(root / "pruned.pt", teacher)
    return {"train": write_noise_images(root / "train", 2, seed=1), "val": write_noise_images(root / "val", 1, seed=2),
            "teacher": root / "imdn.pt", "pruned": root / "pruned.pt"}


QUICK = ["--preset", "demo", "--batch-size", "2", "--patch-size", "16", "--iterations", "1", "--num-workers", "0",
         "--no-progress", "--threads", "1"]


def _refused(capsys, argv, tmp_path) -> str:
    before = sorted(tmp_path.rglob("*"))
    assert main(argv) == 2
    assert sorted(tmp_path.rglob("*")) == before
    return one_error_line(capsys, argv[0])


def test_inherit_with_a_student_of_another_family_is_refused_before_anything_is_written(folders, tmp_path, capsys):
    line = _refused(capsys, ["distill", *QUICK, "--teacher", str(folders["teacher"]), "--student", "edsr:1,1,8",
                             "--init", "inherit", "--data", str(folders["train"]), "--out", str(tmp_path / "s")],
                    tmp_path)
    assert line == ("cdism-fast distill: error: --init inherit: the student is of family edsr and the teacher of "
                    "family imdn: only a student of the teacher's own family can inherit its weights; pass --init "
                    "scratch (nothing was written)")
    # run: cpu-291's EDSRmini student is of another family than an IMDN teacher, refused before the run folder.
    line = _refused(capsys, ["run", *QUICK, "--preset", "cpu-291", "--teacher", str(folders["teacher"]), "--data",
                             str(folders["train"]), "--val", str(folders["val"]), "--init", "inherit", "--out",
                             str(tmp_path / "run")], tmp_path)
    assert line.startswith("cdism-fast run: error: --init inherit: the student is of family edsr and the teacher of "
                           "family imdn")


def test_auto_inherits_a_student_of_the_family_and_starts_another_from_scratch_saying_so(folders, tmp_path, capsys):
    assert main(["distill", *QUICK, "--teacher", str(folders["teacher"]), "--pruned", str(folders["pruned"]),
                 "--student", "imdn:1,1,8", "--init", "auto", "--data", str(folders["train"]),
                 "--out", str(tmp_path / "own")]) == 0
    record = json.loads((tmp_path / "own" / "stage.json").read_text())
    assert record["init"]["init"] == "inherit" and record["init"]["requested"] == "auto"
    assert "chosen by the pruned model's magnitudes" in record["init"]["reason"]
    assert record["settings"]["pruned_weights"] is not None  # a resume with another pruned model is refused
    assert "the student starts from the teacher's weights" in capsys.readouterr().out
    assert main(["distill", *QUICK, "--teacher", str(folders["teacher"]), "--student", "edsr:1,1,8", "--init",
                 "auto", "--data", str(folders["train"]), "--out", str(tmp_path / "other")]) == 0
    record = json.loads((tmp_path / "other" / "stage.json").read_text())
    assert record["init"] == {"init": "scratch", "requested": "auto", "reason": (
        "the student is of family edsr and the teacher of family imdn: only a student of the teacher's own family "
        "can inherit its weights")}
    assert "the student starts from scratch (the student is of family edsr" in capsys.readouterr().out


def test_the_no_kd_twin_inherits_as_its_kd_twin_does(folders, tmp_path):
    from cdism_fast.models import load_pretrained
    from cdism_fast.training.stages import student_from

    assert main(["distill", *QUICK, "--teacher", str(folders["teacher"]), "--student", "imdn:1,1,8", "--init",
                 "inherit", "--data", str(folders["train"]), "--no-kd", "--lr", "1e-12",
                 "--out", str(tmp_path / "no_kd")]) == 0
    assert json.loads((tmp_path / "no_kd" / "stage.json").read_text())["init"]["init"] == "inherit"
    expected = student_from("imdn:1,1,8", scale=2)
    inherit(expected, load_pretrained(folders["teacher"]))
    trained = load_pretrained(tmp_path / "no_kd" / "model.pt")
    for (name, a), b in zip(trained.named_parameters(), expected.parameters()):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=0, msg=name)  # one step at lr 1e-12: its start
