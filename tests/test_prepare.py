"""Tests for samplecnn_jax.prepare: the store it writes, bad files, resume, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from samplecnn_jax import __version__, audio, datasets, prepare, store
from samplecnn_jax.datasets import demo
from samplecnn_jax.datasets.common import ClipSpec, LayoutError, Listing

REPO = Path(__file__).resolve().parents[1]


def _noise(seconds: float, rate: int, channels: int = 1, seed: int = 0) -> np.ndarray:
  shape = (int(seconds * rate), channels) if channels > 1 else (int(seconds * rate),)
  return (0.3 * np.random.default_rng(seed).standard_normal(shape)).clip(-1, 1).astype(np.float32)


@pytest.fixture
def raw(tmp_path) -> Path:
  """A `folder` dataset with split folders, every kind of bad file, and a silent one."""
  src = tmp_path / "raw"
  for folder in ("train/dog", "train/cat", "test/dog", "test/cat"):
    (src / folder).mkdir(parents=True)
  pcm = audio.to_int16(_noise(0.5, 16000, seed=1))
  sf.write(src / "train/dog/d1.wav", pcm, 16000, subtype="PCM_16")
  sf.write(src / "train/dog/d2.flac", _noise(0.75, 22050, channels=2, seed=2), 22050)
  sf.write(src / "train/dog/d3.wav", _noise(1.0, 44100, seed=3), 44100, subtype="FLOAT")
  sf.write(src / "train/cat/c1.wav", _noise(0.5, 16000, seed=4), 16000)
  sf.write(src / "train/cat/c2.wav", np.zeros(8000, np.float32), 16000)  # Silent.
  (src / "train/cat/c3.wav").write_bytes(b"")  # Empty.
  (src / "train/cat/c4.wav").write_text("not audio at all\n" * 50)  # Wrong format.
  sf.write(src / "train/cat/c5.wav", _noise(1.0, 16000, seed=5), 16000, subtype="PCM_16")
  (src / "train/cat/c5.wav").write_bytes((src / "train/cat/c5.wav").read_bytes()[:9000])
  sf.write(src / "train/loose.wav", _noise(0.1, 16000), 16000)  # Not in a class folder.
  sf.write(src / "test/dog/t1.wav", _noise(0.3, 16000, seed=6), 16000)
  sf.write(src / "test/cat/t2.ogg", _noise(0.3, 16000, seed=7), 16000)
  return src


def _run(src, out, **kwargs):
  kwargs = {"workers": 1, "shard_size": 2, "progress": False} | kwargs
  return prepare.prepare("folder", src, out, **kwargs)


def _tree(folder: Path) -> dict[str, bytes]:
  files = [path for path in folder.rglob("*") if path.is_file()]
  return {path.relative_to(folder).as_posix(): path.read_bytes() for path in files}


def test_folder_store_manifest_records_lengths_and_report(raw, tmp_path):
  out = tmp_path / "out"
  manifest = _run(raw, out)
  assert manifest == store.Manifest.read(out)
  assert manifest.format_version == store.FORMAT_VERSION
  assert manifest.dataset == "folder" and manifest.sample_rate == 16000
  assert manifest.vocabulary == ("cat", "dog") and manifest.label_type == "multi_class"
  assert manifest.source == str(raw.resolve())
  assert manifest.created_by == f"samplecnn_jax {__version__}"
  assert manifest.extra["split_method"] == "folders"  # From Listing.extra.
  report = json.loads((out / store.REPORT).read_text())
  # Warnings: the silent clip, and the class and split warnings the command prints.
  assert len(report["warnings"]) == 1
  assert (manifest.skipped, manifest.warnings) == (4, 1 + len(report["class_warnings"])
                                                   + len(report["split_warnings"])) == (4, 4)
  train = manifest.splits["train"]
  # 8 listed train clips in shards of 2: c1 c2 | c3 c4 (both bad: no shard) | c5 d1 | d2 d3.
  assert train.shards == tuple(f"train/train-{i:05d}.array_record" for i in (0, 2, 3))
  assert train.num_clips == 5 and manifest.splits["test"].num_clips == 2

  expected_lengths = {"c1": 8000, "c2": 8000, "d1": 8000, "d2": 12000, "d3": 16000}
  clips = store.ClipSource(out, "train")
  assert len(clips) == 5
  records = [clips[i] for i in range(len(clips))]
  assert [r["clip_id"] for r in records] == sorted(r["clip_id"] for r in records)
  for record in records:
    name = Path(record["source"]).stem
    class_name = record["source"].split("/")[1]
    assert record["labels"].tolist() == [manifest.vocabulary.index(class_name)]
    assert len(record["audio"]) == expected_lengths[name], name
  d1 = next(r for r in records if r["clip_id"].endswith("d1.wav"))
  np.testing.assert_array_equal(d1["audio"], sf.read(raw / "train/dog/d1.wav", dtype="int16")[0])
  lengths = np.load(out / "train" / store.CLIP_LENGTHS)
  assert lengths.dtype == np.int64
  assert lengths.tolist() == [len(r["audio"]) for r in records]
  assert train.num_samples == lengths.sum()

  report = json.loads((out / store.REPORT).read_text())
  kinds = {"empty": 1, "metadata": 1, "truncated": 1, "unsupported_format": 1}
  assert report["skipped_by_kind"] == kinds
  reasons = {Path(e["source"]).name: e["reason"] for e in report["skipped"]}
  assert reasons["c3.wav"] == "file is empty (0 bytes)"
  assert "not an audio format" in reasons["c4.wav"]
  assert "header declares" in reasons["c5.wav"]
  assert reasons["loose.wav"] == "not inside a class folder"
  assert [(e["clip_id"], e["kind"]) for e in report["warnings"]] == [("train/cat/c2.wav", "silent")]
  silent = next(r for r in records if r["clip_id"].endswith("c2.wav"))
  assert not silent["audio"].any()  # Kept: silence is valid audio.
  assert (report["num_listed"], report["num_written"]) == (10, 7)


def test_parallel_run_is_byte_identical_and_leftovers_are_cleaned(raw, tmp_path):
  _run(raw, tmp_path / "one")
  out = tmp_path / "two"
  (out / "train").mkdir(parents=True)
  (out / "train" / "train-00000.array_record.tmp").write_bytes(b"half a shard")
  (out / "train" / "train-00042.array_record").write_bytes(b"shard of an older run")
  (out / "manifest.json.tmp").write_text("{")
  _run(raw, out, workers=2)
  assert _tree(out) == _tree(tmp_path / "one")
  assert not list(out.rglob("*.tmp"))


class _Crash(Exception):
  pass


def _counting(monkeypatch, crash_after: int | None = None) -> list:
  calls, real = [], prepare.prepare_clip

  def counted(spec, *args):
    if crash_after is not None and len(calls) == crash_after:
      raise _Crash(f"simulated kill before clip {spec.clip_id}")
    calls.append(spec.clip_id)
    return real(spec, *args)

  monkeypatch.setattr(prepare, "prepare_clip", counted)
  return calls


def test_resume_after_interruption_equals_a_clean_run(raw, tmp_path, monkeypatch):
  clean = tmp_path / "clean"
  _run(raw, clean)
  out = tmp_path / "out"
  with monkeypatch.context() as patch:
    _counting(patch, crash_after=5)  # Dies inside shard 2 of train.
    with pytest.raises(_Crash):
      _run(raw, out)
  assert not (out / store.MANIFEST).exists()
  assert (out / "train/train-00002.array_record.tmp").exists()
  with monkeypatch.context() as patch:
    calls = _counting(patch)
    _run(raw, out)
  assert calls == ["train/cat/c5.wav", "train/dog/d1.wav", "train/dog/d2.flac", "train/dog/d3.wav",
                   "test/cat/t2.ogg", "test/dog/t1.wav"]  # fmt: skip
  assert _tree(out) == _tree(clean)

  # A damaged shard and a lost sidecar are redone; everything else is kept.
  shard = out / "train/train-00003.array_record"
  shard.write_bytes(shard.read_bytes()[:100])
  (out / prepare.PROGRESS_DIR / "test-00000.json").unlink()
  with monkeypatch.context() as patch:
    calls = _counting(patch)
    _run(raw, out)
  assert calls == ["train/dog/d2.flac", "train/dog/d3.wav", "test/cat/t2.ogg", "test/dog/t1.wav"]
  assert _tree(out) == _tree(clean)


def test_changed_inputs_are_not_resumed_from_old_shards(tmp_path):
  options = {"num_train": 6, "num_valid": 2, "num_test": 2, "workers": 1, "progress": False}
  out = tmp_path / "out"
  prepare.prepare("demo", None, out, seed=0, shard_size=4, **options)
  prepare.prepare("demo", None, out, seed=1, shard_size=3, **options)
  prepare.prepare("demo", None, tmp_path / "clean", seed=1, shard_size=3, **options)
  assert _tree(out) == _tree(tmp_path / "clean")


def test_demo_records_match_the_listing(tmp_path):
  manifest = prepare.prepare(
      "demo", None, tmp_path, workers=1, progress=False, shard_size=4,
      num_train=9, num_valid=3, num_test=2,
  )  # fmt: skip
  assert manifest.vocabulary == demo.CLASSES and manifest.label_type == "multi_label"
  assert [manifest.splits[s].num_clips for s in ("train", "valid", "test")] == [9, 3, 2]
  assert manifest.source is None and manifest.options["num_train"] == 9
  listing = demo.list_clips(num_train=9, num_valid=3, num_test=2)
  specs = {clip.clip_id: clip for clip in listing.clips}
  for split in ("train", "valid", "test"):
    clips = store.ClipSource(tmp_path, split)
    for i in range(len(clips)):
      record = clips[i]
      spec = specs[record["clip_id"]]
      assert tuple(record["labels"].tolist()) == spec.labels and spec.split == split
      np.testing.assert_array_equal(record["audio"], audio.to_int16(listing.synthesize(spec)))


def test_crops_with_offset_and_duration_and_synthesised_clips(tmp_path, monkeypatch):
  long_pcm = audio.to_int16(_noise(3.0, 16000, seed=9))
  sf.write(tmp_path / "long.wav", long_pcm, 16000, subtype="PCM_16")
  path = str(tmp_path / "long.wav")
  tone = np.sin(np.arange(4000) / 5).astype(np.float32) * 0.5

  def lister(src, **options):
    assert options == {"crop": "yes"}
    return Listing(
        name="crops",
        vocabulary=["noise", "tone"],
        label_type="multi_label",
        clips=[
            ClipSpec("n0", path, "train", (0,), offset=0.0, duration=1.0, source="long.wav"),
            ClipSpec("n1", path, "train", (0,), offset=2.5, duration=1.0, source="long.wav"),
            ClipSpec("n2", path, "train", (0,), offset=3.5, duration=1.0, source="long.wav"),
            ClipSpec("syn", "", "train", (1,)),
        ],
        skipped=[{"source": "meta.csv:7", "reason": "unknown tag"}],
        synthesize=lambda spec: tone,
    )

  monkeypatch.setattr(datasets, "get_lister", lambda name: lister)
  monkeypatch.setattr(datasets, "get_module", lambda name: types.SimpleNamespace())
  out = tmp_path / "out"
  manifest = prepare.prepare("crops", tmp_path, out, workers=1, progress=False, crop="yes")
  records = {r["clip_id"]: r for r in (store.ClipSource(out, "train")[i] for i in range(3))}
  np.testing.assert_array_equal(records["n0"]["audio"], long_pcm[:16000])
  np.testing.assert_array_equal(records["n1"]["audio"], long_pcm[40000:])  # To the end.
  np.testing.assert_array_equal(records["syn"]["audio"], audio.to_int16(tone))
  assert records["syn"]["labels"].tolist() == [1]
  report = json.loads((out / store.REPORT).read_text())
  assert [(e["source"], e["kind"]) for e in report["skipped"]] == [
      ("meta.csv:7", "metadata"), ("long.wav", "invalid")
  ]  # fmt: skip
  assert manifest.skipped == 2


def test_listing_mistakes_are_caught_before_decoding(tmp_path, monkeypatch):
  def listing(clips):
    return Listing("bad", ["a"], "multi_class", clips)

  twice = [ClipSpec("x", "/a.wav", "train", (0,)), ClipSpec("x", "/b.wav", "train", (0,))]
  cases = [
      (listing(twice), ValueError, "twice"),
      (listing([ClipSpec("x", "/a.wav", "train", (1,))]), ValueError, "outside the vocabulary"),
      (listing([ClipSpec("x", "/a.wav", "fold 1", (0,))]), LayoutError, "split name"),
      (listing([ClipSpec("x", "", "train", (0,))]), ValueError, "cannot synthesise"),
      (listing([]), LayoutError, "no clips"),
  ]  # fmt: skip
  monkeypatch.setattr(datasets, "get_module", lambda name: types.SimpleNamespace())
  for result, error, message in cases:
    monkeypatch.setattr(datasets, "get_lister", lambda name, result=result: lambda src: result)
    with pytest.raises(error, match=message):
      prepare.prepare("bad", tmp_path, tmp_path / "out", workers=1, progress=False)


def test_cli_demo_passes_dataset_flags(tmp_path, capsys):
  argv = ["prepare", "demo", "--out", str(tmp_path), "--num_train", "5", "--num_valid", "1",
          "--num_test", "1", "--seed", "7", "--workers", "1", "--quiet"]  # fmt: skip
  assert prepare.main(argv) == 0
  manifest = store.Manifest.read(tmp_path)
  assert manifest.options["seed"] == 7 and manifest.extra["generator"]["seed"] == 7
  # The dataset's flags only, in their order: what the resume fingerprints always hashed.
  assert list(manifest.options.items()) == [
      ("seed", 7), ("num_train", 5), ("num_valid", 1), ("num_test", 1), ("clip_seconds", 2.0)
  ]  # fmt: skip
  assert manifest.splits["train"].num_clips == 5
  assert "train: 5 clips" in capsys.readouterr().out


def test_cli_layout_errors_exit_2_in_one_line(tmp_path, capsys):
  assert prepare.main(["prepare", "folder", "--out", str(tmp_path / "o"), "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "needs --src" in err and len(err.strip().splitlines()) == 1
  (tmp_path / "empty").mkdir()
  argv = ["prepare", "folder", "--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]
  assert prepare.main(argv) == 2
  err = capsys.readouterr().err
  assert "expected one sub-folder per class" in err and len(err.strip().splitlines()) == 1
  assert not (tmp_path / "o" / store.MANIFEST).exists()


@pytest.mark.parametrize("argv, expected", [
    ([], "name the dataset first"),
    (["--out", "o"], "name the dataset first"),
    (["nope", "--out", "o"], "unknown dataset 'nope'. Valid datasets: mtat, speech_commands"),
    (["demo"], "--out is missing"),
    (["demo", "--out", "o", "--bogus=1"], "Unknown command line flag 'bogus'"),
    (["demo", "--out", "o", "--num-train", "3"], "Unknown command line flag 'num-train'"),
    (["demo", "--out", "o", "--num_train", "many"], "--num_train"),
    (["demo", "--out", "o", "--shard_size", "0"], "--shard_size"),
    (["demo", "--out", "o", "extra"], "unexpected arguments ['extra']"),
    (["folder", "--out", "o", "--label_type", "auto"], "Unknown command line flag 'label_type'"),
    (["folder", "--out", "o", "--valid_fraction", "1.5"], "--valid_fraction=1.5: must be in"),
    (["dcase2017", "--out", "o", "--split_rule", "x"], "--split_rule"),
])  # fmt: skip
def test_cli_usage_errors_exit_2_in_one_line(tmp_path, capsys, monkeypatch, argv, expected):
  monkeypatch.chdir(tmp_path)
  assert prepare.main(["prepare", *argv]) == 2
  err = capsys.readouterr().err
  assert expected in err and err.count("\n") == 1, err
  assert err.startswith("python -m samplecnn_jax.prepare")
  assert not (tmp_path / "o").exists()


def test_cli_help_lists_the_chosen_datasets_flags(capsys):
  assert prepare.main(["prepare", "demo", "--help"]) == 0
  text = capsys.readouterr().out
  assert "--num_train" in text and "--out" in text and "--split_rule" not in text
  assert prepare.main(["prepare", "dcase2017", "--help"]) == 0
  text = capsys.readouterr().out
  assert "--split_rule" in text and "--num_train" not in text
  assert prepare.main(["prepare", "--help"]) == 0
  text = capsys.readouterr().out
  assert "--src" in text and "mtat, speech_commands, dcase2017, folder, csv, demo" in text


@pytest.mark.slow
def test_cli_subprocess_exit_codes_without_traceback(tmp_path):
  (tmp_path / "empty").mkdir()
  result = subprocess.run(
      [sys.executable, "-m", "samplecnn_jax.prepare", "folder", "--src", str(tmp_path / "empty"),
       "--out", str(tmp_path / "o")],
      capture_output=True, text=True, cwd=REPO, timeout=120,
  )  # fmt: skip
  assert result.returncode == 2
  assert "expected one sub-folder per class" in result.stderr
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "o" / store.MANIFEST).exists()
  result = subprocess.run(
      [sys.executable, "-m", "samplecnn_jax.prepare", "demo", "--out", str(tmp_path / "d"),
       "--num_train", "3", "--num_valid", "1", "--num_test", "1", "--workers", "1", "--quiet",
       "--min_class_clips", "0"],
      capture_output=True, text=True, cwd=REPO, timeout=300,
  )  # fmt: skip
  assert result.returncode == 0, result.stderr
  assert store.Manifest.read(tmp_path / "d").splits["train"].num_clips == 3


def _non_utf8(folder: Path, stem: bytes) -> Path:
  """`folder/<stem>` as os.fsdecode gives it; skips where the file system refuses the name."""
  path = os.path.join(os.fsencode(folder), stem)
  try:
    open(path, "wb").close()
  except OSError as e:
    pytest.skip(f"this file system refuses non-UTF-8 names: {e}")
  return Path(os.fsdecode(path))


def test_non_utf8_file_names_are_prepared_and_round_trip(tmp_path, capsys):
  """Issue 10 item 7: such a name aborted `prepare folder` (exit 2) and its audio was
  'corrupt'; now it is read, and the store and report give its bytes back via fsencode."""
  src = tmp_path / "raw"
  for folder in ("train/dog", "train/cat", "test/dog", "test/cat"):
    (src / folder).mkdir(parents=True)
    for i in range(2):
      sf.write(src / folder / f"{i}.wav", _noise(0.2, 16000, seed=i), 16000)
  good = _non_utf8(src / "train/dog", b"caf\xe9.wav")
  pcm = audio.to_int16(_noise(0.3, 16000, seed=9))
  sf.write(os.fsencode(good), pcm, 16000, subtype="PCM_16")
  _non_utf8(src / "train/cat", b"\xff\xfe.wav").write_bytes(b"not audio" * 100)
  out = tmp_path / "out"
  argv = ["prepare", "folder", "--src", str(src), "--out", str(out), "--workers", "1", "--quiet",
          "--min_class_clips", "1"]  # fmt: skip
  assert prepare.main(argv) == 0, capsys.readouterr().err
  clips = store.ClipSource(out, "train")
  records = {os.fsencode(clips[i]["source"]): clips[i] for i in range(len(clips))}
  np.testing.assert_array_equal(records[b"train/dog/caf\xe9.wav"]["audio"], pcm)
  assert os.fsencode(records[b"train/dog/caf\xe9.wav"]["clip_id"]) == b"train/dog/caf\xe9.wav"
  report = json.loads((out / store.REPORT).read_text())  # ASCII JSON with \udcXX escapes.
  [bad] = report["skipped"]
  assert os.fsencode(bad["source"]) == b"train/cat/\xff\xfe.wav"
  assert bad["kind"] == "unsupported_format"
  assert (src / os.fsdecode(os.fsencode(bad["source"]))).exists()


def _classes(tmp_path, files: dict[str, str]) -> Path:
  """A split-folder dataset: {relative path: 'ok' | 'bad'}."""
  src = tmp_path / "raw"
  for i, (relative, state) in enumerate(sorted(files.items())):
    (src / relative).parent.mkdir(parents=True, exist_ok=True)
    if state == "ok":
      sf.write(src / relative, _noise(0.2, 16000, seed=i), 16000)
    else:
      (src / relative).write_text("this is no audio file\n" * 20)
  return src


def test_a_split_or_class_with_no_clip_left_fails_with_the_counts(tmp_path, capsys):
  """Issue 10 item 8: such a store used to be written, and the CLI exited 0."""
  files = {f"train/dog/d{i}.wav": "ok" for i in range(6)}
  files |= {f"train/cat/c{i}.wav": "bad" for i in range(3)}
  files |= {"test/dog/t0.wav": "bad", "test/cat/t1.wav": "bad"}
  src = _classes(tmp_path, files)
  out = tmp_path / "out"
  with pytest.raises(prepare.UnusableStoreError) as info:
    _run(src, out)
  message = str(info.value)
  assert "split 'test': none of its 2 clips could be read" in message
  assert "class 'cat': every one of its 4 files was skipped" in message
  assert "train 6/9, test 0/2" in message and "unsupported_format 5" in message
  assert not (out / store.MANIFEST).exists()
  report = json.loads((out / store.REPORT).read_text())
  assert report["num_skipped"] == 5 and len(report["skipped"]) == 5  # Every reason kept.
  assert all(entry["reason"] for entry in report["skipped"])
  assert report["counts"]["splits"] == {"train": {"listed": 9, "written": 6},
                                        "test": {"listed": 2, "written": 0}}
  assert report["counts"]["classes"]["cat"] == {"listed": {"train": 3, "test": 1},
                                                "written": {"train": 0, "test": 0}}
  argv = ["prepare", "folder", "--src", str(src), "--out", str(out), "--workers", "1", "--quiet"]
  assert prepare.main(argv) == 1
  err = capsys.readouterr().err
  assert "unusable" in err and "class 'cat'" in err and "Traceback" not in err


def test_a_class_with_few_train_clips_is_a_warning_that_names_it(tmp_path, capsys):
  files = {f"train/dog/d{i}.wav": "ok" for i in range(6)}
  files |= {"train/cat/c0.wav": "ok", "train/cat/c1.wav": "bad", "train/cat/c2.wav": "bad"}
  files |= {"test/dog/t0.wav": "ok", "test/cat/t1.wav": "ok"}
  src = _classes(tmp_path, files)
  out = tmp_path / "out"
  argv = ["prepare", "folder", "--src", str(src), "--out", str(out), "--workers", "1", "--quiet"]
  assert prepare.main(argv) == 0
  out_text, err = capsys.readouterr()
  assert "warning: class 'cat' has only 1 train clips (fewer than 5)" in err
  assert "'dog'" not in err
  report = json.loads((out / store.REPORT).read_text())
  assert len(report["class_warnings"]) == 1 and "'cat'" in report["class_warnings"][0]
  assert report["errors"] == [] and report["num_skipped"] == 2
  # The summary counts the warnings it printed (issue 22: it said "warnings 0"): the class
  # and the missing valid split.
  assert err.count("warning: ") == 2 and "no 'valid' split" in err
  assert report["num_warnings"] == 2 and store.Manifest.read(out).warnings == 2
  assert "skipped 2, warnings 2 " in out_text


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile lacks MP3")
def test_a_file_fixed_after_being_reported_is_read_again(tmp_path):
  """Issue 10 item 9: the reason says what is wrong, and a later run re-reads the fixed file
  (the shard fingerprint has each file's size and mtime, not only its name)."""
  files = {f"train/dog/d{i}.wav": "ok" for i in range(3)}
  files |= {f"train/cat/c{i}.wav": "ok" for i in range(3)}
  src = _classes(tmp_path, files)
  song = src / "train/cat/song.mp3"
  song.write_bytes(np.random.default_rng(0).bytes(5000))
  out = tmp_path / "out"
  _run(src, out, shard_size=16, min_class_clips=1)
  [entry] = json.loads((out / store.REPORT).read_text())["skipped"]
  assert entry["source"] == "train/cat/song.mp3"
  assert entry["reason"].startswith("not a readable audio file (mp3 decoder:"), entry
  sf.write(song, _noise(1.0, 16000, seed=3), 16000, format="MP3")  # The fix.
  manifest = _run(src, out, shard_size=16, min_class_clips=1)
  assert manifest.skipped == 0 and manifest.splits["train"].num_clips == 7
  clips = store.ClipSource(out, "train")
  assert "train/cat/song.mp3" in {clips[i]["clip_id"] for i in range(len(clips))}


def test_broken_symlinks_are_reported_with_their_target(tmp_path):
  """Issue 10 item 10: a dangling link is a skipped file with a reason, never dropped."""
  files = {f"train/dog/d{i}.wav": "ok" for i in range(2)}
  files |= {f"train/cat/c{i}.wav": "ok" for i in range(2)}
  src = _classes(tmp_path, files)
  (src / "train/dog/link.wav").symlink_to(tmp_path / "nowhere.wav")
  (src / "train/bird").symlink_to(tmp_path / "bird_folder_moved")  # A class folder link.
  out = tmp_path / "out"
  _run(src, out, min_class_clips=1)
  reasons = {e["source"]: e["reason"] for e in json.loads((out / store.REPORT).read_text())["skipped"]}
  assert reasons["train/dog/link.wav"].startswith("broken symbolic link")
  assert "nowhere.wav" in reasons["train/dog/link.wav"]
  assert "bird_folder_moved" in reasons["train/bird"]
