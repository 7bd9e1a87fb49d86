"""cdism-fast upscale never overwrites its input and never writes two inputs to one name.
"""
from PIL import Image

from cdism_fast.cli import main

from helpers.images import write_noise_images
from helpers.runs import one_error_line, tree_hash


def test_upscale_refuses_to_overwrite_its_input_or_merge_names(tmp_path, capsys):
    folder = write_noise_images(tmp_path / "in", 1, seed=3)
    Image.open(folder / "img0.png").save(folder / "img0.jpg")
    before = tree_hash(folder)
    assert main(["upscale", "--model", "bicubic", "--scale", "2", str(folder), str(folder)]) == 2
    assert "OUT" in one_error_line(capsys, "upscale") and tree_hash(folder) == before
    assert main(["upscale", "--model", "bicubic", "--scale", "2", str(folder / "img0.png"),
                 str(folder / "img0.png")]) == 2
    assert "is an input image" in one_error_line(capsys, "upscale") and tree_hash(folder) == before
    assert main(["upscale", "--model", "bicubic", "--scale", "2", str(folder), str(tmp_path / "out")]) == 2
    line = one_error_line(capsys, "upscale")
    assert "img0.jpg and img0.png would both be written to" in line and not (tmp_path / "out").exists()
