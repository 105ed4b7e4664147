"""Test helpers shared by test_inference.py and test_predict.py: a workdir as training leaves it
(an untrained tiny model) and a folder of audio files in every supported shape."""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import numpy as np
import soundfile as sf

from samplecnn_jax import checkpointing, models, prepare, train, workdir_files
from samplecnn_jax.testing import load_config

RATE = 16000
BROKEN = ("g_corrupt.wav", "h_empty.flac")
NUM_TEST_CLIPS = 4


def tone(seconds: float, rate: int, freq: float, seed: int, channels: int = 1) -> np.ndarray:
  """A noisy tone, different per seed, so different files get different scores."""
  rng = np.random.default_rng(seed)
  t = np.arange(int(seconds * rate)) / rate
  mono = 0.4 * np.sin(2 * np.pi * freq * t) + 0.2 * rng.standard_normal(len(t))
  if channels == 1:
    return mono.astype(np.float32)
  return np.stack([mono * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)


def make_run(root: Path, variant: str | None = None) -> dict:
  """A workdir as training leaves it: config.json, a best checkpoint, labels.json
  (`configs/test.py`, its default variant unless `variant` names another)."""
  data_dir = root / "store"
  manifest = prepare.prepare("demo", None, data_dir, workers=1, num_train=1, num_valid=1,
                             num_test=NUM_TEST_CLIPS, progress=False)
  config = load_config("test", variant)
  config.data_dir = str(data_dir)
  model = models.create_model(config.model, config.num_classes)
  state = train.create_train_state(config, model, jax.random.key_data(jax.random.key(7)))
  workdir = root / "workdir"
  ckpt = checkpointing.Checkpointer(workdir)
  ckpt.save_best(state, {"best_value": 0.5, "best_step": 0})
  ckpt.close()
  workdir_files.write_config(workdir, config)
  workdir_files.write_labels(
      workdir, workdir_files.LabelInfo(tuple(manifest.vocabulary), manifest.label_type))
  return {"workdir": workdir, "config": config, "state": state, "data_dir": data_dir,
          "vocabulary": list(manifest.vocabulary), "root": root}


EVAL_VOCABULARY = ("tonal", "noisy", "other")  # Scoring classes of `make_eval_mapped_run`.
EVAL_LABEL_MAP = (0, 0, 0, 2, 1, 2)  # Demo class -> scoring class.


def make_eval_mapped_run(run: dict, workdir: Path) -> Path:
  """`run`'s best checkpoint as a Speech Commands style run: softmax outputs and an eval label
  map onto coarser scoring classes."""
  shutil.copytree(run["workdir"] / "best", workdir / "best")
  config = run["config"].copy_and_resolve_references()
  config.label_type = "multi_class"
  workdir_files.write_config(workdir, config)
  workdir_files.write_labels(workdir, workdir_files.LabelInfo(
      tuple(run["vocabulary"]), "multi_class", EVAL_VOCABULARY, EVAL_LABEL_MAP))
  return workdir


def write_audio_folder(folder: Path) -> Path:
  """Files in every supported shape: formats, rates, channels, lengths, and broken ones."""
  (folder / "nested" / ".hidden").mkdir(parents=True)
  sf.write(folder / "a_int16_mono_16k.wav", tone(0.5, RATE, 440, 0), RATE, subtype="PCM_16")
  sf.write(folder / "b_float_stereo_44k.wav", tone(1.0, 44100, 1000, 1, channels=2), 44100,
           subtype="FLOAT")
  sf.write(folder / "c_short.wav", tone(300 / RATE, RATE, 2000, 2), RATE, subtype="PCM_16")
  sf.write(folder / "nested" / "d_long_22k.flac", tone(4.0, 22050, 150, 3), 22050)
  sf.write(folder / "e_vorbis.ogg", tone(1.0, RATE, 3000, 4), RATE, format="OGG",
           subtype="VORBIS")
  if "MP3" in sf.available_formats():
    sf.write(folder / "f_song.mp3", tone(1.0, 44100, 600, 5), 44100, format="MP3",
             subtype="MPEG_LAYER_III")
  (folder / "g_corrupt.wav").write_bytes(b"RIFF" + np.random.default_rng(0).bytes(400))
  (folder / "h_empty.flac").write_bytes(b"")
  (folder / "notes.txt").write_text("not audio")
  sf.write(folder / "nested" / ".hidden" / "skipped.wav", tone(0.2, RATE, 500, 6), RATE)
  return folder


def by_name(results: list[dict]) -> dict[str, dict]:
  return {r["file"].rsplit("/", 1)[-1]: r for r in results}
