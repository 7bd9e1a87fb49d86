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
