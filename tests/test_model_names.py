"""A model named on the command line: a shipped name means the shipped model even beside a file of that
name (``./name`` picks the file, and a warning says which was used); a typo lists the close names."""
import pytest
import torch

from cdism_fast.cli import main
from cdism_fast.evaluation import load_model
from cdism_fast.models import PRETRAINED, build, pretrained
from cdism_fast.training.artifacts import save_model

SHIPPED = next(iter(PRETRAINED))


def _same(a, b) -> bool:
    return a.config() == b.config() and all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                                             b.state_dict().values()))


def test_a_shipped_name_is_the_shipped_model_even_beside_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    impostor = build("edsr_baseline", scale=2).with_structure(1, 1, 8)
    save_model(tmp_path / SHIPPED, impostor)
    with pytest.warns(UserWarning, match=rf"--model {SHIPPED} is the shipped model {SHIPPED}, not the file "
                                         rf"{SHIPPED} in the working directory; pass --model \./{SHIPPED} to use "
                                         "the file"):
        model = load_model(SHIPPED)
    assert _same(model, pretrained(SHIPPED))
    assert _same(load_model(f"./{SHIPPED}"), impostor)


@pytest.mark.parametrize("typo, close", [("edsr_mini_29", "edsr_mini_291"), ("imdnn", "imdn"),
                                         ("imdn_mini291", "imdn_mini_291")])
def test_a_typo_lists_the_close_shipped_names_and_presets(typo, close):
    with pytest.raises(ValueError, match=rf"--teacher {typo} is not a file, a shipped model or a preset; did you "
                                         rf"mean {close}\b"):
        load_model(typo, option="--teacher")


def test_a_typo_on_the_command_line_is_one_line(tmp_path, capsys):
    assert main(["distill", "--teacher", "edsr_mini_29", "--student", "edsr_mini", "--out", str(tmp_path / "o")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cdism-fast distill: error: --teacher edsr_mini_29 is not a file, a shipped model or a "
                           "preset; did you mean edsr_mini_291")
    assert not (tmp_path / "o").exists()


def test_a_preset_name_is_the_preset_even_beside_a_file_of_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    impostor = build("imdn", scale=2)
    save_model(tmp_path / "edsr_mini", impostor)
    with pytest.warns(UserWarning, match=r"--model edsr_mini is the preset edsr_mini, not the file edsr_mini in the "
                                         r"working directory; pass --model \./edsr_mini to use the file"):
        model = load_model("edsr_mini")
    assert model.config() == build("edsr_mini").config()
    assert _same(load_model("./edsr_mini"), impostor)


def test_the_name_over_file_warning_names_the_option_of_each_command(tmp_path, monkeypatch):
    from cdism_fast.training.stages import student_from

    monkeypatch.chdir(tmp_path)
    save_model(tmp_path / SHIPPED, build("edsr_mini"))
    save_model(tmp_path / "edsr_mini", build("imdn", scale=2))
    with pytest.warns(UserWarning, match=rf"^MODEL {SHIPPED} is the shipped model {SHIPPED}, not the file {SHIPPED} "
                                         rf"in the working directory; pass MODEL \./{SHIPPED} to use the file$"):
        assert main(["export", SHIPPED, "e.safetensors"]) == 0
    with pytest.warns(UserWarning, match=r"^--student edsr_mini is the preset edsr_mini, not the file edsr_mini in "
                                         r"the working directory; pass --student \./edsr_mini to use the file$"):
        student = student_from("edsr_mini")
    assert student.config() == build("edsr_mini").config()
