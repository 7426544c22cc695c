"""jaxvae.data.melodies (MusicVAE's melody events, music21 in and out) and experiments/music.py.

Every melody here is written in the test (ABC strings and music21 notes); the corpus is never
scanned: the script's end-to-end run reads a cache built from the test's own tunes.
"""

import json

import numpy as np
import pytest

pytest.importorskip("music21")
import music21  # noqa: E402

from jaxvae.data import melodies  # noqa: E402
from jaxvae.data.melodies import HOLD, NOTE_OFF, Note, note_on  # noqa: E402

# A pickup bar (G), then two 4/4 bars of 16th units: a tie (f4-f4), a rest, a low ending.
TUNE = """X:1
T:test tune
M:4/4
L:1/16
K:C
G4 | c4 d2 e2 f4- f4 | z4 g8 A2 B2 |
"""
# ABC: C = MIDI 60 (middle C), c = 72; G 67, A 69, B 71, d 74, e 76, f 77, g 79.
TUNE_NOTES = [Note(72, 0, 4), Note(74, 4, 6), Note(76, 6, 8), Note(77, 8, 16),
              Note(79, 20, 28), Note(69, 28, 30), Note(71, 30, 32)]
H = HOLD
TUNE_EVENTS = ([note_on(72), H, H, H, note_on(74), H, note_on(76), H, note_on(77)] + [H] * 7
               + [NOTE_OFF, H, H, H, note_on(79)] + [H] * 7 + [note_on(69), H, note_on(71), H])


def parse_abc(text):
    return music21.converter.parse(text, format="abc")


def test_an_abc_tune_becomes_the_hand_written_notes_and_events():
    notes, bar_steps = melodies.stream_to_notes(parse_abc(TUNE))
    assert notes == TUNE_NOTES  # the pickup dropped, the tie merged, the rest a gap
    assert bar_steps == 16
    events = melodies.notes_to_events(notes, 32)
    assert events.tolist() == TUNE_EVENTS


def test_tokens_to_notes_to_tokens_round_trip_through_music21():
    events = np.asarray(TUNE_EVENTS)
    notes = melodies.events_to_notes(events)
    assert notes == TUNE_NOTES
    assert melodies.notes_to_events(notes, 32).tolist() == TUNE_EVENTS
    # through music21 objects (notes and rests in a Stream) and back
    stream = melodies.notes_to_stream(notes)
    assert [type(e).__name__ for e in stream.notesAndRests][:5] == ["Note"] * 4 + ["Rest"]
    again, _ = melodies.stream_to_notes(stream)
    assert melodies.notes_to_events(again, 32).tolist() == TUNE_EVENTS
    # and through the text the sequence VAE reads: one character per step
    text = melodies.events_to_text(events)
    assert len(text) == 32 and text[:5] == "T---V" and text[16] == "."
    assert melodies.text_to_events(text).tolist() == TUNE_EVENTS
    assert melodies.text_to_events(text[:20], 32).tolist() == TUNE_EVENTS[:20] + [HOLD] * 12


def test_a_melody_from_music21_notes_survives_a_midi_file(tmp_path):
    stream = music21.stream.Stream()
    for pitch, length in [(60, 1.0), (64, 0.5), (67, 0.25), (72, 2.25)]:
        stream.append(music21.note.Note(pitch, quarterLength=length))
    stream.insert(5.0, music21.note.Note(65, quarterLength=1.0))  # after a rest of 1 quarter
    notes, _ = melodies.stream_to_notes(stream)
    assert notes == [Note(60, 0, 4), Note(64, 4, 6), Note(67, 6, 7), Note(72, 7, 16),
                     Note(65, 20, 24)]
    events = melodies.notes_to_events(notes, 24)
    path = melodies.write_midi([events], tmp_path / "m.mid")
    back, _ = melodies.stream_to_notes(music21.converter.parse(str(path)))
    assert melodies.notes_to_events(back, 24).tolist() == events.tolist()


