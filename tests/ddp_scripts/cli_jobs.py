"""Run several `dermctl` command lines in ONE torchrun job, so that a test pays the interpreter start of
its ranks once for many runs: `torchrun --nproc_per_node 2 tests/ddp_scripts/cli_jobs.py JOBS.json`.

JOBS.json: a list of {"args": [dermctl arguments], "hash_dir": folder or null}. `hash_dir` becomes
$DERMCTL_DEBUG_STATE_HASH_DIR for that job (each rank writes the hash of its final state there). The first
failing job's exit code ends the script.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from dermctl.cli.app import app
from dermctl.runtime.distributed import DEBUG_HASH_ENV


def main() -> int:
    jobs = json.loads(Path(sys.argv[1]).read_text())
    destroy = dist.destroy_process_group
    dist.destroy_process_group = lambda *_a, **_k: None  # commands end the group; the next job needs it
    try:
        for job in jobs:
            os.environ.pop(DEBUG_HASH_ENV, None)
            if job.get("hash_dir"):
                os.environ[DEBUG_HASH_ENV] = job["hash_dir"]
            print(f"=== job: {' '.join(job['args'])}", flush=True)
            try:
                app(job["args"], prog_name="dermctl")
            except SystemExit as exc:
                if exc.code:
                    return int(exc.code)
    finally:
        dist.destroy_process_group = destroy
        if dist.is_initialized():
            dist.barrier()  # as dermctl.runtime.distributed.end_process_group
            destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
