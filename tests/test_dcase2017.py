"""Tests of the DCASE 2017 Task 4 listing, on the real ground truth and on fixture files."""

from __future__ import annotations

import collections
import csv
import gzip
from pathlib import Path

import numpy as np
import pytest
import soundfile

from samplecnn_jax.datasets import dcase2017
from samplecnn_jax.datasets.common import LayoutError

TRAIN_AUDIO = "unbalanced_train_segments_training_set_audio_formatted_and_segmented_downloads"
TEST_AUDIO = "unbalanced_train_segments_testing_set_audio_formatted_and_segmented_downloads"


@pytest.fixture
def metadata(shared_data: Path) -> Path:
  return shared_data / "metadata" / "dcase2017_task4"


def ground_truth_path(metadata: Path, name: str) -> Path:
  return next(metadata.rglob(name + "*"))


def test_vocabulary_is_the_official_class_list_order(metadata: Path):
  lines = (metadata / "sound_event_list_17_classes.txt").read_text().splitlines()[1:]
  assert list(dcase2017.VOCABULARY) == [line.split("\t")[2] for line in lines]


def test_real_weak_labels_parse(metadata: Path):
  expected = {"training": (56131, 51172), "testing": (606, 488), "evaluation": (1350, 1103)}
  labels_per_file = {}
  for name, (num_rows, num_files) in expected.items():
    path = ground_truth_path(metadata, dcase2017.GROUND_TRUTH[name])
    rows, skipped = dcase2017.read_weak_labels(path)
    assert skipped == [] and len(rows) == num_rows
    files = collections.Counter(file for file, _ in rows)
    assert len(files) == num_files and all(file.endswith(".wav") for file in files)
    labels_per_file[name] = collections.Counter(files.values())
  assert labels_per_file["training"] == {1: 46534, 2: 4331, 3: 296, 4: 9, 5: 1, 6: 1}


@pytest.mark.parametrize("name", ["training", "testing"])
def test_real_class_counts_match_the_official_tables(metadata: Path, name: str):
  """Class names with commas ("Air horn, truck horn") parse whole: per-class file counts
  equal the organisers' `<set>_num_files_per_class.csv`."""
  rows, _ = dcase2017.read_weak_labels(ground_truth_path(metadata, dcase2017.GROUND_TRUTH[name]))
  counts = collections.Counter(dcase2017.VOCABULARY[label] for _, label in rows)
  with open(metadata / f"{name}_set_num_files_per_class.csv", newline="") as f:
    official = {label: int(count) for label, count in csv.reader(f)}
  assert counts == official and len(official) == 17


def test_real_split_counts_without_audio(metadata: Path, tmp_path: Path):
  """Both split rules on the real metadata; the saudio rule matches the authors' 46,042 / 5,618."""
  paper = dcase2017.list_clips(tmp_path, metadata_dir=str(metadata))
  assert paper.extra["listed_files"] == {"train": 45618, "valid": 5554, "test": 488}
  assert paper.clips == [] and len(paper.skipped) == 51172 + 488
  saudio = dcase2017.list_clips(tmp_path, split_rule="saudio", metadata_dir=str(metadata))
  assert saudio.extra["listed_files"] == {"train": 46042, "valid": 5618, "test": 1103}
  assert saudio.skipped[0]["reason"] == (
      "listed in groundtruth_weak_label_training_set.csv, not found under src"
  )


def test_validation_sample_is_per_class_and_seeded():
  rows = [(f"a{i}.wav", 0) for i in range(20)] + [(f"b{i}.wav", 1) for i in range(5)]
  rows += [("a0.wav", 1)]  # a0 is also in class 1 (6 members: round(0.5 * 6) = 3 drawn).
  chosen = dcase2017.validation_files(rows, 0.5, seed=7)
  assert dcase2017.validation_files(rows, 0.5, seed=7) == chosen
  assert dcase2017.validation_files(rows, 0.5, seed=8) != chosen
  assert len({file for file in chosen if file.startswith("a")} - {"a0.wav"}) in (9, 10)
  assert 2 <= len({file for file in chosen if file.startswith("b")}) <= 3
  assert dcase2017.validation_files(rows, 0.0, seed=7) == set()


def write_ground_truth(path: Path, rows: list[str], crlf: bool = False) -> None:
  text = "".join(row + ("\r\n" if crlf else "\n") for row in rows)
  path.parent.mkdir(parents=True, exist_ok=True)
  if path.name.endswith(".gz"):
    path.write_bytes(gzip.compress(text.encode()))
  else:
    path.write_text(text, newline="")


