"""Checkpoints: safetensors + card round trip, optimizer state, integrity checks, atomic swap."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from robustact.checkpoint import (
    flatten_optimizer_state,
    resolve_checkpoint,
    sha256_file,
    unflatten_optimizer_state,
)
from robustact.core.storage import atomic_write_json, read_json, save_tensors
from robustact.models.registry import create_model
from robustact.train import (
    CheckpointError,
    TrainConfig,
    load_checkpoint,
    load_training_state,
    load_weights,
    read_card,
    save_checkpoint,
)


def mlp(hidden: tuple[int, ...] = (8,), seed: int = 0) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return create_model("mlp", num_classes=3, in_channels=1, input_size=4, hidden=hidden)


def step(model: nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(8, 1, 4, 4, generator=g)
    y = torch.randint(0, 3, (8,), generator=g)
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def test_roundtrip_rebuilds_the_model_from_its_card(tmp_path: Path) -> None:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt, 0)
    cfg = TrainConfig(epochs=5)
    path = save_checkpoint(tmp_path / "last", model, opt, epoch=3, config=cfg,
                           metrics={"val_acc": 0.5}, history=[{"epoch": 1}],
                           data={"name": "synthetic"})
    loaded, card = load_checkpoint(path)
    assert type(loaded) is type(model) and not loaded.training
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    x = torch.rand(4, 1, 4, 4)
    model.eval()
    assert torch.equal(loaded(x), model(x))
    assert card["model"]["name"] == "mlp" and card["model"]["hidden"] == [8]
    assert card["epoch"] == 3 and card["metrics"] == {"val_acc": 0.5}
    assert TrainConfig.from_dict(card["train"]) == cfg
    assert card["data"] == {"name": "synthetic"}
    assert card["environment"]["torch"] == torch.__version__
    assert card["files"]["model.safetensors"]["sha256"] == sha256_file(path / "model.safetensors")
    # plain safetensors files, readable without robustact (and without pickle)
    assert set(load_file(str(path / "model.safetensors"))) == set(model.state_dict())
    assert set(load_file(str(path / "optim.safetensors"))) == {
        f"state.{i}.momentum_buffer" for i in range(len(list(model.parameters())))}


@pytest.mark.parametrize("make_opt", [
    lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
    lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99)),
])
def test_optimizer_state_roundtrip_continues_identically(tmp_path: Path, make_opt) -> None:
    a = mlp()
    opt_a = make_opt(a.parameters())
    for s in range(3):
        step(a, opt_a, s)
    save_checkpoint(tmp_path / "c", a, opt_a, epoch=1)
    b = mlp(seed=1)  # different weights, fresh optimizer
    opt_b = make_opt(b.parameters())
    load_training_state(tmp_path / "c", b, opt_b)
    step(a, opt_a, 10)
    step(b, opt_b, 10)
    for k, v in a.state_dict().items():
        assert torch.equal(b.state_dict()[k], v), k


def test_flatten_unflatten_is_an_inverse() -> None:
    a = mlp()
    opt = torch.optim.Adam(a.parameters(), lr=1e-3)
    step(a, opt, 0)
    sd = opt.state_dict()
    tensors, meta = flatten_optimizer_state(sd)
    back = unflatten_optimizer_state(tensors, json.loads(json.dumps(meta)))
    assert back["param_groups"][0]["betas"] == sd["param_groups"][0]["betas"]
    assert back["param_groups"][0]["params"] == sd["param_groups"][0]["params"]
    for idx, entries in sd["state"].items():
        for name, value in entries.items():
            assert torch.equal(back["state"][idx][name], value)


def test_corrupt_or_missing_files_are_refused(tmp_path: Path) -> None:
    model = mlp()
    path = save_checkpoint(tmp_path / "ck", model, epoch=0)
    weights = path / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-1] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)
    (path / "card.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(path)
    atomic_write_json(path / "card.json", {"hello": 1})
    with pytest.raises(CheckpointError, match="not a robustact checkpoint"):
        read_card(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="card.json is missing"):
        load_checkpoint(tmp_path / "empty")


def test_weights_that_do_not_fit_the_model_are_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path / "ck", mlp(hidden=(8,)))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_checkpoint(path, model=mlp(hidden=(5,)))
    with pytest.raises(CheckpointError, match="missing in file"):
        load_checkpoint(path, model=mlp(hidden=(8, 8)))
    # a card whose model config disagrees with the weights
    card = read_json(path / "card.json")
    card["model"]["hidden"] = [6]
    atomic_write_json(path / "card.json", card)
    with pytest.raises(CheckpointError, match=r"edited after it was saved \(changed: model\)"):
        load_checkpoint(path)
    del card["integrity"]  # deleting the digests does not make the edit trusted again
    atomic_write_json(path / "card.json", card)
    with pytest.raises(CheckpointError, match="no 'integrity' digests"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no 'integrity' digests"):
        read_card(path)


def test_load_weights_plain_file(tmp_path: Path) -> None:
    src = mlp(seed=3)
    save_tensors(tmp_path / "w.safetensors", src.state_dict())
    dst = load_weights(mlp(seed=4), tmp_path / "w.safetensors")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_weights(mlp(), tmp_path / "none.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_weights(mlp(), tmp_path / "bad.safetensors")


def test_models_outside_the_registry_need_an_explicit_model(tmp_path: Path) -> None:
    plain = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    path = save_checkpoint(tmp_path / "ck", plain)
    assert read_card(path)["model"] is None
    with pytest.raises(CheckpointError, match="no model config"):
        load_checkpoint(path)
    loaded, _ = load_checkpoint(path, model=nn.Sequential(nn.Flatten(), nn.Linear(16, 2)))
    assert torch.equal(loaded[1].weight, plain[1].weight)


def test_saving_again_replaces_the_directory_and_leaves_no_debris(tmp_path: Path) -> None:
    model = mlp()
    save_checkpoint(tmp_path / "last", model, epoch=1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path / "last", model, epoch=2)
    assert read_card(tmp_path / "last")["epoch"] == 2
    loaded, _ = load_checkpoint(tmp_path / "last")
    assert torch.equal(loaded.head.weight, model.head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]
    assert resolve_checkpoint(tmp_path / "last" / "card.json") == tmp_path / "last"


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import robustact.checkpoint as ck

    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    step(model, opt, 0)
    save_checkpoint(tmp_path / "last", model, opt, epoch=1)

    def boom(*a, **k):
        raise KeyboardInterrupt  # e.g. Ctrl-C while the card is being written

    monkeypatch.setattr(ck, "atomic_write_json", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", mlp(seed=9), opt, epoch=2)
    monkeypatch.undo()
    loaded, card = load_checkpoint(tmp_path / "last")
    assert card["epoch"] == 1 and torch.equal(loaded.head.weight, model.head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last"]


def test_defenses_are_recorded_and_reapplied(tmp_path: Path) -> None:
    from robustact.defenses import add_output_activation, describe_defenses, retrofit_jumprelu

    defended = add_output_activation(retrofit_jumprelu(mlp(), 0.25), "sigmoid", 10.0)
    specs = describe_defenses(defended)
    assert [s["type"] for s in specs] == ["jumprelu", "output_activation"]
    path = save_checkpoint(tmp_path / "ck", defended)
    assert read_card(path)["defenses"] == specs
    loaded, card = load_checkpoint(path)
    assert type(loaded) is type(defended) and describe_defenses(loaded) == specs
    assert loaded.state_dict().keys() == defended.state_dict().keys()
    x = torch.rand(6, 1, 4, 4)
    defended.eval()
    assert torch.equal(loaded(x), defended(x))


def test_hand_edited_behaviour_fields_of_a_card_are_detected(tmp_path: Path) -> None:
    """Editing the temperature (or κ, the model config, the data) in card.json is refused with
    one line naming the field; fields that do not change the model (metrics) may be edited."""
    from robustact.defenses import add_output_activation, retrofit_jumprelu

    path = save_checkpoint(tmp_path / "ck",
                           add_output_activation(retrofit_jumprelu(mlp(), 0.25), "sigmoid", 1.0),
                           metrics={"test_accuracy": 0.5}, data={"dataset": "digits"})
    original = read_json(path / "card.json")
    for edit, field in [(lambda c: c["defenses"][1].update(temperature=100.0), "defenses"),
                        (lambda c: c["defenses"][0].update(kappa=2.0), "defenses"),
                        (lambda c: c["model"].update(hidden=[6]), "model"),
                        (lambda c: c["data"].update(dataset="mnist"), "data")]:
        card = json.loads(json.dumps(original))
        edit(card)
        atomic_write_json(path / "card.json", card)
        with pytest.raises(CheckpointError, match=rf"edited after it was saved \(changed: {field}"):
            load_checkpoint(path)
    card = json.loads(json.dumps(original))
    card["metrics"]["note"] = "checked by hand"
    atomic_write_json(path / "card.json", card)
    assert load_checkpoint(path)[1]["metrics"]["note"] == "checked by hand"
