"""Trainer, config, schedules, augmentation, balanced batches and the FGSM batch hook."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from robustact.models.base import Classifier
from robustact.train import (
    LRSchedule,
    TrainConfig,
    Trainer,
    balanced_batches,
    crop_flip,
    derive_seed,
    fgsm_batch_hook,
    jumprelu_mnist_config,
    jumprelu_resnet_config,
    lr_at,
    random_crop_flip,
)
from robustact.train.augment import get_augmentation, random_shift


class Tiny(Classifier):
    """flatten → linear → ReLU → dropout → head; 1×4×4 inputs."""

    def __init__(self, classes: int = 2, dropout: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.num_classes = classes
            self.normalize = nn.Identity()
            self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(),
                                      nn.Dropout(dropout))
            self.head = nn.Linear(12, classes)


def blobs(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two separable classes: bright vs dark 4×4 images with noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = 0.3 + 0.4 * y[:, None, None, None].float() + 0.1 * torch.randn(n, 1, 4, 4, generator=g)
    return x.clamp(0, 1), y


def fast_config(**kw) -> TrainConfig:
    base = dict(epochs=3, batch_size=16, lr=0.1, schedule="constant", device="cpu")
    return TrainConfig(**{**base, **kw})


# --- schedules --------------------------------------------------------------------------------

def test_step_schedule_matches_the_paper_recipe() -> None:
    cfg = jumprelu_mnist_config()
    lr = [lr_at(e, 0, 10, lr=cfg.lr, epochs=cfg.epochs, schedule=cfg.schedule,
                milestones=cfg.milestones, gamma=cfg.gamma) for e in (0, 29, 30, 59, 60, 80, 89)]
    assert lr == pytest.approx([0.02, 0.02, 0.004, 0.004, 0.0008, 0.00016, 0.00016])
    r = jumprelu_resnet_config()
    assert (r.epochs, r.lr, r.milestones, r.gamma, r.augment) == (120, 0.1, (30, 60, 90), 0.1,
                                                                  "cifar")


def test_cosine_and_warmup_by_hand() -> None:
    # 2 epochs × 2 steps: t = 0, 1/4, 1/2, 3/4 -> (1 + cos(πt)) / 2
    got = [lr_at(e, s, 2, lr=1.0, epochs=2, schedule="cosine") for e in (0, 1) for s in (0, 1)]
    want = [(1 + math.cos(math.pi * t)) / 2 for t in (0, 0.25, 0.5, 0.75)]
    assert got == pytest.approx(want, abs=1e-12)
    # 1 warm-up epoch of 4 steps: lr/4, 2lr/4, 3lr/4, lr; then the constant rate
    warm = [lr_at(e, s, 4, lr=0.4, epochs=3, schedule="constant", warmup_epochs=1)
            for e in (0, 1) for s in range(4)]
    assert warm == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.4, 0.4, 0.4, 0.4])
    with pytest.raises(ValueError, match="schedule"):
        lr_at(0, 0, 1, lr=1.0, epochs=1, schedule="linear")
    with pytest.raises(ValueError, match="step"):
        lr_at(0, 5, 4, lr=1.0, epochs=1)


def test_schedule_state_roundtrip_and_mismatch() -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    s = LRSchedule(opt, lr=0.5, epochs=4, steps_per_epoch=3, schedule="step", milestones=[2])
    assert s.apply(2, 0) == pytest.approx(0.05) and opt.param_groups[0]["lr"] == s.apply(2, 0)
    state = json.loads(json.dumps(s.state_dict()))
    s.load_state_dict(state)  # same schedule: fine
    state["lr"] = 0.1
    with pytest.raises(ValueError, match="lr"):
        s.load_state_dict(state)


# --- config ------------------------------------------------------------------------------------

def test_config_json_roundtrip_and_validation() -> None:
    cfg = jumprelu_resnet_config(seed=3, warmup_epochs=2)
    again = TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    for bad in (dict(epochs=0), dict(optimizer="rmsprop"), dict(schedule="poly"), dict(lr=-1.0),
                dict(lr=float("nan")), dict(augment="mixup"), dict(milestones=(5, 2)),
                dict(momentum=1.0), dict(device="tpu"), dict(batch_size=2.5),
                dict(warmup_epochs=20, epochs=10), dict(nesterov=True, momentum=0.0)):
        with pytest.raises(ValueError):
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="unknown TrainConfig fields: bogus"):
        TrainConfig.from_dict({"bogus": 1})


# --- augmentation ------------------------------------------------------------------------------

def test_crop_flip_matches_manual_pad_and_slice() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 3, 6, 7, generator=g)
    top = torch.tensor([0, 4, 2, 1, 3])
    left = torch.tensor([4, 0, 2, 3, 1])
    flip = torch.tensor([False, True, False, True, True])
    out = crop_flip(x, top, left, flip, padding=2)
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(5):
        ref = padded[i, :, top[i]:top[i] + 6, left[i]:left[i] + 7]
        if flip[i]:
            ref = ref.flip(-1)
        assert torch.equal(out[i], ref)
    # the centre offset without flip is the identity
    c = torch.full((5,), 2)
    assert torch.equal(crop_flip(x, c, c, torch.zeros(5, dtype=torch.bool), 2), x)
    with pytest.raises(ValueError, match="offsets"):
        crop_flip(x, top + 1, left, flip, padding=2)


def test_random_crop_flip_is_seeded_and_leaves_global_rng_alone() -> None:
    x = torch.rand(32, 3, 8, 8)
    before = torch.get_rng_state()
    a = random_crop_flip(x, torch.Generator().manual_seed(5))
    b = random_crop_flip(x, torch.Generator().manual_seed(5))
    c = random_crop_flip(x, torch.Generator().manual_seed(6))
    assert torch.equal(before, torch.get_rng_state())
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1


def test_shift_is_a_translation_never_a_flip() -> None:
    x = torch.rand(16, 1, 6, 6)
    out = random_shift(x, torch.Generator().manual_seed(0))
    assert get_augmentation("shift") is random_shift and get_augmentation("none") is None
    no_flip = torch.zeros(1, dtype=torch.bool)
    for i in range(16):
        candidates = [crop_flip(x[i:i + 1], torch.tensor([t]), torch.tensor([l]), no_flip, 2)
                      for t in range(5) for l in range(5)]
        assert any(torch.equal(out[i:i + 1], c) for c in candidates)
    with pytest.raises(ValueError, match="unknown augmentation"):
        get_augmentation("rotate")


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_random_crop_preserves_pixel_values(seed: int) -> None:
    # every output pixel is either padding (0) or some pixel of the same image and channel
    x = torch.arange(1, 1 + 2 * 2 * 5 * 5, dtype=torch.float32).view(2, 2, 5, 5)
    out = random_crop_flip(x, torch.Generator().manual_seed(seed), padding=3)
    for i in range(2):
        for ch in range(2):
            vals = set(out[i, ch].flatten().tolist()) - {0.0}
            assert vals <= set(x[i, ch].flatten().tolist())


# --- balanced batches --------------------------------------------------------------------------

def test_balanced_batches_cover_the_largest_class_once() -> None:
    labels = torch.tensor([0] * 30 + [1] * 7)
    batches = balanced_batches(labels, 10, torch.Generator().manual_seed(0))
    assert len(batches) == 6  # ceil(30 / 5)
    for b in batches:
        assert (labels[b] == 0).sum() == 5 and (labels[b] == 1).sum() == 5
    zeros = torch.cat([b[labels[b] == 0] for b in batches])
    assert sorted(zeros.tolist()) == list(range(30))
    ones = torch.cat([b[labels[b] == 1] for b in batches])
    assert set(ones.tolist()) == set(range(30, 37))
    with pytest.raises(ValueError, match="2 classes"):
        balanced_batches(torch.zeros(5, dtype=torch.long), 4, torch.Generator())


def test_derive_seed_is_stable_and_separates_streams() -> None:
    assert derive_seed(1, 2, "shuffle") == derive_seed(1, 2, "shuffle")
    assert len({derive_seed(1, 2, "shuffle"), derive_seed(1, 3, "shuffle"),
                derive_seed(2, 2, "shuffle"), derive_seed(1, 2, "augment")}) == 4


# --- trainer -----------------------------------------------------------------------------------

def test_trainer_learns_and_reports_history() -> None:
    x, y = blobs(96)
    model = Tiny()
    history = Trainer(model, (x[:64], y[:64]), (x[64:], y[64:]), fast_config(epochs=6, lr=0.3),
                      progress=False).fit()
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5, 6]
    assert set(history[0]) >= {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr",
                               "seconds"}
    assert history[-1]["val_acc"] == 1.0 and history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(h["lr"] == 0.3 for h in history)
    assert not model.training  # fit hands the model back in eval mode, ready for attacks


def test_same_seed_same_weights_other_seed_differs_and_global_rng_untouched() -> None:
    x, y = blobs(64)

    def run(seed: int) -> dict[str, torch.Tensor]:
        model = Tiny(dropout=0.5)
        Trainer(model, (x, y), config=fast_config(seed=seed, augment="cifar"),
                progress=False).fit()
        return model.state_dict()

    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = run(1), run(1), run(2)
    assert torch.equal(before, torch.get_rng_state())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_uint8_images_train_exactly_like_their_float_version() -> None:
    g = torch.Generator().manual_seed(0)
    xu = torch.randint(0, 256, (48, 1, 4, 4), dtype=torch.uint8, generator=g)
    y = (xu.float().mean((1, 2, 3)) > 127).long()
    m1, m2 = Tiny(), Tiny()
    Trainer(m1, (xu, y), config=fast_config(), progress=False).fit()
    Trainer(m2, (xu.float() / 255, y), config=fast_config(), progress=False).fit()
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in m1.state_dict().items())


def test_trainer_accepts_dataset_objects_and_leaves_threads_alone() -> None:
    class DS:
        def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
            self.images, self.labels, self.name = x, y, "blobs"

    x, y = blobs(32)
    threads = torch.get_num_threads()
    t = Trainer(Tiny(), DS(x, y), config=fast_config(epochs=1), progress=False)
    t.fit()
    assert torch.get_num_threads() == threads  # threads are the caller's (the CLI's) choice
    with pytest.raises(TypeError):
        TrainConfig(num_threads=1)  # type: ignore[call-arg]  # not part of a run any more
    old_card = {**fast_config().to_dict(), "num_threads": 1}
    assert TrainConfig.from_dict(old_card) == fast_config()  # older cards still read back
    assert t.data_info["name"] == "blobs" and t.data_info["n_train"] == 32
    # "dataset" is the key `robustact evaluate --model <run>/last` reads to find the test set.
    assert t.data_info["dataset"] == "blobs"


def test_extension_points_loss_hook_wrapper_callbacks() -> None:
    x, y = blobs(40)
    calls: list = []

    def loss(model, xb, yb):
        calls.append(("loss", type(model).__name__))
        logits = model(xb)
        return F.cross_entropy(logits, yb), None  # no logits: train_acc is NaN

    def hook(model, xb, yb, step):
        calls.append(("hook", step, type(model).__name__))
        return xb, yb

    class Wrap(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.module = inner

        def forward(self, xb):
            return self.module(xb)

    class CB:
        def on_fit_start(self, trainer):
            calls.append(("fit_start",))

        def on_epoch_start(self, trainer, epoch):
            calls.append(("epoch_start", epoch))

        def on_train_epoch_end(self, trainer, epoch):
            calls.append(("train_end", epoch))

        def on_epoch_end(self, trainer, epoch, record):
            calls.append(("epoch_end", epoch, record["epoch"]))

        def on_fit_end(self, trainer, history):
            calls.append(("fit_end", len(history)))

    t = Trainer(Tiny(), (x, y), config=fast_config(epochs=2), loss=loss, batch_hook=hook,
                wrap_model=Wrap, callbacks=[CB()], progress=False)
    history = t.fit()
    assert math.isnan(history[0]["train_acc"])
    steps = math.ceil(40 / 16)
    assert [c[1] for c in calls if c[0] == "hook"] == list(range(2 * steps))
    assert {c[2] for c in calls if c[0] == "hook"} == {"Tiny"}  # hooks get the unwrapped model
    assert {c[1] for c in calls if c[0] == "loss"} == {"Wrap"}  # the forward goes through it
    order = [c for c in calls if c[0] not in ("hook", "loss")]
    assert order == [("fit_start",), ("epoch_start", 1), ("train_end", 1), ("epoch_end", 1, 1),
                     ("epoch_start", 2), ("train_end", 2), ("epoch_end", 2, 2), ("fit_end", 2)]


def test_progress_bar_and_adam(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = blobs(32)
    h = Trainer(Tiny(), (x, y), config=fast_config(epochs=1, optimizer="adam", lr=1e-2),
                progress=True).fit()
    assert "epoch 1/1" in capsys.readouterr().err
    assert h[0]["val_acc"] is None


def test_bad_inputs_are_named() -> None:
    x, y = blobs(16)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Trainer(Tiny(), (x * 3, y), config=fast_config(), progress=False)
    with pytest.raises(ValueError, match="shape"):
        Trainer(Tiny(), (x, y[:-1]), config=fast_config(), progress=False)
    with pytest.raises(ValueError, match="2 classes"):
        Trainer(Tiny(), (x, y + 1), config=fast_config(), progress=False)
    with pytest.raises(TypeError, match="images"):
        Trainer(Tiny(), {"x": x}, config=fast_config(), progress=False)
    with pytest.raises(TypeError, match="nn.Module"):
        Trainer("model", (x, y), config=fast_config(), progress=False)  # type: ignore[arg-type]
    with pytest.raises(FloatingPointError, match="non-finite"):
        Trainer(Tiny(), (x, y), config=fast_config(epochs=1), progress=False,
                loss=lambda m, a, b: (m(a).sum() * float("nan"), None)).fit()


# --- FGSM batch hook ---------------------------------------------------------------------------

def test_fgsm_hook_replaces_the_first_fraction_with_fgsm_examples() -> None:
    x, y = blobs(10)
    model = Tiny(dropout=0.5).train()
    hook = fgsm_batch_hook(0.3, 0.1)
    x2, y2 = hook(model, x, y, 0)
    assert model.training  # restored
    assert all(p.grad is None for p in model.parameters())  # only the input gradient
    assert torch.equal(y2, y) and torch.equal(x2[3:], x[3:])
    # reference: FGSM on the first 3 samples in eval mode (dropout off)
    model.eval()
    xr = x[:3].clone().requires_grad_(True)
    F.cross_entropy(model(xr), y[:3]).backward()
    ref = (x[:3] + 0.1 * xr.grad.sign()).clamp(0, 1)
    assert torch.equal(x2[:3], ref)
    assert (x2[:3] - x[:3]).abs().max() <= 0.1 + 1e-7
    assert torch.equal(fgsm_batch_hook(0.0, 0.1)(model, x, y, 0)[0], x)
    with pytest.raises(ValueError, match="fraction"):
        fgsm_batch_hook(1.5, 0.1)
    with pytest.raises(ValueError, match="eps"):
        fgsm_batch_hook(0.5, -0.1)


def test_trainer_trains_on_the_fgsm_hooks_examples() -> None:
    x, y = blobs(32)
    hook = fgsm_batch_hook(0.5, 0.1)
    made: list[tuple[torch.Tensor, torch.Tensor]] = []  # (batch in, batch out) of the hook
    seen: list[torch.Tensor] = []  # what the loss was computed on

    def recording_hook(model, xb, yb, step):
        out = hook(model, xb, yb, step)
        made.append((xb.clone(), out[0].clone()))
        return out

    def loss(model, xb, yb):
        seen.append(xb.detach().clone())
        logits = model(xb)
        return F.cross_entropy(logits, yb), logits

    model, clean = Tiny(), Tiny()
    h = Trainer(model, (x, y), config=fast_config(epochs=1), loss=loss,
                batch_hook=recording_hook, progress=False).fit()
    Trainer(clean, (x, y), config=fast_config(epochs=1), loss=loss, progress=False).fit()
    assert math.isfinite(h[0]["train_loss"])
    assert len(made) == 2 and len(seen) == 4  # 32 / 16 steps, with the hook then without
    for (xb, xh), xs in zip(made, seen[:2], strict=True):
        assert torch.equal(xs, xh)  # each step trains on the hook's batch
        delta = (xh[:8] - xb[:8]).abs()  # the first half: FGSM within ε, and it moved
        assert float(delta.max()) <= 0.1 + 1e-7 and float(delta.max()) > 0.05
        assert torch.equal(xh[8:], xb[8:])  # the rest untouched
    # the adversarial batches change the trained weights (same seed, same clean data)
    assert not all(torch.equal(v, clean.state_dict()[k]) for k, v in model.state_dict().items())


def test_balanced_trainer_steps_follow_the_largest_class() -> None:
    x, y = blobs(40)
    y = torch.cat([torch.zeros(30), torch.ones(10)]).long()
    seen: list[torch.Tensor] = []
    t = Trainer(Tiny(), (x, y), config=fast_config(epochs=1, balanced=True, batch_size=10),
                batch_hook=lambda m, xb, yb, s: (seen.append(yb) or (xb, yb)), progress=False)
    t.fit()
    assert t.steps_per_epoch == 6 and len(seen) == 6
    assert all(int(b.sum()) == 5 for b in seen)


def test_lr_at_checks_its_configuration_like_lr_schedule() -> None:
    # one declaration of the schedule's keywords (LRSchedule) checks both entry points
    for bad, msg in [({"lr": 0.0}, "lr must be positive"),
                     ({"warmup_epochs": 3}, "warmup_epochs"),
                     ({"spe": 0}, "steps_per_epoch")]:
        kw = {"lr": 0.1, "epochs": 2, **bad}
        spe = kw.pop("spe", 4)
        with pytest.raises(ValueError, match=msg):
            lr_at(0, 0, spe, **kw)
