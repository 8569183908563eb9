"""Every script in ``benchmarks/`` and ``experiments/`` runs with ``--quick``, so none can rot.

Why subprocesses: a script is a program (argument parsing, imports by path, exit codes), and
that is what rots when the library changes underneath it. The scripts are found by globbing, so
a new script without a working ``--quick`` fails here. Each run gets its own empty working
directory and a ``$ROBUSTACT_DATA`` that does not exist, which proves that ``--quick`` needs no
real data, writes its JSON under ``runs/quick/`` and nothing to ``results/``.

The runs are started together at module set-up on a small process pool (one torch thread each),
since most of a quick run is interpreter and torch start-up, which parallelises well. The check
that a script without its data stops with one clear line runs all of them in one process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for folder in ("benchmarks", "experiments")
                 for p in (REPO / folder).glob("*.py") if not p.name.startswith("_"))
#: Scripts that read the real datasets (through the shared harness's ``load_data``).
NEEDS_DATA = [p for p in SCRIPTS if "load_data(" in p.read_text(encoding="utf-8")]

sys.path.insert(0, str(REPO / "scripts"))
import harness  # noqa: E402


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


def _env(cwd: Path) -> dict[str, str]:
    return {**os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                        os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg",
            "ROBUSTACT_DATA": str(cwd / "no-data-here")}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, env=_env(cwd), capture_output=True,
                          text=True, timeout=600)


#: Runs each script given on its command line as ``__main__`` (no arguments) in this one process
#: and prints, as JSON, its exit code and what it wrote to stderr. One process for all of them,
#: because each only has to get as far as looking for its data, and starting torch once per
#: script would cost more than the checks themselves.
_NO_DATA_DRIVER = """
import contextlib, io, json, runpy, sys, traceback
report = {}
for script in sys.argv[1:]:
    err, code = io.StringIO(), 0
    sys.argv = [script]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            code = e.code
        except BaseException:
            code, _ = "exception", traceback.print_exc()
    report[script] = {"code": code, "stderr": err.getvalue()}
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
         ) -> dict[tuple[str, Path], Future]:
    """("quick", script) -> future of (process, working dir); ("nodata", script) -> future of
    the driver's process (see :func:`_driver_report`); only for the tests selected here."""
    wanted = []
    for item in request.session.items:
        spec = getattr(item, "callspec", None)
        if (item.module is request.module and spec is not None
                and isinstance(spec.params.get("script"), Path)):
            wanted.append(("quick" if "quick" in item.name else "nodata", spec.params["script"]))
    wanted = list(dict.fromkeys(wanted))
    pool = ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1)))
    futures: dict[tuple[str, Path], Future] = {}
    nodata = [script for kind, script in wanted if kind == "nodata"]
    if nodata:
        cwd = tmp_path_factory.mktemp("nodata")
        driver = pool.submit(_run, ["-c", _NO_DATA_DRIVER, *map(str, nodata)], cwd)
        for script in nodata:
            futures[("nodata", script)] = driver
    for kind, script in wanted:
        if kind == "quick":
            cwd = tmp_path_factory.mktemp(f"quick-{script.stem}")
            futures[(kind, script)] = pool.submit(
                lambda s=script, c=cwd: (_run([str(s), "--quick"], c), c))
    yield futures
    pool.shutdown(wait=True, cancel_futures=True)


def _driver_report(proc: subprocess.CompletedProcess[str]) -> dict:
    assert proc.returncode == 0, _tail(proc)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def test_scripts_are_found() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"bench_attack_step.py", "bench_splash.py", "activation_zoo_mnist.py"} <= names
    assert len(NEEDS_DATA) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=_id)
