"""`torchrun --nproc_per_node 2 tests/ddp_scripts/sigint_one_rank.py WORKSPACE CORPUS`: a 2-process SimCLR
pretrain in which only rank 1 is signalled (SIGINT after its first step, as a scheduler that reaches one
process first). Every process must stop after the same step: rank 0 writes the mid-epoch checkpoint and
each rank writes its outcome to WORKSPACE/rank<R>.outcome ("interrupted", or the error)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from dermctl.runtime.signals import RunInterrupted
from dermctl.train import engine
from dermctl.train.config import build_config
from dermctl.workspace import Workspace


def main() -> int:
    ws, corpus = Workspace.at(sys.argv[1]), Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    optimize = engine._PretrainTask.optimize

    def signalled(self, loss, epoch, b):  # type: ignore[no-untyped-def]
        optimize(self, loss, epoch, b)
        if rank == 1 and (epoch, b) == (0, 0):
            os.kill(os.getpid(), signal.SIGINT)

    engine._PretrainTask.optimize = signalled  # type: ignore[method-assign]
    settings = {"backbone": "resnet10t", "init": "random", "proj_hidden_dim": 16, "proj_out_dim": 8}
    settings.update(epochs=2, image_size=32, num_workers=0, global_batch=4, optimizer="sgd", lr=0.01)
    cfg = build_config("simclr", None, settings)
    outcome = Path(sys.argv[1]) / f"rank{rank}.outcome"
    try:
        engine.pretrain(cfg, [corpus], ws, name="cut", device="cpu")
        outcome.write_text("finished")
    except RunInterrupted:
        outcome.write_text("interrupted")
        return 130
    except BaseException as exc:  # noqa: BLE001  (the test reads what happened)
        outcome.write_text(f"{type(exc).__name__}: {exc}")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
