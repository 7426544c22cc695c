"""Melody generation: the sequence VAE on 2-bar folk melodies (MusicVAE's melody events).

    pip install 'jaxvae[music]'      # music21, whose wheel ships the corpus
    python -m experiments.music      # 1,500 Essen folk tunes, 20 min of training
    python -m experiments.music --max-tunes 300 --max-minutes 2 --outdir runs/music_small
    python -m experiments.music --source bach --outdir runs/music_bach   # chorale soprano lines

Melodies come from music21's offline corpus (``jaxvae.data.melodies``): each tune is quantized
to 16th notes, transposed into the white-key scale around G4 and cut into windows of --steps
steps (32: two 4/4 bars), one event per step (note-on of a pitch, hold, note-off), parsed once
and cached in --data-dir. Tunes, not windows, are split into train and test (--test-fraction,
seeded). The sequence VAE (``jaxvae.training.sequences.fit_sequences``) reads a window as a
string of one character per step.

Reports the test negative ELBO and KL, the per-step accuracy of greedy reconstructions from the
posterior mean, and statistics of prior samples against the held-out melodies (pitch range,
notes per bar, share of in-scale notes, ...).

Writes into --outdir: metrics.jsonl, results.json, samples.txt (one sample per line, --steps
event characters), samples.mid (the first --midi-samples samples, a bar of silence between
them), interpolation.mid (two held-out melodies and --interpolation-steps points between their
posterior means), pianoroll.png (held-out melodies, samples and the interpolation),
params.msgpack, vocab.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np
from matplotlib.ticker import MaxNLocator

from experiments import cli, seqlib
from jaxvae.data import melodies
from jaxvae.data.vocab import Vocabulary
from jaxvae.evaluation import plots
from jaxvae.training import files


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("experiments.music", __doc__)
    p.add_argument("--source", choices=melodies.SOURCES, default="folk",
                   help="folk: the Essen folk songs (ABC); bach: soprano lines of the chorales "
                        "(%(default)s)")
    p.add_argument("--max-tunes", type=int, default=1500,
                   help="parse only the first N tunes of the corpus (about 0.03 s of CPU a folk "
                        "tune, ten times that a chorale; once, then cached); 0 = all "
                        "(%(default)s)")
    p.add_argument("--steps", type=int, default=32,
                   help="16th-note steps per melody (32 = two 4/4 bars) (%(default)s)")
    p.add_argument("--min-notes", type=int, default=4,
                   help="drop windows with fewer note-ons (%(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.1,
                   help="share of the tunes held out for testing (%(default)s)")
    p.add_argument("--data-dir", default=None,
                   help="folder of the parsed-melody cache (default $JAXVAE_DATA_DIR or "
                        "~/.cache/jaxvae)")
    p.add_argument("--epochs", type=int, default=200,
                   help="epochs at most (%(default)s); --max-minutes usually stops first")
    p.add_argument("--max-minutes", type=float, default=20.0,
                   help="stop after the epoch that passes this much training time; 0 = none "
                        "(%(default)s)")
    seqlib.add_model_flags(p, hidden_dim=128, latent_dim=16, warmup_steps=1000,
                           word_dropout=0.25)
    p.add_argument("--num-samples", type=int, default=1000,
                   help="prior samples for the statistics (%(default)s)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="sampling temperature (%(default)s)")
    p.add_argument("--midi-samples", type=int, default=8,
                   help="samples written to samples.mid and the piano roll (%(default)s)")
    p.add_argument("--interpolation-steps", type=int, default=6,
                   help="points from one held-out melody to another, both ends included "
                        "(%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="random seed (%(default)s)")
    seqlib.add_outdir_flags(p, "runs/music")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_args(args) -> None:
    cli.check_positive(args, ("steps", "num_samples", "midi_samples"))
    if args.max_tunes < 0 or args.min_notes < 0:
        raise ValueError(f"--max-tunes and --min-notes must be >= 0, got {args.max_tunes} and "
                         f"{args.min_notes}")
    if args.interpolation_steps < 2:
        raise ValueError(f"--interpolation-steps must be >= 2 (both ends), got "
                         f"{args.interpolation_steps}")
    if not 0 < args.test_fraction < 1:
        raise ValueError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
    if not args.temperature > 0:
        raise ValueError(f"--temperature must be > 0, got {args.temperature}")
    if args.max_minutes < 0:
        raise ValueError(f"--max-minutes must be >= 0, got {args.max_minutes}")


def step_accuracy(inputs: list[str], outputs: list[str]) -> float:
    """Share of steps whose event the reconstruction got right (a decoding that ended early
    counts its missing steps as wrong)."""
    right = sum(a == b for x, y in zip(inputs, outputs) for a, b in zip(x, y))
    return right / sum(len(x) for x in inputs)


def save_piano_roll(path, panels: list[tuple[str, np.ndarray]], gap_steps: int) -> str:
    """One piano-roll panel per (title, events_MxT): the melodies one after another, a note as
    a bar from its start to its end at its pitch, a grey line between melodies, grey rows for
    the pitches off the white keys."""
    fig, axes = plots.plt.subplots(len(panels), 1, figsize=(14, 2.6 * len(panels)),
                                   squeeze=False)
    for ax, (title, events_MxT) in zip(axes[:, 0], panels):
        steps = events_MxT.shape[1]
        pitches = []
        for m, events in enumerate(events_MxT):
            offset = m * (steps + gap_steps)
            notes = melodies.events_to_notes(events)
            for n in notes:
                ax.add_patch(plots.plt.Rectangle((offset + n.start, n.pitch - 0.4),
                                                 n.end - n.start, 0.8, color=f"C{m % 10}"))
                pitches.append(n.pitch)
            if m:
                ax.axvline(offset - gap_steps / 2, color="0.7", lw=1)
        low, high = (min(pitches), max(pitches)) if pitches else (60, 72)
        ax.set_xlim(0, len(events_MxT) * (steps + gap_steps) - gap_steps)
        ax.set_ylim(low - 2, high + 2)
        ax.set_ylabel("MIDI pitch")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title, fontsize=10)
        for pitch in range(low - 1, high + 2):
            if pitch % 12 not in melodies.SCALE:
                ax.axhspan(pitch - 0.5, pitch + 0.5, color="0.93", zorder=0)
    axes[-1, 0].set_xlabel("16th-note steps")
    fig.tight_layout()
    return plots.save_figure(fig, path)


def run(args) -> dict:
    check_args(args)
    config = seqlib.sequence_config(args, max_seconds=60.0 * args.max_minutes)
    seqlib.check_outdir(args)
    start = time.perf_counter()
    data = melodies.load_melodies(args.source, args.steps, args.min_notes,
                                  args.max_tunes or None, args.data_dir)
    load_seconds = time.perf_counter() - start
    train_idx, test_idx = melodies.split_by_tune(data.tune_N, args.test_fraction, args.seed)
    texts = [melodies.events_to_text(e) for e in data.events_NxT]
    train_texts = [texts[i] for i in train_idx]
    vocab = Vocabulary.from_corpus(train_texts, "char")
    known = set(vocab.tokens)
    # a held-out melody with a pitch no training melody has cannot be encoded: drop it
    test_keep = [i for i in test_idx if set(texts[i]) <= known]
    test_texts = [texts[i] for i in test_keep]
    test_events = data.events_NxT[test_keep]
    if not test_texts:
        raise ValueError("no held-out melody left; raise --max-tunes or --test-fraction")

    outdir = seqlib.prepare_outdir(args.outdir, overwrite=args.overwrite)
    fit, train_wall = seqlib.train(config, vocab, train_texts, test_texts, outdir, args.quiet,
                                   length=args.steps + 1)

    key = jax.random.key(args.seed + 1)
    recon = seqlib.reconstructions(fit, test_texts)
    # a sample that emitted EOS early goes on with HOLD; one that did not is cut to --steps
    drawn = seqlib.prior_samples(fit, key, args.num_samples, temperature=args.temperature)
    sample_events = np.stack([melodies.text_to_events(s, args.steps) for s in drawn])
    samples = [melodies.events_to_text(e) for e in sample_events]
    a, b = test_texts[0], test_texts[len(test_texts) // 2]
    path = seqlib.interpolation(fit, a, b, steps=args.interpolation_steps)
    path_events = np.stack([melodies.text_to_events(s, args.steps) for s in path])
    ends = np.stack([melodies.text_to_events(a), melodies.text_to_events(b)])

    final, train_set = fit.history[-1], set(train_texts)
    results = {
        "config": config.to_dict(), "source": args.source, "steps": args.steps,
        "data": data.info, "load_seconds": load_seconds, "tunes": len(data.names),
        "train_tunes": len(np.unique(data.tune_N[train_idx])),
        "test_tunes": len(np.unique(data.tune_N[test_idx])),
        "train_melodies": len(train_texts), "test_melodies": len(test_texts),
        "test_dropped_unknown_pitch": len(test_idx) - len(test_keep),
        "vocab_size": len(vocab), "epochs_run": len(fit.history), "steps_run": final["step"],
        "train_seconds": sum(r["seconds"] for r in fit.history),
        "compile_seconds": fit.compile_seconds, "train_wall_seconds": train_wall,
        "final": final,
        "test_nelbo": final["test_nelbo"], "test_kl": final["test_kl"],
        "test_token_accuracy_teacher_forced": final["test_token_accuracy"],
        "test_step_accuracy_reconstruction": step_accuracy(test_texts, recon),
        "test_exact_reconstruction": float(np.mean([x == y for x, y in zip(test_texts,
                                                                           recon)])),
        "temperature": args.temperature,
        "statistics": {"samples": melodies.melody_statistics(sample_events),
                       "test": melodies.melody_statistics(test_events),
                       "train": melodies.melody_statistics(data.events_NxT[train_idx])},
        "samples_distinct": len(set(samples)) / len(samples),
        "samples_copied_from_train": float(np.mean([s in train_set for s in samples])),
        "samples_head": samples[:8],
        "reconstructions": [{"input": x, "output": y} for x, y in zip(test_texts[:8], recon)],
        "interpolation": {"from": a, "to": b, "path": path},
        **seqlib.environment()}
    files.write_atomic(outdir / "results.json", json.dumps(results, indent=2))
    files.write_atomic(outdir / "samples.txt", "\n".join(samples) + "\n")
    gap = melodies.STEPS_PER_BAR
    melodies.write_midi(sample_events[:args.midi_samples], outdir / "samples.mid", gap)
    melodies.write_midi(np.concatenate([ends[:1], path_events, ends[1:]]),
                        outdir / "interpolation.mid", gap)
    save_piano_roll(outdir / "pianoroll.png", [
        ("held-out melodies", test_events[:args.midi_samples]),
        (f"prior samples (T = {args.temperature:g})", sample_events[:args.midi_samples]),
        (f"held-out A, then {args.interpolation_steps} decodings from z(A) to z(B), then "
         "held-out B", np.concatenate([ends[:1], path_events, ends[1:]]))], gap_steps=gap)
    written = ([outdir / name for name in ("metrics.jsonl", "results.json", "samples.txt",
                                           "samples.mid", "interpolation.mid", "pianoroll.png")]
               + seqlib.write_model(outdir, fit))

    stats = results["statistics"]
    print(f"{len(data.names)} tunes -> {len(train_texts)} train / {len(test_texts)} test "
          f"melodies of {args.steps} steps; trained {results['epochs_run']} epochs "
          f"({results['steps_run']} steps) in {results['train_seconds'] / 60:.1f} min")
    print(f"test -ELBO {final['test_nelbo']:.2f} nats/melody (KL {final['test_kl']:.2f}); "
          f"step accuracy: teacher-forced {final['test_token_accuracy']:.3f}, greedy "
          f"reconstruction {results['test_step_accuracy_reconstruction']:.3f}")
    print(f"{'':>16}  {'samples':>8}  {'held-out':>8}")
    for name in ("pitch_range", "notes_per_bar", "in_scale", "mean_pitch", "silent_share"):
        print(f"{name:>16}  {stats['samples'][name]:8.3f}  {stats['test'][name]:8.3f}")
    print(f"wrote {', '.join(str(p) for p in written)}")
    return results


def main(argv=None) -> int:
    return cli.script_main(build_parser, run, argv, errors=(ValueError, TypeError, ImportError))


if __name__ == "__main__":
    sys.exit(main())
