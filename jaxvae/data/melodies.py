"""Monophonic melodies as fixed-length event sequences (MusicVAE's melody representation).

A melody is quantized to 16th-note steps (4 per quarter note) and written as one event per step,
as MusicVAE's melody models do (Roberts et al. 2018; Magenta's ``MelodyOneHotEncoding``):

    HOLD      0        no event: the sounding note (or the silence) goes on
    NOTE_OFF  1        the sounding note ends: a rest begins
    p + 2              note-on of MIDI pitch p (0..127): the sounding note ends, p begins

So every event sequence is a melody (a HOLD or NOTE_OFF before any note-on is silence), and a
melody has one canonical sequence: a NOTE_OFF only right after a note that is not followed at
once by another note-on. ``notes_to_events(events_to_notes(e)) == e`` for canonical ``e``.

The sequence VAE trains on strings (``jaxvae.data.vocab.Vocabulary``, ``"char"`` tokenizer), so
``events_to_text`` writes one character per step: ``-`` for HOLD, ``.`` for NOTE_OFF and
``chr(ord("0") + p - 36)`` for a note-on of pitch p in 36..107 (C2..B7), ``0`` to ``w``.

``load_melodies`` reads the folk songs of the Essen collection (``essenFolksong``: about 9,000
tunes in ABC) or the soprano lines of the Bach chorales (``bach/*.mxl``: 408 in music21
10.5.1) from music21's corpus, which ships inside the ``music21`` wheel (``pip install
'jaxvae[music]'``), so nothing is downloaded. Each tune is

  1. parsed (its first part; ties merged; a chord gives its highest note; grace notes dropped)
     and quantized to the 16th grid, a pickup bar skipped so step 0 is a downbeat;
  2. transposed into a common key: the shift in -5..6 semitones that puts the most sounding
     time on the white keys (the C major / A minor collection; a tune in G dorian lands in D
     dorian), then whole octaves so that its mean pitch is within 6 semitones of G4 (67);
  3. cut into windows of ``num_steps`` steps that start on a downbeat and do not overlap (each
     starts a whole number of bars after the one before); a window with fewer than
     ``min_notes`` note-ons or a pitch outside 36..107 is dropped.

Parsing is slow (the first 1,500 folk tunes took 46 s of CPU; a chorale takes about ten times
as long as a folk tune), so the windows are cached as a compressed .npz in the data folder
(``cache_dir``, else ``$JAXVAE_DATA_DIR``, else ``~/.cache/jaxvae``), one file per (source,
num_steps, min_notes, max_tunes).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxvae.training import files

HOLD, NOTE_OFF = 0, 1
NUM_SPECIAL_EVENTS = 2
NUM_EVENTS = NUM_SPECIAL_EVENTS + 128  # 130 classes, as in MusicVAE's melody models
STEPS_PER_QUARTER = 4
STEPS_PER_BAR = 16  # a 4/4 bar, the unit of ``notes_per_bar``
# pitch classes of the white keys: the scale every melody is transposed into
SCALE = frozenset({0, 2, 4, 5, 7, 9, 11})
CENTER_PITCH = 67  # G4: melodies are moved by octaves so their mean pitch is near it
MIN_TEXT_PITCH, MAX_TEXT_PITCH = 36, 107  # the pitches events_to_text can write
HOLD_CHAR, NOTE_OFF_CHAR = "-", "."
SOURCES = ("folk", "bach")
INSTALL_COMMAND = "pip install 'jaxvae[music]'  (or pip install music21==10.5.1)"
CACHE_VERSION = 1


class Note(NamedTuple):
    """A note from step ``start`` up to (not including) step ``end``."""

    pitch: int  # MIDI pitch 0..127
    start: int
    end: int


class MelodyData(NamedTuple):
    """Windows of the tunes of one source."""

    events_NxT: np.ndarray  # int16 event ids (HOLD, NOTE_OFF, pitch + 2)
    tune_N: np.ndarray  # int32: the index into ``names`` of the tune each window comes from
    names: list[str]  # one per tune that gave at least one window: "<file>#<number>"
    info: dict  # tunes read, tunes skipped (and why), windows, parse seconds


def _music21():
    try:
        import music21
    except ImportError as e:
        raise ImportError(f"melodies need music21: {INSTALL_COMMAND}") from e
    return music21


# ----------------------------------------------------------------------------- events <-> notes

def note_on(pitch: int) -> int:
    """The event id of a note-on of MIDI ``pitch``."""
    return int(pitch) + NUM_SPECIAL_EVENTS


def notes_to_events(notes: Iterable[Note], num_steps: int, start: int = 0) -> np.ndarray:
    """The canonical event sequence of steps ``start .. start + num_steps - 1`` of ``notes``.

    A note that began before ``start`` and still sounds there gets a note-on at step 0. Notes
    must not overlap (a monophonic line, as ``stream_to_notes`` returns).
    """
    events = np.full(num_steps, HOLD, np.int16)
    for note in sorted(notes, key=lambda n: n.start):
        s, e = note.start - start, note.end - start
        if e <= 0 or s >= num_steps or e <= s:
            continue
        if not 0 <= note.pitch <= 127:
            raise ValueError(f"MIDI pitch {note.pitch} is outside 0..127")
        events[max(s, 0)] = note_on(note.pitch)
        if e < num_steps:
            events[e] = NOTE_OFF  # a following note-on at e overwrites it (sorted by start)
    return events


def events_to_notes(events: Sequence[int]) -> list[Note]:
    """The notes of an event sequence: a note-on starts a note that lasts until the next
    note-on or NOTE_OFF (or the end). Every sequence of ids in 0..129 is a melody."""
    notes, pitch, begin = [], None, 0
    events = np.asarray(events).reshape(-1)
    for t, event in enumerate(events.tolist()):
        if event == HOLD:
            continue
        if pitch is not None:
            notes.append(Note(pitch, begin, t))
            pitch = None
        if event >= NUM_SPECIAL_EVENTS:
            if event >= NUM_EVENTS:
                raise ValueError(f"event id {event} at step {t} is outside 0..{NUM_EVENTS - 1}")
            pitch, begin = event - NUM_SPECIAL_EVENTS, t
        elif event != NOTE_OFF:
            raise ValueError(f"event id {event} at step {t} is outside 0..{NUM_EVENTS - 1}")
    if pitch is not None:
        notes.append(Note(pitch, begin, len(events)))
    return notes


def events_to_text(events: Sequence[int]) -> str:
    """One character per step: ``-`` HOLD, ``.`` NOTE_OFF, ``chr(ord('0') + p - 36)`` a note-on
    of pitch p (36..107)."""
    out = []
    for t, event in enumerate(np.asarray(events).reshape(-1).tolist()):
        if event == HOLD:
            out.append(HOLD_CHAR)
        elif event == NOTE_OFF:
            out.append(NOTE_OFF_CHAR)
        else:
            pitch = event - NUM_SPECIAL_EVENTS
            if not MIN_TEXT_PITCH <= pitch <= MAX_TEXT_PITCH:
                raise ValueError(f"pitch {pitch} at step {t} cannot be written as text: only "
                                 f"{MIN_TEXT_PITCH}..{MAX_TEXT_PITCH}")
            out.append(chr(ord("0") + pitch - MIN_TEXT_PITCH))
    return "".join(out)


def text_to_events(text: str, num_steps: int | None = None) -> np.ndarray:
    """The events of ``events_to_text``'s string; with ``num_steps``, a shorter string (a sample
    that ended early) is continued with HOLD and a longer one cut."""
    events = []
    for i, ch in enumerate(text):
        if ch == HOLD_CHAR:
            events.append(HOLD)
        elif ch == NOTE_OFF_CHAR:
            events.append(NOTE_OFF)
        else:
            pitch = ord(ch) - ord("0") + MIN_TEXT_PITCH
            if not MIN_TEXT_PITCH <= pitch <= MAX_TEXT_PITCH:
                raise ValueError(f"character {ch!r} at position {i} of {text!r} is not a melody "
                                 "event")
            events.append(note_on(pitch))
    if num_steps is not None:
        events = (events + [HOLD] * num_steps)[:num_steps]
    return np.asarray(events, np.int16)


# ------------------------------------------------------------------------- music21 <-> notes

def stream_to_notes(stream) -> tuple[list[Note], int | None]:
    """The notes of a music21 score or part on the 16th grid, and the bar length in steps.

    Reads the first part (a score's melody line). Ties are merged, a chord gives its highest
    pitch, grace notes are dropped; onsets and ends are rounded to the nearest 16th, a note
    shortened where the next begins. If the first bar is a pickup (music21's ``paddingLeft``),
    its notes are dropped and step 0 is the next downbeat. The bar length is that of the first
    time signature (None without one).
    """
    m21 = _music21()
    parts = getattr(stream, "parts", None)
    part = parts[0] if parts is not None and len(parts) else stream
    measures = list(part.getElementsByClass(m21.stream.Measure))
    downbeat = 0.0
    if len(measures) > 1 and float(measures[0].paddingLeft or 0) > 0:
        downbeat = float(measures[1].offset)
    signatures = list(part.recurse().getElementsByClass(m21.meter.TimeSignature))
    bar_steps = (round(float(signatures[0].barDuration.quarterLength) * STEPS_PER_QUARTER)
                 if signatures else None)
    flat = part.stripTies().flatten()
    notes: list[Note] = []
    for element in flat.notes:
        duration = float(element.quarterLength)
        if duration <= 0:  # grace notes
            continue
        offset = float(element.offset) - downbeat
        if offset < 0:
            continue
        if isinstance(element, m21.chord.Chord):
            pitch = max(p.midi for p in element.pitches)
        else:
            pitch = element.pitch.midi
        start = round(offset * STEPS_PER_QUARTER)
        end = round((offset + duration) * STEPS_PER_QUARTER)
        if end <= start:
            continue
        while notes and notes[-1].start >= start:  # quantized onto the same step: keep the later
            notes.pop()
        if notes and notes[-1].end > start:
            notes[-1] = notes[-1]._replace(end=start)
        notes.append(Note(int(pitch), start, end))
    return notes, (bar_steps if bar_steps and bar_steps > 0 else None)


def notes_to_stream(notes: Iterable[Note]):
    """A music21 ``Stream`` of the notes (16th steps as quarterLength / 4) and the rests
    between them, ready for ``.write('midi', fp=...)``."""
    m21 = _music21()
    out = m21.stream.Stream()
    position = 0
    for note in sorted(notes, key=lambda n: n.start):
        if note.start > position:
            out.insert(position / STEPS_PER_QUARTER,
                       m21.note.Rest(quarterLength=(note.start - position) / STEPS_PER_QUARTER))
        n = m21.note.Note(note.pitch)
        n.quarterLength = (note.end - note.start) / STEPS_PER_QUARTER
        out.insert(note.start / STEPS_PER_QUARTER, n)
        position = note.end
    return out


def melodies_to_stream(melodies_MxT: Sequence[Sequence[int]], gap_steps: int = 0):
    """One music21 ``Stream`` playing event sequences one after another, ``gap_steps`` of
    silence between them."""
    notes, offset = [], 0
    for events in melodies_MxT:
        events = np.asarray(events).reshape(-1)
        notes += [n._replace(start=n.start + offset, end=n.end + offset)
                  for n in events_to_notes(events)]
        offset += len(events) + gap_steps
    return notes_to_stream(notes)


def write_midi(melodies_MxT: Sequence[Sequence[int]], path: str | os.PathLike,
               gap_steps: int = 0) -> Path:
    """Writes the melodies, one after another, as a MIDI file (through music21), atomically."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        melodies_to_stream(melodies_MxT, gap_steps).write("midi", fp=str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------- transposition, windows

def key_shift(notes: Sequence[Note], center: int = CENTER_PITCH) -> int:
    """The transposition (semitones) of the tune into the common key and register.

    The shift s in -5..6 that puts the largest share of sounding time on the white keys (ties:
    the smallest |s|, then the lower s), plus the multiple of 12 that brings the
    duration-weighted mean pitch to within 6 semitones of ``center``.
    """
    if not notes:
        return 0
    weight_C = np.zeros(12)
    for n in notes:
        weight_C[n.pitch % 12] += n.end - n.start
    in_scale = np.array([pc in SCALE for pc in range(12)])
    best, best_share = 0, -1.0
    for s in sorted(range(-5, 7), key=lambda s: (abs(s), s)):
        share = weight_C[(np.arange(12) - s) % 12][in_scale].sum()
        if share > best_share + 1e-9:
            best, best_share = s, share
    durations = np.array([n.end - n.start for n in notes], float)
    mean = float(np.average([n.pitch + best for n in notes], weights=durations))
    return best + 12 * int(np.floor((center - mean) / 12 + 0.5))


def transpose(notes: Iterable[Note], semitones: int) -> list[Note]:
    return [n._replace(pitch=n.pitch + semitones) for n in notes]


def windows(notes: Sequence[Note], num_steps: int, bar_steps: int | None = None,
            min_notes: int = 4) -> list[np.ndarray]:
    """Non-overlapping windows of ``num_steps`` events, each starting on a downbeat: window k
    starts at k * hop, hop the smallest whole number of bars >= num_steps (num_steps without a
    bar length). Windows with fewer than ``min_notes`` note-ons, or a pitch ``events_to_text``
    cannot write, are dropped."""
    if not notes:
        return []
    hop = num_steps if not bar_steps else -(-num_steps // bar_steps) * bar_steps
    total = max(n.end for n in notes)
    out = []
    for start in range(0, total - num_steps + 1, hop):
        events = notes_to_events(notes, num_steps, start)
        ons = events[events >= NUM_SPECIAL_EVENTS] - NUM_SPECIAL_EVENTS
        if len(ons) >= min_notes and ons.min() >= MIN_TEXT_PITCH and ons.max() <= MAX_TEXT_PITCH:
            out.append(events)
    return out


# ------------------------------------------------------------------------------ statistics

def melody_statistics(events_NxT) -> dict:
    """Statistics of a set of event sequences (e.g. samples against held-out melodies).

    ``pitch_range``: mean over the melodies with a note of (highest - lowest pitch), semitones;
    ``notes_per_bar``: mean note-ons per 16 steps; ``in_scale``: share of all notes (pooled)
    whose pitch class is on the white keys (the common key's scale); ``mean_pitch``: mean MIDI
    pitch of all notes; ``mean_note_steps``: mean note length in steps; ``silent_share``: share
    of steps where no note sounds; ``empty``: share of melodies without a note.
    """
    events_NxT = np.asarray(events_NxT)
    if events_NxT.ndim != 2 or not events_NxT.size:
        raise ValueError(f"melody_statistics takes a non-empty (N, T) array, got shape "
                         f"{events_NxT.shape}")
    n, steps = events_NxT.shape
    ranges, densities, pitches, lengths, silent, empty = [], [], [], [], 0, 0
    for events in events_NxT:
        notes = events_to_notes(events)
        densities.append(len(notes) * STEPS_PER_BAR / steps)
        silent += steps - sum(x.end - x.start for x in notes)
        if not notes:
            empty += 1
            continue
        p = [x.pitch for x in notes]
        ranges.append(max(p) - min(p))
        pitches += p
        lengths += [x.end - x.start for x in notes]
    pitches_a = np.asarray(pitches)
    return {"melodies": n,
            "pitch_range": float(np.mean(ranges)) if ranges else 0.0,
            "notes_per_bar": float(np.mean(densities)),
            "in_scale": float(np.mean([p % 12 in SCALE for p in pitches])) if pitches else 0.0,
            "mean_pitch": float(pitches_a.mean()) if pitches else 0.0,
            "mean_note_steps": float(np.mean(lengths)) if lengths else 0.0,
            "silent_share": silent / (n * steps),
            "empty": empty / n}


# ------------------------------------------------------------------------------ the corpus

def _corpus_tunes(source: str) -> Iterator[tuple[str, object]]:
    """(name, parse function) for each tune of ``source``, in a fixed order."""
    m21 = _music21()
    root = Path(m21.__file__).parent / "corpus"
    if source == "folk":
        for path in sorted((root / "essenFolksong").glob("*.abc")):
            text = path.read_text(encoding="latin-1")
            for number, chunk in enumerate(re.split(r"(?m)^(?=X:)", text)):
                if chunk.startswith("X:"):
                    yield (f"essenFolksong/{path.stem}#{number}",
                           lambda c=chunk: m21.converter.parse(c, format="abc"))
    elif source == "bach":
        for path in sorted((root / "bach").glob("*.mxl")):
            yield f"bach/{path.stem}", lambda p=path: m21.converter.parse(str(p))
    else:
        raise ValueError(f"unknown melody source {source!r}; choose one of {SOURCES}")


def melodies_from_streams(streams: Iterable[tuple[str, object]], num_steps: int,
                          min_notes: int = 4) -> MelodyData:
    """The windows of (name, music21 stream or a function that parses one) pairs; a stream
    that fails to parse or gives no window is counted in ``info`` and skipped."""
    events, tunes, names = [], [], []
    info = {"tunes_read": 0, "tunes_failed": 0, "tunes_without_window": 0}
    for name, item in streams:
        info["tunes_read"] += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # music21 warns about odd ABC headers
                stream = item() if callable(item) else item
                notes, bar_steps = stream_to_notes(stream)
        except Exception:  # noqa: BLE001  music21 raises many kinds on malformed files
            info["tunes_failed"] += 1
            continue
        cut = windows(transpose(notes, key_shift(notes)), num_steps, bar_steps, min_notes)
        if not cut:
            info["tunes_without_window"] += 1
            continue
        events += cut
        tunes += [len(names)] * len(cut)
        names.append(name)
    info["windows"] = len(events)
    events_NxT = np.stack(events) if events else np.zeros((0, num_steps), np.int16)
    return MelodyData(events_NxT, np.asarray(tunes, np.int32), names, info)


def default_cache_dir() -> Path:
    """``$JAXVAE_DATA_DIR``, else ``~/.cache/jaxvae``."""
    return Path(os.environ.get("JAXVAE_DATA_DIR") or Path.home() / ".cache" / "jaxvae")


def cache_path(cache_dir: str | os.PathLike | None, source: str, num_steps: int, min_notes: int,
               max_tunes: int | None) -> Path:
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return folder / (f"melodies_v{CACHE_VERSION}_{source}_{num_steps}steps_min{min_notes}_"
                     f"{'all' if max_tunes is None else max_tunes}tunes.npz")


def load_melodies(source: str = "folk", num_steps: int = 32, min_notes: int = 4,
                  max_tunes: int | None = None, cache_dir: str | os.PathLike | None = None
                  ) -> MelodyData:
    """The windows of the first ``max_tunes`` tunes (all: None) of ``source`` (``SOURCES``),
    parsed once and then read from the .npz cache (see the module docstring)."""
    if source not in SOURCES:
        raise ValueError(f"unknown melody source {source!r}; choose one of {SOURCES}")
    if num_steps < 1 or min_notes < 0 or (max_tunes is not None and max_tunes < 1):
        raise ValueError(f"num_steps must be >= 1, min_notes >= 0 and max_tunes >= 1 (or None), "
                         f"got {num_steps}, {min_notes}, {max_tunes}")
    path = cache_path(cache_dir, source, num_steps, min_notes, max_tunes)
    if path.exists():
        return read_cache(path)
    start, cpu_start = time.perf_counter(), time.process_time()
    tunes = _corpus_tunes(source)
    if max_tunes is not None:
        tunes = (t for _, t in zip(range(max_tunes), tunes))
    data = melodies_from_streams(tunes, num_steps, min_notes)
    data.info.update(source=source, parse_seconds=time.perf_counter() - start,
                     parse_cpu_seconds=time.process_time() - cpu_start)
    if not len(data.events_NxT):
        raise ValueError(f"no melody window of {num_steps} steps in the {source} corpus "
                         f"({data.info}); use fewer --steps or --min-notes")
    write_cache(path, data)
    return data


def write_cache(path: Path, data: MelodyData) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, events=data.events_NxT, tune=data.tune_N,
                        names=np.asarray(data.names), info=np.asarray(json.dumps(data.info)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        files.write_atomic(path, buffer.getvalue())
    except OSError as e:
        raise ValueError(f"cannot write the melody cache to {path.parent}: {e.strerror or e}; "
                         "pass a writable --data-dir or set $JAXVAE_DATA_DIR") from None


def read_cache(path: Path) -> MelodyData:
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = MelodyData(npz["events"].astype(np.int16), npz["tune"].astype(np.int32),
                              [str(s) for s in npz["names"]], json.loads(str(npz["info"])))
    except (OSError, ValueError, KeyError) as e:
        raise ValueError(f"cannot read the melody cache {path}: {e}; delete it to parse the "
                         "corpus again") from None
    data.info["cache"] = str(path)
    return data


def split_by_tune(tune_N: np.ndarray, test_fraction: float, seed: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and test windows: a seeded random ``test_fraction`` of the tunes
    (at least one) is held out with all its windows, so no tune is on both sides."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test fraction must be in (0, 1), got {test_fraction}")
    tunes = np.unique(tune_N)
    if len(tunes) < 2:
        raise ValueError(f"splitting by tune needs at least 2 tunes, got {len(tunes)}")
    order = np.random.default_rng(seed).permutation(tunes)
    n_test = min(len(tunes) - 1, max(1, int(round(test_fraction * len(tunes)))))
    test = np.isin(tune_N, order[:n_test])
    return np.flatnonzero(~test), np.flatnonzero(test)
