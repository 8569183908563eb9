"""Does a model learn when trained *with* a high-temperature output activation?

Why this script: ``robustact train`` refuses an output-activation temperature above
``robustact.runs.train.MAX_TRAIN_TEMPERATURE`` (and warns above ``WARN_TRAIN_TEMPERATURE``)
without ``--force``; the thresholds come from this sweep. SmallCNN on sklearn's digits (offline,
no data root), each f in {sigmoid, tanh, softsign, arctan} × T × optimizer (SGD lr 0.05 and Adam
lr 2e-3, batch 64, the library's other defaults), same seed and split for every cell; reported:
test accuracy (decisions do not depend on T) and the last epoch's training loss.

    python experiments/outact_train_temperature.py                 # 3 epochs, ~1.5 min on 1 CPU
    python experiments/outact_train_temperature.py --quick         # 1 epoch, T in {1, 100},
                                                                   # one f per optimizer, seconds
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import harness as H

from robustact.defenses import add_output_activation
from robustact.models import create_model
from robustact.models.predict import accuracy
from robustact.nn.bounded import OUTPUT_FUNCTIONS
from robustact.runs.train import MAX_TRAIN_TEMPERATURE, load_splits
from robustact.train import TrainConfig, Trainer

SCRIPT = "outact_train_temperature"
OPTIMIZERS = (("sgd", 0.05), ("adam", 2e-3))


def main() -> None:
    started = time.perf_counter()
    p = H.base_parser(__doc__.splitlines()[0], default_out=f"results/{SCRIPT}.json",
                    default_epochs=3)
    p.add_argument("--temperatures", default="1,2,5,10,20,50,100")
    args = p.parse_args()
    H.setup_threads(args.threads)
    args.out = str(H.quick_output(args.out, default=p.get_default("out"), quick=args.quick,
                                script=SCRIPT))
    try:
        temps = [float(t) for t in args.temperatures.split(",")]
    except ValueError:
        raise ValueError(f"--temperatures must be comma-separated numbers, got "
                         f"{args.temperatures!r}") from None
    functions = {opt: list(OUTPUT_FUNCTIONS) for opt, _ in OPTIMIZERS}
    if args.quick:  # the two ends of the sweep, a different f per optimizer: a few seconds
        temps, args.epochs = [1.0, 100.0], 1
        functions = {opt: [list(OUTPUT_FUNCTIONS)[i % len(OUTPUT_FUNCTIONS)]]
                     for i, (opt, _) in enumerate(OPTIMIZERS)}
    train, val, test = load_splits("digits", val_fraction=0.1, seed=args.seed)
    rows = []
    for opt, lr in OPTIMIZERS:
        for f in functions[opt]:
            for t in temps:
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(args.seed)  # the same initial weights for every cell
                    model = add_output_activation(create_model("smallcnn", dataset="digits"),
                                                  f, t)
                cfg = TrainConfig(epochs=args.epochs, batch_size=64, optimizer=opt, lr=lr,
                                  seed=args.seed, device="cpu")
                history = Trainer(model, train, val, cfg, progress=args.progress).fit()
                model.eval()
                rows.append({"optimizer": opt, "f": f, "temperature": t,
                             "test_accuracy": accuracy(model, test),
                             "train_loss": history[-1].get("train_loss")})
                print(H.format_table(rows[-1:], [("optimizer", "opt", ""), ("f", "f", ""),
                                               ("temperature", "T", "g"),
                                               ("test_accuracy", "test acc", ".3f"),
                                               ("train_loss", "loss", ".3f")]).splitlines()[-1],
                      flush=True)
    learned = {t: sum(r["test_accuracy"] > 0.5 for r in rows if r["temperature"] == t)
               for t in temps}
    print("cells that learned (test accuracy > 50 %) per T:", learned)
    out = H.write_results(args.out, script="outact_train_temperature.py", args=args,
                        started=started,
                        results={"rows": rows, "learned_per_temperature": learned,
                                 "max_train_temperature": MAX_TRAIN_TEMPERATURE})
    print(f"wrote {out}")


if __name__ == "__main__":
    H.run_script(main)
