"""The family contract, checked for every registered family (``models.FAMILIES``) and preset
(``models.ARCHITECTURES``): construction, forward shapes and layouts, compile, the structure round
trip, the model file, checkpoint detection, counting and compression; the registry itself (a family
is one file: a toy family in a module of its own passes through every command); and bad input."""
import ast
import importlib
import inspect
import pkgutil
import re
import sys
from pathlib import Path

import pytest
import torch

from cdism_fast import models
from cdism_fast.compress import Compressible, Structure, compress_config, deep_feature_weights
from cdism_fast.models.checkpoints import checkpoint_formats
from cdism_fast.training.artifacts import save_model

from float64_references import layouts
from model_references import meta_preset, presets_of, randomize
from tolerances import assert_close

FAMILY_NAMES = list(models.FAMILIES)
PRESET_NAMES = list(models.ARCHITECTURES)


def small_member(family, scale=2):
    """A small member of ``family``: its first preset with 2 blocks of 1 layer and twice its channel multiple,
    random weights, in eval mode (float32, on the CPU)."""
    teacher = meta_preset(presets_of(family)[0], scale)
    return randomize(teacher.with_structure(2, 1, 2 * teacher.channel_multiple())).eval()


# --- construction, forward, compile --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_presets_structure_and_scale(name, scale):
    model = meta_preset(name, scale)
    assert isinstance(model, Compressible) and isinstance(model, models.SRModel)
    structure = model.structure()
    assert isinstance(structure, Structure) and all(isinstance(knob, int) and knob >= 1 for knob in structure)
    assert model.scale == scale
    assert models.preset_of(model.family, model.config()) == name
    with torch.device("meta"):
        assert model.with_structure(*structure).config() == model.config()  # the structure round trip
        rebuilt = type(model)(**model.config())
    assert rebuilt.config() == model.config()
    out = model(torch.empty(1, 3, 5, 7, device="meta"))
    assert out.shape == (1, 3, 5 * scale, 7 * scale)


def test_from_structure_takes_the_knobs_in_the_order_of_structure():
    for family in FAMILY_NAMES:
        multiple = meta_preset(presets_of(family)[0]).channel_multiple()
        with torch.device("meta"):
            model = models.from_structure(family, 3, 2, 4 * multiple)
        assert model.structure() == Structure(n_b=3, n_l=2, n_c=4 * multiple), family


