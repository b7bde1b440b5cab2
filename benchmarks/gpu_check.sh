#!/usr/bin/env bash
# One-shot GPU check (meant to take under 10 minutes on one GPU): ResNet-56 on CIFAR-10, trained with
# --device cuda, searched at macs=50%, the chosen point fine-tuned with KD, then the AMC comparison row
# (AMC, ResNet-56 at 50% FLOPs: 92.8 -> 91.9 top-1) with the wall time of every step.
#
#   bash benchmarks/gpu_check.sh            # run it (needs CUDA and the CIFAR-10 JPEG tarball)
#   bash benchmarks/gpu_check.sh --check    # no GPU, no data: every command line through the CLI parser
#
# Settings (environment): EPOCHS (base training, default 30), TRIALS (search, default 40),
# FT_EPOCHS (fine-tune, default 3), THREADS (the search's torch threads, default 8), DEVICE (default cuda), PY (python, default: the repository's
# .venv or python3), TARBALL (default ../shared/data/cifar10-jpeg.tar.gz next to the repository, or
# shared/data/ inside it), WORK (where the data is unpacked and the runs go; outside the repository,
# default ~/.cache/autocompress/gpu-check).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CHECK=0
if [[ "${1:-}" == "--check" ]]; then CHECK=1; elif [[ $# -gt 0 ]]; then
    echo "error: unknown argument '$1'; allowed: --check" >&2; exit 2
fi
if [[ -z "${PY:-}" ]]; then
    if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY=python3; fi
fi
EPOCHS="${EPOCHS:-30}"
TRIALS="${TRIALS:-40}"
FT_EPOCHS="${FT_EPOCHS:-3}"
DEVICE="${DEVICE:-cuda}"
WORK="${WORK:-$HOME/.cache/autocompress/gpu-check}"
if [[ -z "${TARBALL:-}" ]]; then
    TARBALL="$REPO/../shared/data/cifar10-jpeg.tar.gz"
    [[ -f "$TARBALL" ]] || TARBALL="$REPO/shared/data/cifar10-jpeg.tar.gz"
fi
DATA="$WORK/data/cifar10"
BASE="$WORK/resnet56-cifar10-e$EPOCHS.pt"
RUN="$WORK/run-resnet56-macs50"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

TRAIN=(train --model resnet56 --data "imagefolder:$DATA" --epochs "$EPOCHS" --lr 0.1 --batch-size 128
       --device "$DEVICE" --out "$BASE" --force)
SEARCH=(search --config "$WORK/gpu-check.yaml" --model resnet56 --checkpoint "$BASE" --data "imagefolder:$DATA" --budget macs=50%
        --trials "$TRIALS" --device "$DEVICE" --eval-set val_samples=2000 --out "$RUN" --force
        --no-report)
FINETUNE=(finetune "$RUN" --point best --epochs "$FT_EPOCHS" --lr 0.01 --device "$DEVICE")

if [[ $CHECK == 1 ]]; then
    # Each command line must be accepted by the real parser (options, values, the device's form).
    "$PY" - "${TRAIN[@]}" -- "${SEARCH[@]}" -- "${FINETUNE[@]}" <<'EOF'
import sys

from autocompress.cli import main
from autocompress.devices import check_device_name

commands, current = [], []
for word in sys.argv[1:] + ["--"]:
    if word == "--":
        commands.append(current)
        current = []
    else:
        current.append(word)
for args in commands:
    ctx = main.make_context("autocompress", list(args))
    sub = main.get_command(ctx, args[0])
    sub.make_context(args[0], args[1:])
    if "--device" in args:
        check_device_name(args[args.index("--device") + 1])
    print("ok: autocompress " + " ".join(args))
EOF
    exit 0
fi

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' || {
    echo "error: no CUDA device (torch.cuda.is_available() is False); this check needs a GPU" >&2; exit 2; }
mkdir -p "$WORK"
declare -A WALL
step() {  # step NAME COMMAND...: run it, keep its wall time
    local name=$1; shift
    local t0=$SECONDS
    echo "== $name: autocompress $*" >&2
    "$PY" -m autocompress.cli "$@"
    WALL[$name]=$((SECONDS - t0))
}

t0=$SECONDS
if [[ ! -d "$DATA/train" ]]; then
    [[ -f "$TARBALL" ]] || { echo "error: CIFAR-10 tarball '$TARBALL' not found; set TARBALL" >&2; exit 2; }
    mkdir -p "$WORK/data"
    tar xzf "$TARBALL" -C "$WORK/data"
fi
WALL[unpack]=$((SECONDS - t0))
step train "${TRAIN[@]}" > "$WORK/train.json"
# Candidates are compressed on the CPU: give the search's torch threads what the machine has.
printf 'threads: %s\n' "${THREADS:-8}" > "$WORK/gpu-check.yaml"
step search "${SEARCH[@]}" > "$WORK/search.log"
step finetune "${FINETUNE[@]}" > "$WORK/finetune.log"

"$PY" - "$WORK" "$RUN" "${WALL[unpack]}" "${WALL[train]}" "${WALL[search]}" "${WALL[finetune]}" "$EPOCHS" "$FT_EPOCHS" <<'EOF'
import json
import sys
from pathlib import Path

import torch

work, run = Path(sys.argv[1]), Path(sys.argv[2])
unpack, train, search, finetune = (float(v) for v in sys.argv[3:7])
epochs, ft_epochs = sys.argv[7], sys.argv[8]
base = json.loads((work / "train.json").read_text())
record = max((run / "finetune").glob("point-*.json"), key=lambda p: p.stat().st_mtime)
ft = json.loads(record.read_text())
macs = ft["metrics"]["macs"] / json.loads((run / "base.json").read_text())["metrics"]["macs"]
print(f"GPU: {torch.cuda.get_device_name(0)}; torch {torch.__version__}")
print("| model | base top-1 | compressed top-1 | Δ | MACs | base epochs | fine-tune epochs |")
print("|---|---|---|---|---|---|---|")
print(f"| autocompress ResNet-56 (test split) | {100 * base['test_acc']:.2f} | {100 * ft['test_after']:.2f} "
      f"| {100 * (ft['test_after'] - base['test_acc']):+.2f} | {macs:.3f}x | {epochs} | {ft_epochs} |")
print("| AMC (He et al. 2018), ResNet-56 | 92.8 | 91.9 | -0.9 | 0.500x | not stated | not stated |")
print(f"wall times: unpack {unpack:.0f} s, train {train:.0f} s, search {search:.0f} s, "
      f"fine-tune {finetune:.0f} s, total {unpack + train + search + finetune:.0f} s")
EOF
