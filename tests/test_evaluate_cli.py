"""``robustact evaluate``: any model (a checkpoint, or ``path.py:Factory`` + weights) through a
protocol, the audit and a summary; every bad input is one ``error:`` line and loses nothing.

All on sklearn's digits with a SmallCNN trained for 2 epochs, ``--protocol quick``, 30 images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from test_cli_errors import one_error_line
from torch import nn
from typer.testing import CliRunner

import robustact.evaluate.runner as runner_mod
import robustact.modelfile as modelfile_mod
from robustact.cli import app
from robustact.core.storage import read_json
from robustact.data import load_dataset
from robustact.evaluate import load_table
from robustact.modelfile import load_model_file
from robustact.nn import Normalize
from robustact.report.intervals import pct_ci
from robustact.train import load_checkpoint

runner = CliRunner()
FAST = ["--protocol", "quick", "--n", "30", "--no-progress", "--threads", "1", "--device", "cpu",
        "--audit-samples", "5"]

NET = '''
import torch
from torch import nn
from robustact.models import create_model

def make(**kw):
    return create_model("smallcnn", dataset="digits", **kw)

class Plain(nn.Module):
    """A foreign model that expects normalized inputs."""
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 10)
    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))

class Pair(Plain):
    def forward(self, x):
        z = super().forward(x)
        return z, x

class NaNs(Plain):
    def forward(self, x):
        return super().forward(x) * float("nan")

def broken():
    raise RuntimeError("no GPU here")

def not_a_model():
    return 3
'''


@pytest.fixture(scope="module")
def ckpt(digits_ckpt: Path) -> Path:
    return digits_ckpt


@pytest.fixture(scope="module")
def files(ckpt: Path) -> dict[str, Path]:
    """net.py, the checkpoint's weights as safetensors and as a .pt state dict, and bad files."""
    d = ckpt.parent.parent / "files"
    d.mkdir()
    (d / "net.py").write_text(NET)
    (d / "syntax.py").write_text("def make(:\n")
    model, _ = load_checkpoint(ckpt)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(d / "w.safetensors"))
    torch.save(state, d / "w.pt")
    torch.save(model, d / "whole.pt")  # a full pickled module
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.rand(2, 1, 8, 8)).sum().backward()
    opt.step()
    torch.save(opt.state_dict(), d / "optim.pt")
    torch.save({"model": state, "epoch": 3}, d / "train_ckpt.pt")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        other = nn.Linear(3, 2)
    torch.save(other.state_dict(), d / "other.pt")
    return {p.name: p for p in d.iterdir()}


