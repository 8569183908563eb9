#!/usr/bin/env bash
# Fast adversarial training of ResNet-20 on CIFAR-10, eps = 8/255, on a lent GPU machine.
#
# Why two phases: the device tool carries at most 64 MiB per call and has no network, so
# CIFAR-10, packed losslessly by scripts/pack_cifar.py, travels in two halves (.gpu/a: data
# batches 1-3; .gpu/b: batches 4-5, the test batch, and pyautoattack's sources in .gpu/b/pylib).
# The machine keeps /tmp between back-to-back calls, but a carried folder only for the call that
# names it: every `run` call carries .gpu/b.
#   probe: unpack the first half; a CUDA smoke run of training, `robustact evaluate` and
#          AutoAttack; time one fast-AT epoch on 10000 images to size the schedule.
#   run:   unpack the second half; fast AT for as many epochs (at most 40) as fit BUDGET seconds;
#          the script's clean and PGD-20 figures on all 10000 test images; `robustact evaluate`
#          (standard protocol) and AutoAttack standard on the first 1000.
# Usage (from the repository root there): scripts/gpu_cifar_at.sh probe|run [BUDGET_SECONDS]
set -euo pipefail
phase=$1
budget=${2:-240}
export PYTHONPATH="$PWD/src:$PWD/scripts:$PWD/.gpu/b/pylib" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
D=/tmp/rdata P=/tmp/probe
# For a dry run on a CPU: DEVICE=cpu, EXTRA="--subset 500 --test-subset 100", N=50.
DEVICE=${DEVICE:-cuda} EXTRA=${EXTRA:-} N=${N:-1000}
mkdir -p "$OUT"
# AutoAttack standard (pyautoattack) on the first N test images: checkpoint N out.json [tiny]
cat > /tmp/autoattack.py <<'PY'
import json, sys, torch
import eval_models
from robustact.checkpoint import load_checkpoint
from robustact.data import load_dataset
dev, ckpt, n, out, tiny = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], len(sys.argv) > 5
model, _ = load_checkpoint(ckpt, dev)
test = load_dataset("cifar10", "test")
x, y = test.x()[:n].to(dev), test.y()[:n].to(dev)
r = eval_models.run_autoattack(model.eval(), x, y, eps=8 / 255, seed=0, tiny=tiny)
r.pop("_robust")
json.dump({"checkpoint": ckpt, "n": n, **r}, open(out, "w"), indent=1)
print("AutoAttack", r)
PY
case $phase in
probe)
  nvidia-smi -L || true
  python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name())'
  python3 scripts/pack_cifar.py unpack .gpu/a --to $D
  # Stand-ins for the half still to come, so that the loader finds every file it expects.
  mkdir -p $P/cifar-10-batches-py
  for f in data_batch_1 data_batch_2 data_batch_3 batches.meta; do
    ln -sf $D/cifar-10-batches-py/$f $P/cifar-10-batches-py/$f; done
  for f in data_batch_4 data_batch_5 test_batch; do
    ln -sf $D/cifar-10-batches-py/data_batch_1 $P/cifar-10-batches-py/$f; done
  python3 experiments/train_baseline.py cifar-resnet20 --adv fast --adv-eps 8/255 --epochs 1 \
    --subset ${PROBE_SUBSET:-10000} --test-subset 500 --device $DEVICE --data-root $P --no-progress \
    --ckpt-dir /tmp/probe-ckpt --out $OUT/probe.json
  cp $OUT/probe.json /tmp/probe.json
  ROBUSTACT_DATA=$P python3 -m robustact evaluate --model /tmp/probe-ckpt/last --dataset cifar10 --protocol quick --n 64 \
    --device $DEVICE --audit-samples 16 --no-progress --out /tmp/probe-ev
  ROBUSTACT_DATA=$P python3 /tmp/autoattack.py $DEVICE /tmp/probe-ckpt/last 32 $OUT/probe_aa.json tiny
  ;;
run)
  test -f /tmp/probe.json || { echo "no probe on this machine: run the probe phase first"; exit 3; }
  python3 scripts/pack_cifar.py unpack .gpu/b --to $D
  rm -rf /tmp/ckpt /tmp/ev  # a rerun on the same machine starts afresh
  epochs=$(python3 -c "import json; p = json.load(open('/tmp/probe.json'))
per_epoch = p['train_wall_seconds'] * 50000 / p['data']['n_train']
print(max(1, min(40, int($budget // per_epoch))))")
  echo "training for $epochs epochs"
  python3 experiments/train_baseline.py cifar-resnet20 --adv fast --adv-eps 8/255 \
    --epochs "$epochs" --device $DEVICE --data-root $D --no-progress $EXTRA --ckpt-dir /tmp/ckpt \
    --out $OUT/cifar_resnet20_fast_at_gpu.json
  cp /tmp/ckpt/last/model.safetensors /tmp/ckpt/last/card.json "$OUT"/
  ROBUSTACT_DATA=$D timeout 150 python3 -m robustact evaluate --model /tmp/ckpt/last --dataset cifar10 --n $N --device $DEVICE \
    --no-progress --out /tmp/ev || echo "robustact evaluate stopped (rc $?)"
  cp /tmp/ev/summary.json $OUT/evaluate_summary.json || true
  ROBUSTACT_DATA=$D timeout 120 python3 /tmp/autoattack.py $DEVICE /tmp/ckpt/last $N $OUT/autoattack.json \
    || echo "AutoAttack stopped (rc $?)"
  ;;
*) echo "usage: $0 probe|run [BUDGET_SECONDS]"; exit 2 ;;
esac
