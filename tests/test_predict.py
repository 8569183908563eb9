"""The one prediction function: tie rule, inputs, batching, refusals, and every caller agreeing.

Why these tests: ``robustact eval`` and ``robustact evaluate`` once reported 89.97 % and 74.09 %
on the same saturated sigmoid model, because one counted ``argmax == y`` and the other counted a
tied top output as wrong. The models here tie EXACTLY on chosen rows, so a loop that forgets the
rule gives a different number (1/2 instead of 1/3) and the agreement tests fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from robustact.data import ImageDataset
from robustact.defenses import add_output_activation
from robustact.defenses.jumprelu_retrofit import tune_jumprelu
from robustact.evaluate import clean_predictions
from robustact.models.predict import Predictions, accuracy, correct_untied, predict
from robustact.train import TrainConfig, Trainer

#: Pixel rows (the first three pixels are the three classes' scores) and their labels.
#: Row 0 ties classes 0/1 with label 0 (argmax is "right" by index only), row 3 ties 1/2,
#: row 5 ties all three; rows 1 and 4 are right, row 2 is wrong.
PIXELS = [[200, 200, 10, 0], [200, 10, 10, 0], [10, 200, 10, 0],
          [10, 200, 200, 0], [10, 10, 200, 0], [100, 100, 100, 0]]
LABELS = [0, 0, 0, 2, 2, 1]
CORRECT = [False, True, False, False, True, False]
TIED = [True, False, False, True, False, True]


def toy_data() -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (6, 1, 2, 2) and int64 labels."""
    x = torch.tensor(PIXELS, dtype=torch.uint8).view(6, 1, 2, 2)
    return x, torch.tensor(LABELS)