def test_presets_is_a_deprecated_name_of_architectures():
    with pytest.warns(DeprecationWarning, match="PRESETS is now ARCHITECTURES"):
        assert models.PRESETS is models.ARCHITECTURES


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_layouts_and_batch(family):
    # float64: batched and single-image matmuls round differently in fp32 through a deep
    # network; in float64 any real mix-up between images or layouts stands far above rounding.
    model = small_member(family).double()
    x = torch.rand(3, 3, 7, 5, dtype=torch.float64)
    with torch.no_grad():
        expected = model(x)
        assert expected.shape == (3, 3, 7 * model.scale, 5 * model.scale)
        for name, variant in layouts(x).items():
            assert_close(model(variant), expected, msg=name)
        for i in range(3):
            assert_close(model(x[i:i + 1]), expected[i:i + 1], msg=f"image {i} alone")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_nan_propagates(family):
    model = small_member(family)
    x = torch.rand(1, 3, 8, 8)
    x[0, 1, 3, 3] = float("nan")
    with torch.no_grad():
        assert model(x).isnan().any()


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_compile_fullgraph_and_gradients(family):
    torch.manual_seed(0)
    model = small_member(family).train()
    if hasattr(model, "attention_backend"):  # the compiled C++ attention: tests/test_layout_compile.py
        model.attention_backend = "reference"
    x = torch.rand(2, 3, 6, 5)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(1)
    loss = compiled(x).square().mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    torch.manual_seed(1)
    expected_loss = model(x).square().mean()
    expected_grads = torch.autograd.grad(expected_loss, list(model.parameters()))
    assert_close(loss, expected_loss)
    for got, want in zip(grads, expected_grads):
        assert_close(got, want)
    assert all(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("x,match", [(torch.rand(3, 8, 8), "4 dimensions"), (torch.rand(1, 1, 8, 8), "RGB"),
                                     (torch.randint(0, 255, (1, 3, 8, 8)), "floating-point")])
def test_bad_input_images(family, x, match):
    with pytest.raises(ValueError, match=match):
        small_member(family)(x)


# --- files: the model file and the family's own checkpoint layout --------------------------------------------------

@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_model_file_round_trip(tmp_path, family):
    model = small_member(family, scale=3 if family != "pan" else 4)
    loaded = models.load_pretrained(save_model(tmp_path / "model.pt", model))
    assert type(loaded) is type(model) and loaded.config() == model.config() and not loaded.training
    x = torch.rand(1, 3, 6, 5)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_checkpoint_detection(tmp_path, family):
    """A state dict in the family's own names is detected as one of its formats and no other family's, and
    loads back with the same structure and weights."""
    model = small_member(family)
    state = model.state_dict()
    detected = [owner for owner, fmt in checkpoint_formats() if fmt.detect(state)]
    assert detected == [family]
    torch.save(state, tmp_path / "weights.pth")
    loaded = models.load_pretrained(tmp_path / "weights.pth", scale=model.scale)
    assert type(loaded) is type(model) and loaded.structure() == model.structure() and loaded.scale == model.scale
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key


# --- counting and compression -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", PRESET_NAMES)
def test_counting(name):
    model = meta_preset(name)
    assert models.count_params(model) == sum(p.numel() for p in model.parameters()) > 0
    macs = models.count_flops(model, (48, 64))
    assert all(isinstance(value, int) for value in macs.values())
    assert macs["total"] == macs["conv"] + macs["linear"] + macs["attention"] > 0
    assert macs["total_without_attention"] == macs["total"] - macs["attention"]


@pytest.mark.parametrize("name", PRESET_NAMES)
@pytest.mark.parametrize("d", [0.03, 0.05, 0.1, 0.3])
def test_no_allowed_neighbour_comes_closer(name, d):
    teacher = meta_preset(name)
    s = compress_config(teacher, d)
    target = d * deep_feature_weights(teacher)

    def gap(n_c):
        with torch.device("meta"):
            return abs(deep_feature_weights(teacher.with_structure(s.n_b, s.n_l, n_c)) - target)

    multiple = teacher.channel_multiple()
    assert s.n_c % multiple == 0
    for neighbour in (s.n_c - multiple, s.n_c + multiple):
        if neighbour >= multiple:
            assert gap(neighbour) >= gap(s.n_c), (s, neighbour)
    # N̂_b and N̂_l are eq. (6)'s
    assert s[:2] == compress_config(teacher, d, channels="eq7")[:2]


# --- bad input ---------------------------------------------------------------------------------------------------

def test_build_overrides_and_from_structure():
    model = models.build("edsr_mini", scale=3, res_scale=0.5, rgb_range=1.0)
    assert (model.res_scale, model.rgb_range, model.scale) == (0.5, 1.0, 3)
    same = models.from_structure("edsr", n_c=16, n_l=1, n_b=8, scale=3, res_scale=0.5, rgb_range=1.0)
    assert same.config() == model.config()
    swin = models.from_structure("swinir", 3, 4, 24, 2)
    assert swin.config() == models.build("swinir_mini").config()
    assert models.from_structure("swinir", 5, 2, 12, 4, num_heads=4, upsampler="pixelshuffle").num_heads == (4,) * 5


def test_unknown_preset_lists_known():
    with pytest.raises(ValueError, match="name must be a preset.*edsr_baseline.*swinir_mini.*'srcnn'"):
        models.build("srcnn")
    with pytest.raises(ValueError, match="family must be one of.*'vdsr'"):
        models.from_structure("vdsr", 2, 1, 16)
    with pytest.raises(ValueError, match="unknown_option"):
        models.build("edsr_mini", unknown_option=1)
    with pytest.raises(ValueError, match=r"\['depths'\]"):
        models.from_structure("swinir", 2, 2, 12, depths=(1, 1))


@pytest.mark.parametrize("name,scale", [("edsr_mini", 5), ("edsr_baseline", 6), ("swinir_classical", 5),
                                        ("swinir_mini", 1), ("edsr_mini", 1), ("edsr_mini", 2.0),
                                        ("swinir_lightweight", "2")])
def test_impossible_scale(name, scale):
    with pytest.raises(ValueError, match="scale"):
        models.build(name, scale=scale)


@pytest.mark.parametrize("family", [name for name, cls in models.FAMILIES.items()
                                    if "rgb_mean" in inspect.signature(cls).parameters])
@pytest.mark.parametrize("rgb_mean", [(0.5, 0.5), (0.1, 0.2, 0.3, 0.4)])
def test_an_rgb_mean_of_other_than_three_numbers_is_refused(family, rgb_mean):
    with pytest.raises(ValueError, match=rf"^rgb_mean must be 3 numbers \(R, G, B\), got {re.escape(repr(rgb_mean))}$"):
        models.FAMILIES[family](rgb_mean=rgb_mean)




# --- the registry: a family is one file ---------------------------------------------------------------------------

#: A whole family in one module: the network, its knobs, one preset and its checkpoint layout.
TOY_FAMILY = '''
from torch import nn

from cdism_fast.models.common import check_positive_int, construct
from cdism_fast.models.family import CheckpointFormat, Preset, SRModel, indices, register_family


def _infer(state, source, scale=None):
    blocks = indices(state, r"toy_blocks\\.(\\d+)\\.0\\.weight$")
    depth = len(indices(state, r"toy_blocks\\.0\\.(\\d+)\\.weight$"))
    scale = round((state["toy_tail.0.weight"].shape[0] // 3) ** 0.5)
    return dict(scale=scale, n_c=state["toy_head.weight"].shape[0], n_b=len(blocks), n_l=depth)


@register_family
class Toy(SRModel):
    family = "toy"
    presets = {"toy_small": Preset("toy", "a toy family", dict(n_c=8, n_b=2, n_l=1))}
    checkpoint_formats = (CheckpointFormat("Toy", ("toy_head.weight", "toy_blocks.<i>.0.weight"), _infer),)
    deep_feature_modules = ("toy_blocks",)

    def __init__(self, scale=2, n_c=8, n_b=2, n_l=1):
        super().__init__()
        self.scale = check_positive_int("scale", scale, 2)
        self.n_c, self.n_b, self.n_l = (check_positive_int(k, v) for k, v in (("n_c", n_c), ("n_b", n_b), ("n_l", n_l)))
        self.toy_head = nn.Conv2d(3, n_c, 3, padding=1)
        self.toy_blocks = nn.Sequential(*(nn.Sequential(*(nn.Conv2d(n_c, n_c, 3, padding=1) for _ in range(n_l)))
                                          for _ in range(n_b)))
        self.toy_tail = nn.Sequential(nn.Conv2d(n_c, 3 * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    @classmethod
    def from_structure(cls, n_b, n_l, n_c, scale=2, **options):
        return construct(cls, "from_structure", options, scale=scale, n_c=n_c, n_l=n_l, n_b=n_b)

    def config(self):
        return dict(scale=self.scale, n_c=self.n_c, n_b=self.n_b, n_l=self.n_l)

    def channel_multiple(self):
        return 4

    def forward(self, x):
        features = self.toy_head(x)
        return self.toy_tail(features + self.toy_blocks(features))
'''


@pytest.fixture
def toy_family(tmp_path, monkeypatch):
    """The toy family, registered by importing its module from a folder outside the package; the registry
    is restored afterwards."""
    folder = tmp_path / "toy_module"
    folder.mkdir()
    (folder / "toy_family.py").write_text(TOY_FAMILY, encoding="utf-8")
    monkeypatch.syspath_prepend(str(folder))
    families, architectures = dict(models.FAMILIES), dict(models.ARCHITECTURES)
    try:
        yield importlib.import_module("toy_family").Toy
    finally:
        sys.modules.pop("toy_family", None)
        models.FAMILIES.clear()
        models.FAMILIES.update(families)
        models.ARCHITECTURES.clear()
        models.ARCHITECTURES.update(architectures)


def test_a_family_is_one_file(toy_family, tmp_path, capsys):
    from cdism_fast.cli import main
    from cdism_fast.compress import compact_model

    assert models.FAMILIES["toy"] is toy_family and models.ARCHITECTURES["toy_small"].family == "toy"
    assert "toy" in models.family_names().split(", ") and "Toy" in models.format_names().split(", ")
    # `cdism-fast models` lists its preset
    assert main(["models"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[3:] if line.strip()}
    assert rows["toy_small"][1:5] == ["toy", "2", "1", "8"]
    # its layout is detected and loaded, and named when a file is of no known layout
    model = randomize(models.build("toy_small", scale=3)).eval()
    torch.save(model.state_dict(), tmp_path / "toy.pth")
    loaded = models.load_pretrained(tmp_path / "toy.pth")
    assert type(loaded) is toy_family and loaded.config() == model.config()
    with pytest.raises(models.CheckpointMismatch, match=r"Toy \(toy_head.weight, toy_blocks.<i>.0.weight\)"):
        models.load_pretrained({"conv1.weight": torch.zeros(1)})
    # compression and counting
    student = compact_model(model, 0.25)
    assert type(student) is toy_family and student.structure() == compress_config(model, 0.25)
    assert models.count_params(model) == (27 * 8 + 8) + 2 * (72 * 8 + 8) + (72 * 27 + 27)
    assert models.count_flops(model, (24, 30))["conv"] == 8 * 10 * (27 * 8 + 2 * 72 * 8 + 72 * 27)
    # the model file and the compress command
    save_model(tmp_path / "model.pt", models.build("toy_small"))
    assert main(["compress", "--teacher", str(tmp_path / "model.pt"), "--density", "0.25",
                 "--out", str(tmp_path / "c")]) == 0
    assert '"family": "toy"' in (tmp_path / "c" / "student.json").read_text()
    # and every contract test, with no other edit
    test_presets_structure_and_scale("toy_small", 2)
    test_layouts_and_batch("toy")
    (tmp_path / "file").mkdir()
    test_model_file_round_trip(tmp_path / "file", "toy")
    (tmp_path / "detection").mkdir()
    test_checkpoint_detection(tmp_path / "detection", "toy")
    test_counting("toy_small")
    test_no_allowed_neighbour_comes_closer("toy_small", 0.1)


def test_a_family_registered_twice_or_a_preset_taken_is_refused():
    class Twin(models.SRModel):
        family = "edsr"
        deep_feature_modules = ("body",)

    with pytest.raises(ValueError, match="family 'edsr' is registered twice: cdism_fast.models.edsr.EDSR and"):
        models.register_family(Twin)

    class Clash(models.SRModel):
        family = "clash"
        deep_feature_modules = ("body",)
        presets = {"edsr_mini": models.Preset("clash", "a second edsr_mini", {})}

    with pytest.raises(ValueError, match="preset 'edsr_mini' of family 'clash' is already a preset of 'edsr'"):
        models.register_family(Clash)
    assert "clash" not in models.FAMILIES and models.ARCHITECTURES["edsr_mini"].family == "edsr"


def test_every_family_module_in_the_models_folder_is_registered():
    module_names = {f"cdism_fast.models.{info.name}" for info in pkgutil.iter_modules(models.__path__)}
    declared = []
    for name in sorted(module_names):
        module = importlib.import_module(name)
        declared += [value for value in vars(module).values()
                     if isinstance(value, type) and issubclass(value, models.SRModel)
                     and value.__module__ == name and "family" in vars(value)]
    assert sorted(cls.family for cls in declared) == sorted(models.FAMILIES)
    for cls in declared:
        assert models.FAMILIES[cls.family] is cls
        assert getattr(models, cls.__name__) is cls and cls.__name__ in models.__all__


#: How many family names make a literal a hand list of families (a pair can be a test of those two).
HAND_LIST_SIZE = 3


def hand_lists(path, families, classes):
    """(line, names) of each literal list, tuple, set or dict in ``path`` naming HAND_LIST_SIZE or more
    families (by name or by class), directly or as the first item of its entries."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = [key for key in node.keys if key is not None]
        else:
            continue
        found = set()
        for item in items:
            if isinstance(item, (ast.Tuple, ast.List)) and item.elts:
                item = item.elts[0]
            if isinstance(item, ast.Constant) and item.value in families:
                found.add(item.value)
            elif isinstance(item, ast.Name) and item.id in classes:
                found.add(item.id)
        if len(found) >= HAND_LIST_SIZE:
            yield node.lineno, sorted(found)


def test_no_file_lists_the_families_by_hand():
    families, classes = set(models.FAMILIES), {cls.__name__ for cls in models.FAMILIES.values()}
    root = Path(__file__).resolve().parent.parent
    files = sorted((root / "tests").glob("*.py")) + sorted((root / "cdism_fast").rglob("*.py"))
    found = {f"{path.relative_to(root)}:{line}": hit
             for path in files for line, hit in hand_lists(path, families, classes)}
    assert found == {}, "list the families from cdism_fast.models.FAMILIES instead"


def test_the_hand_list_check_finds_a_hand_list(tmp_path):
    (tmp_path / "listing.py").write_text('TABLE = {"edsr": 1, "pan": 2, "imdn": 3}\n'
                                         'CASES = [("imdn", 1), ("swinir", 2), ("pan", 3)]\n'
                                         'CLASSES = (EDSR, IMDN, SwinIR)\n'
                                         'PAIR = ["edsr", "swinir"]\nedsr, swinir, pan = 1, 2, 3\n', encoding="utf-8")
    families, classes = set(models.FAMILIES), {cls.__name__ for cls in models.FAMILIES.values()}
    found = list(hand_lists(tmp_path / "listing.py", families, classes))
    assert [line for line, _ in found] == [1, 2, 3] and all(len(names) == 3 for _, names in found)
