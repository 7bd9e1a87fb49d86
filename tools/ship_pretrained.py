"""Copy trained students of a completed ``cdism-fast run`` into the package as shipped models.

    python tools/ship_pretrained.py runs/cpu-291-imdn student=imdn_mini_291 edsr_mini=edsr_mini_291

For each ``STAGE=NAME``: the stage's ``model.pt`` (read with ``weights_only=True``) is written
as ``cdism_fast/models/weights/NAME.safetensors``, and ``pretrained.json`` records its
architecture, sha256, parameter and MAC counts, the scores the run measured on it per
evaluation set (``evaluation.json``), the teacher and the command that trained it. The
shipped test (tests/test_pretrained.py) evaluates every shipped model again and compares.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = ROOT / "cdism_fast" / "models" / "weights"
LICENCE = ("Trained by the cdism_fast project on T91 (Yang et al. 2010) and BSD200 (the BSDS300 training split, "
           "Martin et al. 2001) with a published teacher's outputs as targets; for research use. The training "
           "images and the teacher's weights are their authors'.")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="a completed `cdism-fast run` folder")
    parser.add_argument("stages", nargs="+", metavar="STAGE=NAME", help="stage folder and the shipped name")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from cdism_fast.export import export
    from cdism_fast.models import count_flops, count_params, model_spec
    from cdism_fast.training.artifacts import read_json, read_model_file

    evaluation = read_json(args.run_dir / "evaluation.json", "evaluation file")
    run = read_json(args.run_dir / "stage.json", "run record")
    if evaluation is None or run is None or run.get("status") != "completed":
        print(f"error: {args.run_dir} is not a completed `cdism-fast run` folder", file=sys.stderr)
        return 2
    registry_file = WEIGHTS / "pretrained.json"
    registry = json.loads(registry_file.read_text())
    teacher = run["settings"].get("teacher")
    for pair in args.stages:
        stage, _, name = pair.partition("=")
        if not name.isidentifier() or stage not in evaluation["models"]:
            print(f"error: {pair!r} must be STAGE=NAME with STAGE one of {sorted(evaluation['models'])} and NAME "
                  "an identifier", file=sys.stderr)
            return 2
        model = read_model_file(args.run_dir / stage / "model.pt").eval()
        target = export(model, WEIGHTS / f"{name}.safetensors", scale=model.scale)
        scores = {set_name: {"psnr": result["psnr"], "ssim": result["ssim"]}
                  for set_name, result in evaluation["models"][stage]["sets"].items()}
        record = read_json(args.run_dir / stage / "stage.json", "stage record")
        structure = model.structure()
        registry[name] = {
            "file": target.name,
            "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
            "model": model_spec(model),
            "params": count_params(model),
            "flops": count_flops(model, out_hw=(720, 1280))["total"],
            "scores": scores,
            "summary": (f"{model.family} N_b {structure.n_b}, N_l {structure.n_l}, N_c {structure.n_c}, "
                        f"distilled from {Path(teacher).name if teacher else 'its teacher'} "
                        f"({run['settings']['preset']} preset, {record['iteration']:,} iterations)"),
            "teacher": Path(teacher).name if teacher else None,
            "preset": run["settings"]["preset"],
            "iterations": record["iteration"],
            "command": " ".join(run["command"]) if run.get("command") else None,
            "licence": LICENCE,
        }
        print(f"{name}: {target.relative_to(ROOT)} ({target.stat().st_size / 1e3:.0f} kB), "
              + ", ".join(f"{s} {v['psnr']:.3f} dB" for s, v in scores.items()))
    registry_file.write_text(json.dumps(registry, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