def test_every_event_sequence_is_a_melody_with_one_canonical_form():
    # a HOLD or NOTE_OFF before any note is silence; a NOTE_OFF during silence changes nothing
    events = [HOLD, NOTE_OFF, note_on(60), HOLD, NOTE_OFF, NOTE_OFF, note_on(62)]
    assert melodies.events_to_notes(events) == [Note(60, 2, 4), Note(62, 6, 7)]
    canonical = [HOLD, HOLD, note_on(60), HOLD, NOTE_OFF, HOLD, note_on(62)]
    assert melodies.notes_to_events(melodies.events_to_notes(events), 7).tolist() == canonical
    with pytest.raises(ValueError, match="event id 130 at step 1 is outside 0..129"):
        melodies.events_to_notes([note_on(60), 130])
    with pytest.raises(ValueError, match="pitch 30 at step 0 cannot be written as text"):
        melodies.events_to_text([note_on(30)])


def test_a_g_major_tune_moves_into_the_white_keys_near_g4():
    g_major = [Note(p, 2 * i, 2 * i + 2) for i, p in enumerate([67, 69, 71, 72, 74, 76, 78])]
    # only +5 (mod 12) maps G major's pitch classes onto C major's; the mean pitch 72.43 + 5 =
    # 77.43 is then moved down an octave to 65.43, within 6 semitones of 67
    assert melodies.key_shift(g_major) == 5 - 12
    moved = melodies.transpose(g_major, 5 - 12)
    assert all(n.pitch % 12 in melodies.SCALE for n in moved)
    c_major = [n._replace(pitch=p) for n, p in zip(g_major, [60, 62, 64, 65, 67, 69, 71])]
    assert melodies.key_shift(c_major) == 0


def test_statistics_match_a_hand_computation():
    first = melodies.notes_to_events([Note(60, 0, 4), Note(61, 4, 8)], 16)  # C, C#
    second = melodies.notes_to_events([Note(62, 0, 2), Note(66, 2, 4), Note(71, 8, 16)], 16)
    empty = np.full(16, HOLD)
    stats = melodies.melody_statistics(np.stack([first, second, empty]))
    # in scale: 60 yes, 61 no, 62 yes, 66 (F#) no, 71 (B) yes -> 3 of 5 notes
    assert stats["in_scale"] == pytest.approx(3 / 5)
    assert stats["pitch_range"] == pytest.approx((1 + 9) / 2)  # melodies with notes only
    assert stats["notes_per_bar"] == pytest.approx((2 + 3 + 0) / 3)  # 16 steps = one bar
    assert stats["mean_pitch"] == pytest.approx((60 + 61 + 62 + 66 + 71) / 5)
    assert stats["mean_note_steps"] == pytest.approx((4 + 4 + 2 + 2 + 8) / 5)
    assert stats["silent_share"] == pytest.approx((8 + 4 + 16) / 48)
    assert stats["empty"] == pytest.approx(1 / 3)


def tunes(count, seed=0):
    """``count`` four-bar tunes in ABC (L:1/16), random steps through C D E F G A (so every
    tune stays in C and in its octave, and the training tunes hold every pitch)."""
    rng = np.random.default_rng(seed)
    scale = "CDEFGA"
    out = []
    for i in range(count):
        bars, pos = [], int(rng.integers(3, 7))
        for _ in range(4):
            lengths = rng.permutation([2, 2, 4, 4, 4])  # 16 units = one 4/4 bar
            notes = []
            for length in lengths:
                pos = int(np.clip(pos + rng.integers(-2, 3), 0, len(scale) - 1))
                notes.append(f"{scale[pos]}{length}")
            bars.append(" ".join(notes))
        out.append((f"tune{i}", parse_abc(f"X:{i + 1}\nM:4/4\nL:1/16\nK:C\n"
                                          + " | ".join(bars) + " |\n")))
    return out


