"""Base-model training: validation accuracy and wall time of resnet20 (and friends) on digits.

Run: .venv/bin/python benchmarks/bench_train.py [--models resnet20 mobilenetv2] [--epochs 10]
"""

from __future__ import annotations

import argparse
import time

import torch

from autocompress.data import load_data
from autocompress.models import create_model
from autocompress.training import TrainConfig, train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"{'model':14s} {'epochs':>6s} {'val acc':>8s} {'seconds':>8s}")
    for name in args.models:
        model = create_model(name)
        data = load_data("digits", input_shape=model.input_shape, seed=args.seed)
        start = time.perf_counter()
        result = train_model(model, data, TrainConfig(epochs=args.epochs, seed=args.seed))
        print(f"{name:14s} {args.epochs:6d} {result.val_acc:8.4f} {time.perf_counter() - start:8.1f}")


if __name__ == "__main__":
    main()
