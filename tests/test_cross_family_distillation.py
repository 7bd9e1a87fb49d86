"""Distillation across families: a student of one family from a teacher of another, by the stage
function and by the command."""
import json

import pytest
import torch

from cdism_fast import models
from cdism_fast.cli import main
from cdism_fast.models import load_pretrained
from cdism_fast.training.artifacts import save_model
from cdism_fast.training.stages import distill

from model_references import randomize, tiny_settings

pytestmark = pytest.mark.usefixtures("one_thread")


def test_edsr_student_from_an_imdn_teacher(tmp_path):
    teacher = randomize(models.from_structure("imdn", 1, 2, 8, 2))
    result = distill(teacher, "edsr:2,1,8", tmp_path / "kd", tiny_settings())
    assert result.status == "completed" and result.model.config() == models.from_structure("edsr", 2, 1, 8).config()
    record = json.loads((tmp_path / "kd" / "stage.json").read_text())
    assert record["settings"]["teacher"]["family"] == "imdn" and record["settings"]["student"]["family"] == "edsr"
    # any module mapping RGB to RGB at the student's scale, a preset student
    bilinear = torch.nn.Upsample(scale_factor=2, mode="bilinear")
    assert distill(bilinear, "edsr_mini", tmp_path / "any", tiny_settings()).model.scale == 2


def test_a_teacher_of_another_scale_is_refused_before_anything_is_written(tmp_path):
    teacher = models.from_structure("pan", 1, 1, 8, 3)
    with pytest.raises(ValueError, match="the teacher upscales ×3 but the student ×2"):
        distill(teacher, models.build("edsr_mini", scale=2), tmp_path / "out", tiny_settings())
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="student must be a student.json, a preset .* or family:n_b,n_l,n_c"):
        distill(teacher, "edsr-8-1-16", tmp_path / "out", tiny_settings())


def test_distill_command_takes_a_structure_student_and_a_file_teacher(tmp_path, capsys):
    teacher = randomize(models.from_structure("imdn", 1, 1, 8, 2))
    save_model(tmp_path / "teacher.pt", teacher)
    common = ["--iterations", "1", "--batch-size", "2", "--patch-size", "12", "--workers", "0", "--no-progress",
              "--threads", "1"]
    assert main(["distill", "--teacher", str(tmp_path / "teacher.pt"), "--student", "edsr:1,1,8",
                 "--out", str(tmp_path / "s"), *common]) == 0
    assert load_pretrained(tmp_path / "s" / "model.pt").structure() == (1, 1, 8)
    assert main(["distill", "--teacher", str(tmp_path / "teacher.pt"), "--student", "edsr_mini", "--scale", "3",
                 "--out", str(tmp_path / "t"), *common]) == 2
    assert "holds a ×2 model, not ×3" in capsys.readouterr().err and not (tmp_path / "t").exists()
