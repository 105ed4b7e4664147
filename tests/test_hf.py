"""Tests for samplecnn_jax.datasets.hf: save_to_disk and parquet datasets, offline."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
import soundfile as sf
from datasets import Audio, ClassLabel, Dataset, DatasetDict, Sequence

from samplecnn_jax import audio, prepare, store

RATES = (8000, 22050, 16000, 44100)  # Mixed sample rates, resampled to 16 kHz by prepare.
NAMES = ["dog", "cat", "bird"]  # ClassLabel order, deliberately not sorted.


def _tone(i: int, rate: int) -> np.ndarray:
  t = np.arange(int(0.25 * rate)) / rate
  return (0.3 * np.sin(2 * np.pi * (300 + 50 * i) * t)).astype(np.float32)


def _wav(samples: np.ndarray, rate: int) -> bytes:
  buffer = io.BytesIO()
  sf.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
  return buffer.getvalue()


def _split(offset: int, count: int, labels: list, bad_row: int | None = None) -> Dataset:
  cells = []
  for i in range(offset, offset + count):
    rate = RATES[i % 4]
    data = b"not audio at all" if i - offset == bad_row else _wav(_tone(i, rate), rate)
    cells.append({"bytes": data, "path": f"clip{i}.wav"})
  return Dataset.from_dict({
      "audio": cells, "label": labels, "id": [f"c{i:02d}" for i in range(offset, offset + count)]
  }).cast_column("audio", Audio(decode=False))


def _expected(i: int) -> np.ndarray:
  """What prepare should store for clip i: decoded, resampled to 16 kHz, int16."""
  rate = RATES[i % 4]
  decoded = sf.read(io.BytesIO(_wav(_tone(i, rate), rate)), dtype="float32")[0]
  return audio.to_int16(audio.resample(decoded, rate, 16000))


def _records(out, split: str) -> dict[str, dict]:
  clips = store.ClipSource(out, split)
  return {record["clip_id"]: record for record in (clips[i] for i in range(len(clips)))}


def _run(src, out, **options):
  return prepare.prepare("hf", src, out, workers=1, progress=False, shard_size=3, **options)


def test_dataset_dict_round_trip_with_class_labels_and_a_bad_row(tmp_path):
  label = ClassLabel(names=NAMES)
  parts = {
      "train": _split(0, 6, [0, 1, 2, 0, 1, 2], bad_row=5),
      "validation": _split(6, 3, [0, 1, 2]),
      "test": _split(9, 3, [2, 1, 0]),
  }
  DatasetDict({k: v.cast_column("label", label) for k, v in parts.items()}).save_to_disk(
      tmp_path / "ds"
  )
  before = sorted(path.name for path in (tmp_path / "ds").rglob("*"))
  manifest = _run(tmp_path / "ds", tmp_path / "out")
  assert sorted(path.name for path in (tmp_path / "ds").rglob("*")) == before  # No cache files.
  assert manifest.vocabulary == tuple(NAMES) and manifest.label_type == "multi_class"
  assert list(manifest.splits) == ["train", "valid", "test"]
  assert [manifest.splits[s].num_clips for s in manifest.splits] == [5, 3, 3]
  report = json.loads((tmp_path / "out" / store.REPORT).read_text())
  assert [(e["clip_id"], e["kind"]) for e in report["skipped"]] == [("c05", "unsupported_format")]
  assert report["skipped"][0]["source"].startswith("train[5] ")
  labels = {"train": [0, 1, 2, 0, 1], "valid": [0, 1, 2], "test": [2, 1, 0]}
  first = {"train": 0, "valid": 6, "test": 9}
  for split, expected_labels in labels.items():
    records = _records(tmp_path / "out", split)
    ids = [f"c{first[split] + k:02d}" for k in range(len(expected_labels))]
    assert sorted(records) == ids
    for clip_id, want in zip(ids, expected_labels, strict=True):
      assert records[clip_id]["labels"].tolist() == [want]
      np.testing.assert_allclose(records[clip_id]["audio"], _expected(int(clip_id[1:])), atol=1)


@pytest.mark.parametrize("class_labels", [False, True], ids=["strings", "class_labels"])
def test_one_dataset_with_split_column_and_multi_labels(tmp_path, class_labels):
  tags = [["car", "horn"], ["horn"], [], ["car"], ["siren", "car"]]
  dataset = _split(0, 5, tags).remove_columns("id").add_column(
      "split", ["train", "train", "valid", "test", "train"]
  )
  if class_labels:  # Lists of ClassLabel indices; the names are the vocabulary, in order.
    dataset = dataset.cast_column("label", Sequence(ClassLabel(names=["car", "horn", "siren"])))
  dataset.save_to_disk(tmp_path / "ds")
  manifest = _run(tmp_path / "ds", tmp_path / "out")
  assert manifest.vocabulary == ("car", "horn", "siren") and manifest.label_type == "multi_label"
  assert [manifest.splits[s].num_clips for s in ("train", "valid", "test")] == [3, 1, 1]
  train = _records(tmp_path / "out", "train")
  assert sorted(train) == ["train-0", "train-1", "train-4"]  # <split>-<row> without an id column.
  assert train["train-0"]["labels"].tolist() == [0, 1]  # Indices into the vocabulary.
  assert train["train-4"]["labels"].tolist() == [0, 2]
  np.testing.assert_allclose(train["train-4"]["audio"], _expected(4), atol=1)
  assert _records(tmp_path / "out", "valid")["valid-2"]["labels"].tolist() == []


def test_parquet_files_named_by_split(tmp_path):
  label = ClassLabel(names=NAMES)
  (tmp_path / "data").mkdir()
  for name, part in {"train": _split(0, 3, [0, 1, 2]), "test": _split(3, 3, [2, 2, 0])}.items():
    path = tmp_path / "data" / f"{name}-00000-of-00001.parquet"
    part.cast_column("label", label).to_parquet(path)
  manifest = _run(tmp_path, tmp_path / "out")
  assert manifest.vocabulary == tuple(NAMES)
  assert {s: info.num_clips for s, info in manifest.splits.items()} == {"train": 3, "test": 3}
  test = _records(tmp_path / "out", "test")
  assert test["c05"]["labels"].tolist() == [0]
  np.testing.assert_allclose(test["c04"]["audio"], _expected(4), atol=1)


def test_missing_column_is_one_line_naming_the_columns(tmp_path, capsys):
  _split(0, 2, ["a", "b"]).add_column("split", ["train", "test"]).save_to_disk(tmp_path / "ds")
  argv = ["prepare", "hf", "--src", str(tmp_path / "ds"), "--out", str(tmp_path / "o"),
          "--label_column", "genre", "--quiet"]  # fmt: skip
  assert prepare.main(argv) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1
  assert "no column 'genre' (its columns: audio, label, id, split); pass --label_column" in err
  assert not (tmp_path / "o" / store.MANIFEST).exists()


def test_one_dataset_without_split_column_names_the_flag(tmp_path):
  _split(0, 2, ["a", "b"]).save_to_disk(tmp_path / "ds")
  with pytest.raises(prepare.LayoutError, match="pass --split_column"):
    _run(tmp_path / "ds", tmp_path / "out")


def test_resumed_run_rereads_rows_whose_bytes_changed(tmp_path):
  label = ClassLabel(names=NAMES)
  for version in (0, 1):  # The second save gives row 1 the audio of clip 7.
    part = _split(0, 3, [0, 1, 2])
    if version:
      cells = part.with_format("arrow")["audio"].to_pylist()
      cells[1] = {"bytes": _wav(_tone(7, RATES[3]), RATES[3]), "path": None}
      part = part.remove_columns("audio").add_column("audio", cells)
      part = part.cast_column("audio", Audio(decode=False))
    splits = {"train": part, "test": _split(3, 1, [0])}
    shutil.rmtree(tmp_path / "ds", ignore_errors=True)  # The same folder, saved again.
    DatasetDict({k: v.cast_column("label", label) for k, v in splits.items()}).save_to_disk(
        tmp_path / "ds"
    )
    _run(tmp_path / "ds", tmp_path / "out")
  train = _records(tmp_path / "out", "train")
  np.testing.assert_allclose(train["c01"]["audio"], _expected(7), atol=1)
  np.testing.assert_allclose(train["c02"]["audio"], _expected(2), atol=1)
