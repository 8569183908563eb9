"""DDP training under torchrun (issue 23): 2 CPU processes with gloo end with the weights one
process trains on the same global batches (plain, with augmentation and uneven last batches,
and the adversarial recipes pgd, trades, mix, fast); rank 0 alone writes checkpoints; a run
stopped after epoch 1 and resumed (by 2 processes, or by one) ends where the uninterrupted one
does; the command line under torchrun; and how :class:`DistEnv` reads the environment (no
processes needed).

The worker (``_ddp_worker.py``) is started once for the module by ``python -m
torch.distributed.run --standalone --nproc-per-node 2`` (torchrun) and trains every scenario;
the tests compare its files with one-process runs of the same scenarios made here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from _ddp_worker import SCENARIOS, build, run
from typer.testing import CliRunner

from robustact.cli import app
from robustact.core.storage import load_tensors
from robustact.train import DistEnv, TrainConfig, Trainer

pytestmark = pytest.mark.usefixtures("one_thread")

HERE = Path(__file__).resolve().parent
ATOL = 1e-5  # float sums in another order (two halves all-reduced vs one batch): ~1e-7 seen


def _torchrun(args: list[str], cwd: Path, timeout: float = 240) -> None:
    """Start 2 processes with torchrun (one thread each); fail with their output on an error."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout)
    assert res.returncode == 0, (res.stdout[-3000:] + res.stderr[-5000:])


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    _torchrun([str(HERE / "_ddp_worker.py"), str(out)], cwd=HERE)
    return out


@pytest.fixture(scope="module")
def one_process() -> dict[str, tuple[dict[str, torch.Tensor], list[dict[str, Any]]]]:
    """(final weights, history) of every scenario trained in this one process."""
    found = {}
    for name in SCENARIOS:
        model, train, val, config = build(name)
        history = run(name, model, train, val, config, None, None)
        found[name] = ({k: v.clone() for k, v in model.state_dict().items()}, history)
    return found


def _rank(out: Path, name: str, rank: int) -> dict[str, Any]:
    return torch.load(out / f"{name}-rank{rank}.pt", weights_only=True)


# --- the multi-process runs -------------------------------------------------------------------

@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ddp_weights_equal_one_process_on_the_same_global_batch(
        scenario: str, ddp_out: Path, one_process: dict) -> None:
    r0, r1 = _rank(ddp_out, scenario, 0), _rank(ddp_out, scenario, 1)
    single, _ = one_process[scenario]
    init = build(scenario)[0].state_dict()
    for k, w in single.items():
        assert torch.equal(r0["state"][k], r1["state"][k]), f"ranks disagree on {k}"
        moved = float((w - init[k]).abs().max())
        assert moved > 100 * ATOL, f"{k} barely trained ({moved:.2e}): the check would be empty"
        diff = float((r0["state"][k] - w).abs().max())
        assert diff <= ATOL, f"{scenario}: {k} differs from one process by {diff:.2e}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_ddp_history_is_the_one_process_history(scenario: str, ddp_out: Path,
                                                one_process: dict) -> None:
    _, single = one_process[scenario]
    for rank in (0, 1):
        history = _rank(ddp_out, scenario, rank)["history"]
        assert len(history) == len(single) == 2
        for got, want in zip(history, single, strict=True):
            # accuracies are counts summed over the ranks: exactly the one-process fractions
            for key in ("train_acc", "val_acc", "robust_acc", "lr"):
                assert got.get(key) == want.get(key), (scenario, rank, key)
            for key in ("train_loss", "val_loss"):
                assert got[key] == pytest.approx(want[key], rel=1e-5), (scenario, rank, key)


def test_only_rank_0_writes_checkpoints(ddp_out: Path) -> None:
    rank0 = json.loads((ddp_out / "saves-rank0.json").read_text())
    rank1 = json.loads((ddp_out / "saves-rank1.json").read_text())
    assert rank1 == []
    for name in SCENARIOS:
        assert str(ddp_out / name / "last") in rank0 and str(ddp_out / name / "best") in rank0
        assert (ddp_out / name / "last" / "card.json").exists()
    assert str(ddp_out / "fast" / "robust_best") in rank0  # the fast-AT guard's, too


def test_resumed_ddp_run_ends_where_the_uninterrupted_one_does(ddp_out: Path) -> None:
    resumed, straight = _rank(ddp_out, "resume", 0), _rank(ddp_out, "plain", 0)
    for k, w in straight["state"].items():
        assert torch.equal(resumed["state"][k], w), k
        assert torch.equal(_rank(ddp_out, "resume", 1)["state"][k], w), k
    drop = ("seconds",)
    assert ([{k: v for k, v in r.items() if k not in drop} for r in resumed["history"]]
            == [{k: v for k, v in r.items() if k not in drop} for r in straight["history"]])


