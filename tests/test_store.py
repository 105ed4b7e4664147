"""Tests for samplecnn_jax.store's `Manifest`: the one reader and writer of manifest.json."""

from __future__ import annotations

import json

import pytest

from samplecnn_jax import prepare, store


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("demo")
  prepare.prepare("demo", None, out, workers=1, progress=False, shard_size=4,
                  num_train=5, num_valid=2, num_test=2)
  return out


def test_manifest_json_round_trips_key_for_key(demo_dir):
  text = (demo_dir / store.MANIFEST).read_text()
  data = json.loads(text)
  manifest = store.Manifest.from_json(data)
  assert manifest.to_json() == data
  assert list(manifest.to_json()) == list(data)  # Same key order: the file is byte-identical.
  assert json.dumps(manifest.to_json(), indent=2) + "\n" == text
  assert store.Manifest.from_json(manifest.to_json()) == manifest == store.Manifest.read(demo_dir)
  assert manifest.extra == {"generator": {"seed": 0, "clip_seconds": 2.0}}
  assert manifest.splits["train"] == store.SplitInfo(
      5, manifest.splits["train"].num_samples,
      ("train/train-00000.array_record", "train/train-00001.array_record"),
      "train/clip_lengths.npy",
  )


def test_eval_classes_are_typed_and_written_last(tmp_path):
  manifest = store.Manifest(
      16000, "multi_class", ("_silence_", "yes", "cat"), {}, extra={"seed": 3},
      eval_vocabulary=("_silence_", "_unknown_", "yes"), eval_label_map=(0, 2, 1),
  )
  manifest.write(tmp_path)
  data = json.loads((tmp_path / store.MANIFEST).read_text())
  assert list(data)[-3:] == ["seed", "eval_vocabulary", "eval_label_map"]
  assert data["eval_label_map"] == [0, 2, 1]
  assert store.Manifest.read(tmp_path) == manifest
  assert manifest.label_record() == {
      "vocabulary": ["_silence_", "yes", "cat"], "label_type": "multi_class",
      "eval_vocabulary": ["_silence_", "_unknown_", "yes"], "eval_label_map": [0, 2, 1],
  }  # fmt: skip


def test_an_old_manifest_without_the_optional_fields_loads(tmp_path):
  old = {
      "format_version": store.FORMAT_VERSION,
      "vocabulary": ["a", "b"],
      "label_type": "multi_label",
      "sample_rate": 22050,
      "splits": {"train": {"num_clips": 2, "num_samples": 10, "shards": ["train/t.ar"]}},
  }
  store.write_json(tmp_path / store.MANIFEST, old)
  manifest = store.Manifest.read(tmp_path)
  assert (manifest.vocabulary, manifest.sample_rate) == (("a", "b"), 22050)
  assert manifest.splits["train"].clip_lengths == f"train/{store.CLIP_LENGTHS}"
  assert (manifest.dataset, manifest.source, manifest.skipped, manifest.extra) == ("", None, 0, {})
  assert manifest.eval_vocabulary is None and manifest.eval_label_map is None
  assert manifest.label_record() == {"vocabulary": ["a", "b"], "label_type": "multi_label"}
  assert store.Manifest.from_json(manifest.to_json()) == manifest


def test_manifest_errors_say_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match="samplecnn_jax.prepare DATASET"):
    store.Manifest.read(tmp_path)
  store.write_json(tmp_path / store.MANIFEST, {"format_version": 99})
  with pytest.raises(ValueError, match="store format 99.*prepare the dataset again"):
    store.Manifest.read(tmp_path)
  store.write_json(tmp_path / store.MANIFEST, {"format_version": store.FORMAT_VERSION,
                                              "sample_rate": 16000, "label_type": "multi_label"})
  with pytest.raises(ValueError, match="has no vocabulary, splits: prepare the dataset again"):
    store.Manifest.read(tmp_path)
  with pytest.raises(ValueError, match=r"may not override the fields \['dataset'\]"):
    store.Manifest(16000, "multi_label", ("a",), {}, extra={"dataset": "other"})
