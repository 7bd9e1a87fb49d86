"""The two ways to build: a plain (build-isolated) pip install that compiles on
first use, and CMake against libtorch. Both run the real tools, so they are slow."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def _tracked_copy(dest):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
                           check=True, capture_output=True, text=True).stdout.split()
    for name in files:
        if (REPO_ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, dest / name)
    return dest


def test_isolated_pip_install_compiles_on_first_use(tmp_path):
    source = _tracked_copy(tmp_path / "src")
    wheels, site, cache = tmp_path / "wheels", tmp_path / "site", tmp_path / "cache"
    pip = [sys.executable, "-m", "pip", "-q"]
    build = subprocess.run(pip + ["wheel", "--no-deps", "-w", str(wheels), str(source)],
                           capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = next(wheels.glob("cdism_fast-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--target", str(site), str(wheel)], check=True)
    assert not list(site.glob("cdism_fast/_C*.so")), "an isolated build must not ship a compiled extension"

    script = textwrap.dedent("""
        import torch, cdism_fast
        from cdism_fast import _extension, ops
        status = _extension.load("cpp")
        assert status.loaded and status.how == "built on first use", status
        assert _extension.source_dir().name == "_csrc", _extension.source_dir()
        x, y = torch.randn(4, 5), torch.randn(4, 5)
        torch.testing.assert_close(ops.charbonnier(x, y, backend="cpp"), ops.charbonnier(x, y, backend="reference"))
        print("ok", cdism_fast.__file__)
    """)
    # -S: no .pth files, so an editable install of the checkout cannot shadow the wheel.
    path = os.pathsep.join([str(site), *(p for p in sys.path if p.endswith("site-packages"))])
    run = subprocess.run([sys.executable, "-S", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                         env={"PYTHONPATH": path, "CDISM_CACHE": str(cache), "PATH": os.environ["PATH"]})
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith("ok " + str(site))
    assert "compiling the cdism_fast_C extension" in run.stderr  # said, in one line, once


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake is not installed")
def test_cmake_builds_against_libtorch(tmp_path):
    import torch.utils

    build = tmp_path / "build"
    configure = subprocess.run(["cmake", "-S", str(REPO_ROOT), "-B", str(build),
                                f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
                                f"-DPython_EXECUTABLE={sys.executable}"], capture_output=True, text=True)
    assert configure.returncode == 0, configure.stdout[-3000:] + configure.stderr[-3000:]
    compile_ = subprocess.run(["cmake", "--build", str(build), "-j2"], capture_output=True, text=True)
    assert compile_.returncode == 0, compile_.stdout[-3000:] + compile_.stderr[-3000:]
    library = build / "libcdism_fast_C.so"
    script = (f"import torch; torch.ops.load_library({str(library)!r}); "
              "x = torch.randn(3, 4); print(torch.ops.cdism_fast.charbonnier_loss(x, x, 1.0, True).item())")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert float(run.stdout) == pytest.approx(1.0)
