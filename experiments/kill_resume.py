"""Reliability drill: SIGKILL a training run at random moments, resume it each time, and check
that its final parameters are bitwise those of an uninterrupted run.

    python -m experiments.kill_resume --kills 6 --outdir runs/kill_resume

Each kill lands at a random time after the run's first checkpoint; a kill that finds an Orbax
temporary directory (``*.orbax-checkpoint-tmp``) in checkpoints/ happened during a save. Prints
one line per kill and a summary; exits 1 if the resumed parameters differ.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from experiments import cli
from jaxvae.training import checkpoint
from jaxvae.training import runs

ROOT = Path(__file__).resolve().parent.parent

TRAIN = ["--dataset", "digits", "--hidden", "32", "--latent-dim", "2", "--batch-size", "32",
         "--epochs", "6", "--checkpoint-every", "5", "--keep-checkpoints", "2", "--quiet"]


def _train(outdir: Path, extra: list[str]) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen([sys.executable, "-m", "experiments.train", *TRAIN,
                             "--outdir", str(outdir), *extra], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def main(argv=None) -> int:
    p = cli.parser("experiments.kill_resume", __doc__)
    p.add_argument("--kills", type=int, default=6, help="number of kills (default %(default)s)")
    p.add_argument("--max-delay", type=float, default=3.0,
                   help="kill at a uniform random delay in [0, this] seconds after the first "
                        "checkpoint of each attempt (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    p.add_argument("--outdir", default="runs/kill_resume",
                   help="work directory (new or empty)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete an earlier drill in --outdir first")
    args = p.parse_args(argv)
    if args.kills < 1 or not args.max_delay > 0:
        p.error("--kills must be >= 1 and --max-delay > 0")
    rng = random.Random(args.seed)
    work = Path(args.outdir)
    try:
        runs.check_new_run(work, overwrite=args.overwrite, markers=("reference", "killed"),
                           what="a drill")
        if args.overwrite:
            runs.clear_run(work)
        work.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    reference = _train(work / "reference", [])
    if reference.wait() != 0:
        print(reference.stderr.read().decode(), file=sys.stderr)
        return 2
    reference.stderr.close()

    run, ckpt = work / "killed", work / "killed" / "checkpoints"
    during_save = finished_early = 0
    for i in range(args.kills):
        proc = _train(run, ["--resume"] if checkpoint.saved_steps(ckpt) else [])
        before = set(checkpoint.saved_steps(ckpt))
        while set(checkpoint.saved_steps(ckpt)) <= before and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, args.max_delay))
        saving = any(".orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir())
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        killed = proc.returncode == -signal.SIGKILL
        during_save += killed and saving
        finished_early += not killed
        print(f"kill {i + 1}: {'killed' if killed else 'finished first'}"
              f"{' during a save' if killed and saving else ''}; checkpoints now "
              f"{checkpoint.saved_steps(ckpt)}", flush=True)
        if not killed:
            break
    if not (run / "params.msgpack").exists():
        final = _train(run, ["--resume"])
        if final.wait() != 0:
            print(final.stderr.read().decode(), file=sys.stderr)
            return 2
        final.stderr.close()
    same = (run / "params.msgpack").read_bytes() == (work / "reference" / "params.msgpack"
                                                      ).read_bytes()
    metrics_same = [line.split('"seconds"')[0] for line in
                    (run / "metrics.jsonl").read_text().splitlines()] == \
        [line.split('"seconds"')[0] for line in
         (work / "reference" / "metrics.jsonl").read_text().splitlines()]
    print(f"{args.kills - finished_early} kills ({during_save} during a save); final parameters "
          f"{'bitwise identical' if same else 'DIFFERENT'}; metrics.jsonl "
          f"{'identical' if metrics_same else 'DIFFERENT'} (seconds aside)")
    return 0 if same and metrics_same else 1


if __name__ == "__main__":
    sys.exit(main())