def test_quick_run_writes_its_json(script: Path, runs: dict) -> None:
    proc, cwd = runs[("quick", script)].result()
    assert proc.returncode == 0, _tail(proc)
    outs = sorted((cwd / "runs" / "quick").glob("*.json"))
    assert len(outs) == 1, f"expected one JSON in runs/quick, got {outs}\n{_tail(proc)}"
    data = json.loads(outs[0].read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    assert data["quick"] is True  # a smoke run can never pass for a measurement
    assert data["command"] and data["environment"]["torch"]
    assert not (cwd / "results").exists()
    assert not (cwd / "no-data-here").exists()  # nothing was downloaded


@pytest.mark.slow
def test_every_baseline_preset_runs_quick(tmp_path: Path) -> None:
    """The generic quick run above covers train_baseline.py's default preset; the others too."""
    script = REPO / "experiments" / "train_baseline.py"
    presets = re.findall(r'^    "([a-z0-9-]+)": Preset\(', script.read_text(encoding="utf-8"), re.M)
    assert "mnist-lenet5" in presets and len(presets) >= 2
    for name in presets:
        proc = _run([str(script), name, "--quick", "--no-progress"], tmp_path)
        assert proc.returncode == 0, _tail(proc)
        data = json.loads((tmp_path / "runs" / "quick" / f"train_baseline_{name}.json")
                          .read_text(encoding="utf-8"))
        assert data["quick"] is True and data["benchmark"].endswith(name)
        assert data["data"]["n_train"] <= 256 and data["epochs"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("script", NEEDS_DATA, ids=_id)
def test_missing_real_data_is_one_line(script: Path, runs: dict) -> None:
    report = _driver_report(runs[("nodata", script)].result())[str(script)]
    assert report["code"] == 2, report
    lines = report["stderr"].strip().splitlines()
    assert len(lines) == 1, report
    assert lines[0].startswith("error: ") and "not found" in lines[0]
    assert "--data-root" in lines[0] and "$ROBUSTACT_DATA" in lines[0]


def test_quick_output_never_goes_to_results(tmp_path: Path) -> None:
    default = "results/x.json"
    assert harness.quick_output(default, default=default, quick=True, script="x") == \
        Path("runs/quick/x.json")
    assert harness.quick_output(None, default=None, quick=True, script="y") == \
        Path("runs/quick/y.json")
    assert harness.quick_output(tmp_path / "a.json", default=default, quick=True,
                                script="x") == tmp_path / "a.json"
    with pytest.raises(ValueError, match="never go to results/"):
        harness.quick_output(harness.RESULTS_DIR / "x.json", default=default, quick=True,
                             script="x")
    # without --quick the path is the caller's
    assert harness.quick_output(default, default=default, quick=False, script="x") == \
        Path(default)
    assert harness.quick_output(None, default=None, quick=False, script="x") is None


def test_standin_dataset_has_the_real_shape_and_is_learnable() -> None:
    mnist = harness.standin_dataset("mnist", "train")
    assert mnist.images.shape == (1200, 1, 28, 28) and mnist.classes == [str(d) for d in range(10)]
    assert mnist.class_counts().tolist() == [120] * 10
    again = harness.standin_dataset("mnist", "train")
    assert torch.equal(mnist.images, again.images) and torch.equal(mnist.labels, again.labels)
    test = harness.standin_dataset("mnist", "test")
    assert len(test) == 300 and not torch.equal(test.images[:10], mnist.images[:10])
    # the nearest class mean (from the training split) classifies the test split well: the
    # classes carry signal, so a quick training run has something to learn
    means = torch.stack([mnist.x()[mnist.labels == k].mean(0).flatten() for k in range(10)])
    pred = torch.cdist(test.x().flatten(1), means).argmin(1)
    assert float((pred == test.labels).float().mean()) > 0.9
    cifar = harness.standin_dataset("cifar10", "test")
    assert cifar.images.shape[1:] == (3, 32, 32) and cifar.classes[3] == "cat"
    with pytest.raises(ValueError, match="no stand-in"):
        harness.standin_dataset("cifar100", "train")
    with pytest.raises(ValueError, match="split"):
        harness.standin_dataset("mnist", "val")


def test_every_results_file_is_documented_with_a_runnable_command() -> None:
    """results/README.md has a section per results file, and its commands name real scripts."""
    readme = (REPO / "results" / "README.md").read_text(encoding="utf-8")
    headings = [line for line in readme.splitlines() if line.startswith("## ")]
    for f in sorted((REPO / "results").glob("*.json")):
        assert any(f"`{f.name}`" in h for h in headings), f"no section for results/{f.name}"
    commands = re.findall(r"python (\S+\.py)", readme)
    assert commands
    for path in commands:
        assert (REPO / path).is_file(), f"results/README.md runs {path}, which does not exist"
    top = (REPO / "README.md").read_text(encoding="utf-8")
    for path in re.findall(r"`((?:benchmarks|experiments|scripts)/\w+\.py)`", top):
        assert (REPO / path).is_file(), f"README.md names {path}, which does not exist"