def write_wav(path: Path) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  soundfile.write(path, np.zeros(441, np.int16), 44100, subtype="PCM_16")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
  """A download with its metadata: 4 training files (one missing), 2 testing, 1 evaluation."""
  write_ground_truth(
      tmp_path / "groundtruth_weak_label_training_set.csv",
      [
          "-abc_30.000_40.000.wav\t30.000\t40.000\tTrain horn",
          "-abc_30.000_40.000.wav\t30.000\t40.000\tTrain",
          "def_0.000_10.000.wav\t0.000\t10.000\tFire engine, fire truck (siren)",
          "ghi_10.000_20.000.wav\t10.000\t20.000\tCar",
          "missing_0.000_10.000.wav\t0.000\t10.000\tCar",
          "bad_0.000_10.000.wav\t0.000\t10.000\tSpaceship",
          "short_row.wav\tCar",
          "",
      ],
  )
  write_ground_truth(
      tmp_path / "metadata" / "groundtruth_weak_label_testing_set.csv.gz",
      ["jkl_0.000_10.000.wav\t0.000\t10.000\tBus", "mno_0.000_10.000.wav\t0.000\t10.000\tBus"],
  )
  write_ground_truth(
      tmp_path / "groundtruth_release" / "groundtruth_weak_label_evaluation_set.csv",
      ["pqr_0.000_10.000.wav\t0.000\t10.000\tScreaming"],
      crlf=True,
  )
  for name in ("-abc_30.000_40.000", "def_0.000_10.000", "ghi_10.000_20.000"):
    write_wav(tmp_path / "audio" / TRAIN_AUDIO / f"Y{name}.wav")
  for name in ("jkl_0.000_10.000", "mno_0.000_10.000"):
    write_wav(tmp_path / "audio" / TEST_AUDIO / f"Y{name}.wav")
  write_wav(tmp_path / "evaluation_set_formatted_audio_segments" / "Ypqr_0.000_10.000.wav")
  return tmp_path


def test_fixture_paper_rule(raw: Path):
  listing = dcase2017.list_clips(raw, valid_fraction=0.5, seed=0)
  clips = {clip.clip_id: clip for clip in listing.clips}
  assert set(clips) == {
      "-abc_30.000_40.000.wav",
      "def_0.000_10.000.wav",
      "ghi_10.000_20.000.wav",
      "jkl_0.000_10.000.wav",
      "mno_0.000_10.000.wav",
  }
  names = {clip_id: [listing.vocabulary[i] for i in clip.labels] for clip_id, clip in clips.items()}
  assert names["-abc_30.000_40.000.wav"] == ["Train horn", "Train"]
  assert names["def_0.000_10.000.wav"] == ["Fire engine, fire truck (siren)"]
  assert clips["jkl_0.000_10.000.wav"].split == "test"
  assert clips["jkl_0.000_10.000.wav"].source == f"audio/{TEST_AUDIO}/Yjkl_0.000_10.000.wav"
  assert Path(clips["ghi_10.000_20.000.wav"].path).is_file()
  # round(0.5 * 1) = 0 for the three single-file classes; round(0.5 * 2) = 1 of the 2 Car files.
  assert listing.extra["listed_files"] == {"train": 3, "valid": 1, "test": 2}
  valid = [clip.clip_id for clip in listing.clips if clip.split == "valid"]
  assert set(valid) <= {"ghi_10.000_20.000.wav"}
  reasons = [(skip["source"], skip["reason"]) for skip in listing.skipped]
  assert reasons == [
      ("groundtruth_weak_label_training_set.csv:6", "unknown class 'Spaceship'"),
      ("groundtruth_weak_label_training_set.csv:7", "expected file.wav, start, end, label"),
      (
          "Ymissing_0.000_10.000.wav",
          "listed in groundtruth_weak_label_training_set.csv, not found under src",
      ),
  ]
  # Same seed, same split; the split comes from the metadata, not from the audio present.
  assert dcase2017.list_clips(raw, valid_fraction=0.5, seed=0).clips == listing.clips


def test_fixture_saudio_rule(raw: Path):
  listing = dcase2017.list_clips(raw, split_rule="saudio")
  splits = collections.Counter(clip.split for clip in listing.clips)
  assert splits["test"] == 1 and splits["train"] + splits["valid"] == 5
  (test_clip,) = [clip for clip in listing.clips if clip.split == "test"]
  assert test_clip.clip_id == "pqr_0.000_10.000.wav" and test_clip.labels == (10,)
  assert listing.extra["test_from"] == "groundtruth_weak_label_evaluation_set.csv"


def test_missing_ground_truth_is_a_layout_error(raw: Path):
  (raw / "groundtruth_release" / "groundtruth_weak_label_evaluation_set.csv").unlink()
  dcase2017.list_clips(raw)  # The paper rule does not need the evaluation set.
  with pytest.raises(LayoutError, match="groundtruth_weak_label_evaluation_set.csv"):
    dcase2017.list_clips(raw, split_rule="saudio")
  with pytest.raises(LayoutError, match="groundtruth_weak_label_training_set.csv"):
    dcase2017.list_clips(raw, metadata_dir=str(raw / "metadata"))
  with pytest.raises(ValueError, match="--valid_fraction"):
    dcase2017.list_clips(raw, valid_fraction=1.5)


def test_prepare_end_to_end(raw: Path):
  """44.1 kHz fixture clips through `prepare`: resampled to 16 kHz, multi-hot labels kept."""
  from samplecnn_jax import prepare, store

  manifest = prepare.prepare("dcase2017", raw, raw / "out", workers=1, progress=False)
  assert manifest.extra["split_rule"] == "paper" and manifest.vocabulary == dcase2017.VOCABULARY
  assert sum(info.num_clips for info in manifest.splits.values()) == 5
  assert manifest.splits["test"].num_clips == 2 and manifest.skipped == 3
  records = {}
  for split in manifest.splits:
    source = store.ClipSource(raw / "out", split)
    records.update({r["clip_id"]: r for r in (source[i] for i in range(len(source)))})
  assert records["-abc_30.000_40.000.wav"]["labels"].tolist() == [0, 16]
  assert all(len(record["audio"]) == 160 for record in records.values())  # 441 @ 44.1k.