def test_one_process_resumes_a_ddp_checkpoint(ddp_out: Path, tmp_path: Path,
                                              one_process: dict) -> None:
    # the checkpoint holds the model, the optimizer and the global batch: any number of
    # processes may continue it
    shutil.copytree(ddp_out / "stopped", tmp_path / "run")
    model, train, val, config = build("plain")
    run("plain", model, train, val, config, tmp_path / "run", None, resume=True)
    for k, w in one_process["plain"][0].items():
        assert float((model.state_dict()[k] - w).abs().max()) <= ATOL, k


def test_each_process_takes_torchruns_one_thread(ddp_out: Path) -> None:
    assert [json.loads((ddp_out / f"threads-rank{r}.json").read_text()) for r in (0, 1)] == [1, 1]


def test_cli_under_torchrun_trains_the_one_process_model(tmp_path: Path) -> None:
    args = ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--batch-size",
            "64", "--lr", "0.05", "--device", "cpu", "--no-progress", "--adv", "pgd",
            "--adv-eps", "0.1", "--adv-steps", "1", "--seed", "3"]
    _torchrun(["-m", "robustact", *args, "--out", str(tmp_path / "ddp")], cwd=tmp_path)
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "one"), "--threads", "1"])
    assert res.exit_code == 0, res.output
    ddp = load_tensors(tmp_path / "ddp" / "final" / "model.safetensors")
    one = load_tensors(tmp_path / "one" / "final" / "model.safetensors")
    assert ddp.keys() == one.keys()
    for k in one:
        assert float((ddp[k] - one[k]).abs().max()) <= ATOL, k
    results = json.loads((tmp_path / "ddp" / "results.json").read_text())
    assert results["extra"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert json.loads((tmp_path / "ddp" / "run.json").read_text())["status"] == "finished"


# --- the environment, without processes -------------------------------------------------------

def test_from_env_reads_torchrun_and_slurm_and_stays_alone_otherwise() -> None:
    run_env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert DistEnv.from_env("cpu", run_env) == DistEnv(3, 4, 1, 2, "gloo", torch.device("cpu"))
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "6", "SLURM_LOCALID": "2",
             "SLURM_NTASKS_PER_NODE": "3(x2)", "MASTER_ADDR": "node1", "MASTER_PORT": "29500"}
    assert DistEnv.from_env("cpu", slurm) == DistEnv(5, 6, 2, 3, "gloo", torch.device("cpu"))
    uneven = {**slurm, "SLURM_NTASKS_PER_NODE": "4,2"}  # the first node's count will do
    assert DistEnv.from_env("cpu", uneven).local_world_size == 4  # type: ignore[union-attr]
    no_master = {k: v for k, v in slurm.items() if not k.startswith("MASTER")}
    assert DistEnv.from_env("cpu", no_master) is None  # a plain command inside an allocation
    assert DistEnv.from_env("cpu", {"RANK": "0", "WORLD_SIZE": "1"}) is None
    assert DistEnv.from_env("cpu", {}) is None


@pytest.mark.parametrize(("env", "device", "message"), [
    ({"RANK": "x", "WORLD_SIZE": "2"}, "cpu", "RANK='x' must be an integer"),
    ({"RANK": "2", "WORLD_SIZE": "2"}, "cpu", "rank 2 is outside 0..1"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}, "cuda:1", "names one GPU"),
    ({"RANK": "0", "WORLD_SIZE": "2"}, "tpu", "device must be"),
])
def test_from_env_bad_input_is_one_line(env: dict, device: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as e:
        DistEnv.from_env(device, env)
    assert "\n" not in str(e.value)


def test_threads_given_then_omp_then_cores_shared_out() -> None:
    d = DistEnv(0, 4, 0, 2)
    assert d.threads(3, {"OMP_NUM_THREADS": "1"}) == 3
    assert d.threads(None, {"OMP_NUM_THREADS": "2"}) == 2
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert d.threads(None, {}) == max(1, (cores or 1) // 2)
    assert d.threads(None, {"SLURM_CPUS_PER_TASK": "6"}) == 6  # srun started this process
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        d.threads(None, {"OMP_NUM_THREADS": "many"})


def test_local_batch_rows_and_weights() -> None:
    g = torch.Generator()
    part = DistEnv(1, 2).part(7, g)
    assert part.rows.tolist() == [1, 3, 5] and part.weight == pytest.approx(6 / 7)
    assert DistEnv(0, 2).part(16, g).weight == 1.0  # equal shares: the loss is left alone
    stand_in = DistEnv(1, 2).part(1, g)  # fewer samples than ranks
    assert stand_in.weight == 0.0 and stand_in.samples == 0 and stand_in.rows.tolist() == [0]


def test_trainer_refuses_a_batch_the_ranks_cannot_share_and_an_uninitialised_group() -> None:
    model, train, _, config = build("plain")
    with pytest.raises(ValueError, match="batch_size 15 .* divisible by the 2 processes"):
        Trainer(model, train, config=TrainConfig(batch_size=15, device="cpu"),
                dist=DistEnv(0, 2))
    with pytest.raises(ValueError, match="process group is not initialised"):
        Trainer(model, train, config=config, dist=DistEnv(0, 2))
    # one process (world size 1) is plain training
    assert Trainer(model, train, config=config, dist=DistEnv(0, 1), progress=False).dist is None