def test_windows_start_on_downbeats_and_the_split_keeps_each_tune_on_one_side(tmp_path):
    data = melodies.melodies_from_streams(tunes(6), num_steps=32, min_notes=4)
    assert data.events_NxT.shape == (12, 32) and data.info["windows"] == 12
    assert data.tune_N.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    assert all(e[0] >= melodies.NUM_SPECIAL_EVENTS for e in data.events_NxT)  # a note on beat 1
    train, test = melodies.split_by_tune(data.tune_N, 0.34, seed=0)
    assert sorted(train.tolist() + test.tolist()) == list(range(12))
    assert not set(data.tune_N[train]) & set(data.tune_N[test]) and len(test) == 4
    assert all(np.array_equal(a, b) for a, b in
               zip(melodies.split_by_tune(data.tune_N, 0.34, seed=0), (train, test)))
    path = tmp_path / "m.npz"
    melodies.write_cache(path, data)
    back = melodies.read_cache(path)
    np.testing.assert_array_equal(back.events_NxT, data.events_NxT)
    assert back.names == data.names and back.info["windows"] == 12


def test_music_script_trains_and_writes_samples_midi_and_a_piano_roll(tmp_path, capsys):
    from experiments import music
    data_dir = tmp_path / "data"
    data = melodies.melodies_from_streams(tunes(8, seed=1), num_steps=32, min_notes=4)
    melodies.write_cache(melodies.cache_path(data_dir, "folk", 32, 4, 8), data)
    outdir = tmp_path / "run"
    argv = ["--max-tunes", "8", "--data-dir", str(data_dir), "--test-fraction", "0.25",
            "--epochs", "1", "--batch-size", "4", "--embed-dim", "4", "--hidden-dim", "8",
            "--latent-dim", "2", "--warmup-steps", "1", "--num-samples", "3",
            "--midi-samples", "3", "--interpolation-steps", "3", "--quiet",
            "--outdir", str(outdir)]
    assert music.main(argv) == 0
    for name in ("samples.mid", "interpolation.mid"):
        assert (outdir / name).read_bytes().startswith(b"MThd")
    assert (outdir / "pianoroll.png").read_bytes().startswith(b"\x89PNG")
    results = json.loads((outdir / "results.json").read_text())
    assert results["train_melodies"] == 12 and results["test_melodies"] == 4
    assert results["train_tunes"] == 6 and results["test_tunes"] == 2
    assert set(results["statistics"]) == {"samples", "test", "train"}
    assert results["statistics"]["test"] == pytest.approx(melodies.melody_statistics(
        data.events_NxT[np.isin(data.tune_N, np.unique(
            data.tune_N[melodies.split_by_tune(data.tune_N, 0.25, 0)[1]]))]))
    assert 0 <= results["test_step_accuracy_reconstruction"] <= 1
    assert len(results["interpolation"]["path"]) == 3
    samples = (outdir / "samples.txt").read_text().splitlines()
    assert len(samples) == 3 and all(len(melodies.text_to_events(s)) == 32 for s in samples)
    assert len((outdir / "metrics.jsonl").read_text().splitlines()) == 1
    # the MIDI file holds the first samples, a bar apart
    back, _ = melodies.stream_to_notes(music21.converter.parse(str(outdir / "samples.mid")))
    first = melodies.events_to_notes(melodies.text_to_events(samples[0], 32))
    assert [n for n in back if n.start < 32] == first
    assert "wrote" in capsys.readouterr().out
    # a second run into the same directory is refused
    assert music.main(argv) == 2
    assert "already holds" in capsys.readouterr().err


def test_music_script_rejects_bad_arguments_before_reading_data(tmp_path, capsys):
    from experiments import music
    assert music.main(["--steps", "0", "--outdir", str(tmp_path / "o")]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err
    assert music.main(["--interpolation-steps", "1", "--outdir", str(tmp_path / "o")]) == 2
    assert "--interpolation-steps must be >= 2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