def _run(*args: str) -> object:
    return runner.invoke(app, ["evaluate", *args])


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_checkpoint_evaluates_end_to_end_and_resumes(ckpt: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "ev"
    res = _run("--model", str(ckpt), "--out", str(out), *FAST)
    assert res.exit_code == 0, res.output
    assert f"results: {out}" in res.output and "verdict: " in res.output
    summary = read_json(out / "summary.json")
    table = load_table(out)
    assert summary["protocol"] == "quick@2" and summary["eps"] == pytest.approx(0.1)  # digits
    # the printed accuracies carry their 95 % intervals, the summary's own
    for key in ("clean_accuracy", "robust_accuracy"):
        lo, hi = summary[f"{key}_ci"]
        assert lo <= summary[key] <= hi
        assert pct_ci(summary[key], [lo, hi]) in res.output
    assert summary["n"] == 30 and summary["command"].startswith("robustact evaluate --model")
    # the summary's numbers are the table's: clean and per-sample worst case at ε
    clean = table.meta["clean"]["clean_correct"]
    assert summary["clean_accuracy"] == pytest.approx(clean.mean())
    at = table.where(table["eps"] == 0.1)
    broken = {int(s) for s, ok in zip(at["sample"], at["success"], strict=True) if ok}
    robust = sum(1 for s, c in zip(table.meta["clean"]["sample"], clean, strict=True)
                 if c and int(s) not in broken)
    assert summary["robust_accuracy"] == pytest.approx(robust / 30)
    assert [a["attack"] for a in summary["attacks_at_eps"]] == ["fgsm", "pgd-20", "square"]
    assert summary["verdict"]["label"] in ("masking confirmed", "masking suspected",
                                           "no evidence of masking found")
    assert summary["seconds"]["audit"] > 0 and summary["cost"]["backward_per_image"] > 0
    before = _hashes(out)

    calls: list[str] = []
    real = runner_mod._run_cell

    def counting(*a: object, **k: object) -> object:
        calls.append("cell")
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(runner_mod, "_run_cell", counting)
    res = _run("--model", str(ckpt), "--out", str(out), *FAST)
    assert res.exit_code == 0, res.output
    assert calls == []  # every cell was read back, no attack ran again
    after = _hashes(out)
    cells = {k: v for k, v in before.items() if k.startswith("cells/")}
    assert cells and all(after[k] == v for k, v in cells.items())
    again = read_json(out / "summary.json")
    assert again["robust_accuracy"] == summary["robust_accuracy"]
    # a --no-audit rerun keeps the earlier audit's verdict instead of dropping it
    res = _run("--model", str(ckpt), "--out", str(out), "--no-audit", *FAST)
    assert res.exit_code == 0, res.output
    kept = read_json(out / "summary.json")["verdict"]
    assert kept["label"] == summary["verdict"]["label"] and kept["from_earlier_run"] is True


def test_model_file_gives_the_checkpoint_numbers(ckpt: Path, files: dict[str, Path],
                                                 tmp_path: Path) -> None:
    ref = tmp_path / "ref"
    assert _run("--model", str(ckpt), "--out", str(ref), "--no-audit", *FAST).exit_code == 0
    want = load_table(ref)
    for w in ("w.safetensors", "w.pt"):
        out = tmp_path / w
        res = _run("--model-file", f"{files['net.py']}:make", "--weights", str(files[w]),
                   "--dataset", "digits", "--out", str(out), "--no-audit", *FAST)
        assert res.exit_code == 0, res.output
        got = load_table(out)
        assert got.meta["model"]["fingerprint"] == want.meta["model"]["fingerprint"]
        for col in ("sample", "success", "pred", "linf"):
            assert (got[col] == want[col]).all(), (w, col)
        s, r = read_json(out / "summary.json"), read_json(ref / "summary.json")
        assert s["worst_case"] == r["worst_case"] and s["clean_accuracy"] == r["clean_accuracy"]
        assert s["verdict"]["label"] == "not audited"


def test_factory_arg_reaches_the_factory(files: dict[str, Path], tmp_path: Path) -> None:
    res = _run("--model-file", f"{files['net.py']}:make", "--factory-arg", "num_classes=7",
               "--dataset", "digits", "--out", str(tmp_path / "o"), *FAST)
    one_error_line(res, "returns 7 logits", "10 classes")


def test_normalize_matches_normalization_inside(files: dict[str, Path]) -> None:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        ref = load_model_file(f"{files['net.py']}:Plain")
    w = files["net.py"].parent / "plain.safetensors"
    save_file(dict(ref.state_dict()), str(w))
    wrapped = load_model_file(f"{files['net.py']}:Plain", weights=w, normalize="0.3/0.38")
    inside = nn.Sequential(Normalize([0.3], [0.38]), ref).eval()
    x = load_dataset("digits", "test").x(slice(0, 16))
    with torch.no_grad():
        assert torch.equal(wrapped(x), inside(x))
        assert not torch.allclose(wrapped(x), ref(x))  # the normalization did something


def test_eps_fraction_accepted(ckpt: Path, tmp_path: Path) -> None:
    res = _run("--model", str(ckpt), "--eps", "8/255", "--out", str(tmp_path / "o"),
               "--no-audit", *FAST)
    assert res.exit_code == 0, res.output
    assert read_json(tmp_path / "o" / "summary.json")["eps"] == pytest.approx(8 / 255)


def test_resume_with_another_protocol_refused_and_nothing_lost(ckpt: Path,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert _run("--model", str(ckpt), "--out", str(out), *FAST).exit_code == 0
    before = _hashes(out)
    args = [a if a != "quick" else "standard" for a in FAST]
    one_error_line(_run("--model", str(ckpt), "--out", str(out), *args),
                   "different evaluation", "protocol")
    one_error_line(_run("--model", str(ckpt), "--out", str(out), "--eps", "0.05", *FAST),
                   "different evaluation", "eps_grid")
    assert _hashes(out) == before


def test_force_starts_over(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    assert _run("--model", str(ckpt), "--out", str(out), "--no-audit", *FAST).exit_code == 0
    res = _run("--model", str(ckpt), "--out", str(out), "--no-audit", "--eps", "0.05", "--force",
               *FAST)
    assert res.exit_code == 0, res.output
    assert load_table(out).meta["eps"] == pytest.approx(0.05)


def test_default_out_is_a_fresh_folder(ckpt: Path, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = _run("--model", str(ckpt), "--no-audit", *FAST)
    assert res.exit_code == 0, res.output
    (made,) = (tmp_path / "runs" / "evaluate").iterdir()
    assert made.name.startswith("m-final-quick-") and (made / "summary.json").is_file()
    # a failed start leaves no empty default folder behind
    one_error_line(_run("--model", str(ckpt), "--eps", "2", *FAST), "eps must be in (0, 1]")
    assert list((tmp_path / "runs" / "evaluate").iterdir()) == [made]


def test_weights_are_read_with_weights_only(files: dict[str, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[object] = []
    real = torch.load

    def spy(*a: object, **k: object) -> object:
        seen.append(k.get("weights_only"))
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(modelfile_mod.torch, "load", spy)
    with pytest.raises(ValueError, match="not a plain state dict of tensors.*never unpickles"):
        load_model_file(f"{files['net.py']}:make", weights=files["whole.pt"])
    load_model_file(f"{files['net.py']}:make", weights=files["w.pt"])
    assert seen == [True, True]


def test_pickle_with_code_is_not_run(files: dict[str, Path], tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str, str]]:
            return (open, (str(marker), "w"))

    bad = tmp_path / "evil.pt"
    torch.save({"w": Evil()}, bad)
    res = _run("--model-file", f"{files['net.py']}:make", "--weights", str(bad),
               "--dataset", "digits", *FAST)
    one_error_line(res, "not a plain state dict", "model.state_dict()")
    assert not marker.exists()


BAD_MODEL_FILES = [
    ("missing.py:make", [], "does not exist"),
    ("net.py:nothing", [], "defines no 'nothing'"),
    ("net.py", [], "path.py:Factory"),
    ("syntax.py:make", [], "syntax error at line 1"),
    ("net.py:broken", [], "raised RuntimeError: no GPU here"),
    ("net.py:not_a_model", [], "not a torch.nn.Module"),
    ("net.py:make", ["--weights", "whole.pt"], "not a plain state dict of tensors"),
    ("net.py:make", ["--weights", "optim.pt"], "not a plain state dict of tensors"),
    ("net.py:make", ["--weights", "train_ckpt.pt"], "under 'model'"),
    ("net.py:make", ["--weights", "other.pt"], "do not fit the model"),
    ("net.py:make", ["--weights", "nope.safetensors"], "does not exist"),
    ("net.py:make", ["--weights", "net.py"], "expected one of .safetensors"),
    ("net.py:Plain", ["--weights", "w.safetensors"], "missing in file: conv.bias, conv.weight"),
    ("net.py:Pair", [], "got tuple"),
    ("net.py:NaNs", [], "contain NaN or infinite values"),
    ("net.py:make", ["--normalize", "0.5"], "MEANS/STDS"),
    ("net.py:make", ["--normalize", "0.5,0.5/0.2"], "2 means but 1 stds"),
    ("net.py:make", ["--normalize", "0.5,0.4,0.4/0.2,0.2,0.2"], "normalization expects 3"),
    ("net.py:make", ["--num-classes", "3"], "returns 10 logits"),
]


@pytest.mark.parametrize(("spec", "extra", "needle"), BAD_MODEL_FILES,
                         ids=[f"{s}{' '.join(e)}" for s, e, _ in BAD_MODEL_FILES])
def test_bad_model_file_is_one_line_and_writes_nothing(files: dict[str, Path], tmp_path: Path,
                                                       spec: str, extra: list[str],
                                                       needle: str) -> None:
    d = files["net.py"].parent
    extra = [str(d / a) if a.endswith((".pt", ".safetensors", ".py")) else a for a in extra]
    out = tmp_path / "o"
    res = _run("--model-file", str(d / spec), *extra, "--dataset", "digits", "--out", str(out),
               *FAST)
    one_error_line(res, needle)
    assert not out.exists()


@pytest.mark.parametrize(("args", "needle"), [
    (["--eps", "8"], "eps must be in (0, 1] for linf"),
    (["--eps", "-0.1"], "eps must be in (0, 1]"),
    (["--eps", "0.1x"], "--eps expects a number"),
    (["--norm", "l2", "--eps", "9"], "eps must be in (0, 8] for l2"),
    (["--weights", "x.pt"], "only apply to --model-file"),
    (["--n", "0"], "--n"),
    (["--protocol", "fast"], "unknown protocol 'fast'"),
])
def test_bad_options_are_one_line(ckpt: Path, tmp_path: Path, args: list[str],
                                  needle: str) -> None:
    out = tmp_path / "o"
    one_error_line(_run("--model", str(ckpt), "--out", str(out), *FAST, *args), needle)
    assert not (out / "table.json").exists()


def test_model_choice_is_one_line(ckpt: Path, files: dict[str, Path]) -> None:
    one_error_line(_run(*FAST), "either as a robustact checkpoint")
    one_error_line(_run("--model", str(ckpt), "--model-file", f"{files['net.py']}:make", *FAST),
                   "not both")
    one_error_line(_run("--model-file", f"{files['net.py']}:make", *FAST), "needs --dataset")
    one_error_line(_run("--model", str(ckpt.parent / "nope"), *FAST), "no checkpoint at")


def test_summary_json_is_plain_json(ckpt: Path, tmp_path: Path) -> None:
    assert _run("--model", str(ckpt), "--out", str(tmp_path / "o"), "--no-audit",
                *FAST).exit_code == 0
    text = (tmp_path / "o" / "summary.json").read_text()
    summary = json.loads(text)
    assert set(summary["worst_case"]) == {"0.0", "0.025", "0.05", "0.1", "0.2"}
    assert summary["seconds"]["audit"] is None


def test_evaluate_model_passes_adaptive_overrides_and_curves(ckpt: Path, tmp_path: Path) -> None:
    """The demo's two evaluations go through evaluate_model: without the adaptive attacks, with
    protocol overrides (recorded), and with an extra curve in the reports."""
    from robustact.defenses import retrofit_jumprelu
    from robustact.report import Curve
    from robustact.runs.evaluate import evaluate_model

    model, _ = load_checkpoint(ckpt)
    jump = retrofit_jumprelu(model, 0.5).eval()
    data = load_dataset("digits", "test").subset(torch.arange(12))
    curve = Curve(x=[0.0, 0.5], series={"validation accuracy": [0.9, 0.8]}, xlabel="κ")
    common = dict(dataset="digits", protocol="quick", overrides={"steps": 2, "n_queries": 10},
                  progress=False)
    std = evaluate_model(jump, data, out=tmp_path / "std", adaptive=False, audit=False,
                         extra_curves={"kappa": curve}, **common)
    ada = evaluate_model(jump, data, out=tmp_path / "ada", audit=False, **common)
    assert "bpda-apgd" in {a["attack"] for a in ada["attacks_at_eps"]}
    assert "bpda-apgd" not in {a["attack"] for a in std["attacks_at_eps"]}
    assert ada["robust_accuracy"] <= std["robust_accuracy"]
    rec = read_json(tmp_path / "std" / "report.json")
    assert rec["protocol"]["overrides"] == {"steps": 2, "n_queries": 10}
    assert rec["protocol"]["attacks"]["pgd-20"]["steps"] == 2
    assert rec["extra_curves"]["kappa"]["x"] == [0.0, 0.5]
    assert "kappa" not in read_json(tmp_path / "ada" / "report.json")["extra_curves"]