class Pixels(nn.Module):
    """Logits = 2 × the first three pixels: rows with equal pixels tie exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :3] * self.scale


def saturated_sigmoid() -> nn.Module:
    """A ReLU net under sigmoid at T = 100: bright pixels saturate to exactly 1.0 (ties)."""
    base = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        base[1].weight.copy_(torch.eye(4))
        base[1].bias.zero_()
        base[3].weight.copy_(10 * torch.eye(4)[:3])
        base[3].bias.fill_(-2.0)
    return add_output_activation(base, "sigmoid", 100.0).eval()


def as_lists(p: Predictions) -> tuple[list, list, list]:
    assert p.correct is not None
    return p.pred.tolist(), p.correct.tolist(), p.tied.tolist()


# --- the tie rule ------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [Pixels, saturated_sigmoid])
def test_tied_top_outputs_are_not_correct(make) -> None:
    x, y = toy_data()
    p = predict(make().eval(), (x, y))
    assert p.tied.tolist() == TIED
    assert p.correct is not None and p.correct.tolist() == CORRECT
    assert (p.n, p.n_correct, p.n_tied, p.num_classes) == (6, 2, 3, 3)
    assert p.accuracy == pytest.approx(1 / 3)
    # argmax alone would have said 1/2: the rule is what makes the number differ
    assert float((p.pred == y).float().mean()) == pytest.approx(0.5)
    assert p.pred.device.type == "cpu" and p.pred.dtype == torch.int64


def test_correct_untied_is_the_same_rule() -> None:
    x, y = toy_data()
    z = Pixels()(x.float() / 255)
    assert correct_untied(z, y).tolist() == CORRECT


# --- inputs and batching -----------------------------------------------------------------------

def test_uint8_float_dataset_and_tensor_inputs_agree() -> None:
    x, y = toy_data()
    model = Pixels().eval()
    ref = as_lists(predict(model, (x, y)))
    assert as_lists(predict(model, (x.float() / 255, y))) == ref
    assert as_lists(predict(model, (x.double() / 255, y))) == ref  # cast to the model's dtype
    assert as_lists(predict(model, x, y)) == ref
    ds = ImageDataset(x, y, ["a", "b", "c"], "toy")
    assert as_lists(predict(model, ds)) == ref
    assert accuracy(model, ds) == pytest.approx(1 / 3)


@pytest.mark.parametrize("batch_size", [1, 2, 4, 5, 500])
def test_batch_size_does_not_change_the_result(batch_size: int) -> None:
    x, y = toy_data()
    model = saturated_sigmoid()
    assert as_lists(predict(model, (x, y), batch_size=batch_size)) == \
        as_lists(predict(model, (x, y), batch_size=6))
    g = torch.Generator().manual_seed(0)
    xr, yr = torch.rand(37, 1, 2, 2, generator=g), torch.randint(0, 3, (37,), generator=g)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    assert as_lists(predict(lin, (xr, yr), batch_size=batch_size)) == \
        as_lists(predict(lin, (xr, yr), batch_size=37))


def test_without_labels_predictions_but_no_accuracy() -> None:
    x, _ = toy_data()
    p = predict(Pixels().eval(), x)
    assert p.correct is None and p.n_tied == 3
    with pytest.raises(ValueError, match="without labels"):
        _ = p.accuracy
    with pytest.raises(ValueError, match="needs labels"):
        accuracy(Pixels().eval(), x)


def test_on_batch_sees_every_batch_on_the_device() -> None:
    x, y = toy_data()
    seen: list[int] = []
    predict(Pixels().eval(), (x, y), batch_size=4,
            on_batch=lambda z, yb: seen.append(z.shape[0]) if yb is not None else None)
    assert seen == [4, 2]


# --- refusals ----------------------------------------------------------------------------------

def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_train_mode_is_refused_in_one_line() -> None:
    x, y = toy_data()
    with pytest.raises(ValueError, match="train mode") as e:
        predict(Pixels().train(), (x, y))
    assert "model.eval()" in _one_line(e)


class Returns(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.fn = fn

    def forward(self, x: torch.Tensor):
        return self.fn(x)


@pytest.mark.parametrize("fn, match", [
    (lambda x: torch.full((x.shape[0], 3), float("nan")), "NaN"),
    (lambda x: torch.zeros(x.shape[0]), "shape"),
    (lambda x: torch.zeros(x.shape[0], 1), "at least 2 classes"),
    (lambda x: torch.zeros(x.shape[0] + 1, 3), "rows"),
    (lambda x: (torch.zeros(x.shape[0], 3), None), "logits tensor"),
])
def test_bad_model_outputs_are_refused(fn, match: str) -> None:
    x, y = toy_data()
    with pytest.raises((ValueError, TypeError), match=match) as e:
        predict(Returns(fn).eval(), (x, y))
    _one_line(e)


def test_bad_inputs_are_refused() -> None:
    x, y = toy_data()
    model = Pixels().eval()
    with pytest.raises(ValueError, match="class index 5 but the model has 3 classes"):
        predict(model, (x, torch.tensor([0, 0, 0, 2, 2, 5])))
    with pytest.raises(ValueError, match="given twice"):
        predict(model, (x, y), y)
    with pytest.raises(ValueError, match="batch_size"):
        predict(model, (x, y), batch_size=0)
    with pytest.raises(ValueError, match="no samples"):
        predict(model, (x[:0], y[:0]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        predict(model, (x.float(), y))  # 0..255 floats: forgot the /255


# --- every caller agrees -----------------------------------------------------------------------

def test_engine_training_tuner_and_accuracy_agree_on_a_tied_model() -> None:
    x, y = toy_data()
    xf = x.float() / 255
    model = saturated_sigmoid()
    want = accuracy(model, (x, y))
    assert want == pytest.approx(1 / 3)
    pred, ok, k = clean_predictions(model, xf, y, 4)
    assert (ok.tolist(), k, pred.tolist()) == (CORRECT, 3, predict(model, (x, y)).pred.tolist())
    trainer = Trainer(model, (x, y), val_data=(x, y),
                      config=TrainConfig(epochs=1, batch_size=6, device="cpu"), progress=False)
    assert trainer.evaluate()["acc"] == pytest.approx(want)
    assert not model.training  # evaluate put the mode back
    tuning = tune_jumprelu(model, xf, y, grid=[0.0], progress=False)
    assert tuning.baseline_acc == pytest.approx(want)


def test_trainer_numbers_unchanged_without_ties() -> None:
    """Trainer.evaluate equals the plain loop it replaced when no output ties."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(50, 1, 2, 2, generator=g), torch.randint(0, 3, (50,), generator=g)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    cfg = TrainConfig(epochs=1, batch_size=10, eval_batch_size=16, device="cpu")
    got = Trainer(model, (x, y), val_data=(x, y), config=cfg, progress=False).evaluate()
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for s in range(0, 50, 16):
            z = model(x[s:s + 16])
            loss_sum += float(F.cross_entropy(z, y[s:s + 16], reduction="sum"))
            correct += int((z.argmax(1) == y[s:s + 16]).sum())
    assert got == {"loss": loss_sum / 50, "acc": correct / 50}
