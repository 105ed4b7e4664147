"""Peak RSS of `predict` on one long stereo WAV versus a 1-second file (issue 10 item 11).

  PYTHONPATH=. python benchmarks/predict_memory.py [--minutes=20]

Each case runs in a fresh subprocess (a tiny configs/test.py workdir, default segments) and
reports its peak resident set size from resource.getrusage(RUSAGE_SELF) inside the child:
clip scores alone, and clip scores + embedding + a timeline at a 0.5 s hop from the same pass
over the file (`Predictor.iter_files`, what `predict --embeddings --timeline` runs). Prints a
table.
Not for timing; not a test.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

TIMELINE_HOP_S = 0.5  # Hop of the timeline case, s.

CHILD = r"""
import resource, sys, jax
from samplecnn_jax.inference import Predictor
predictor = Predictor.from_workdir(sys.argv[1])
hop = float(sys.argv[3]) or None
[result] = predictor.iter_files([sys.argv[2]], embeddings=hop is not None, hop_seconds=hop)
assert result.error is None, result.error
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_workdir(root: Path) -> Path:
  """A workdir with an untrained tiny model (memory does not depend on the weights)."""
  import jax

  from samplecnn_jax import checkpointing, models, train, workdir_files
  from samplecnn_jax.testing import load_config

  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  state = train.create_train_state(config, model, jax.random.key_data(jax.random.key(0)))
  workdir = root / "workdir"
  ckpt = checkpointing.Checkpointer(workdir)
  ckpt.save_best(state, {"best_value": 0.0, "best_step": 0})
  ckpt.close()
  workdir_files.write_config(workdir, config)
  labels = tuple(f"c{i}" for i in range(config.num_classes))
  workdir_files.write_labels(workdir, workdir_files.LabelInfo(labels, config.label_type))
  return workdir


def write_wav(path: Path, seconds: float, rate: int = 44100) -> None:
  """Stereo int16 noise, written in blocks so this process stays small too."""
  rng = np.random.default_rng(0)
  with sf.SoundFile(path, "w", rate, 2, subtype="PCM_16") as f:
    left = int(seconds * rate)
    while left > 0:
      n = min(left, 60 * rate)
      f.write((0.1 * rng.standard_normal((n, 2))).astype(np.float32))
      left -= n


def peak_rss_mb(workdir: Path, path: Path, hop_seconds: float) -> float:
  out = subprocess.run([sys.executable, "-c", CHILD, str(workdir), str(path), str(hop_seconds)],
                       capture_output=True, text=True, check=True, timeout=600)
  return int(out.stdout.strip().splitlines()[-1]) / 1024  # ru_maxrss is in KiB on Linux.


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--minutes", type=float, default=20.0)
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    workdir = make_workdir(root)
    files = {"1 s": root / "short.wav", f"{args.minutes:g} min": root / "long.wav"}
    write_wav(files["1 s"], 1.0)
    write_wav(files[f"{args.minutes:g} min"], args.minutes * 60)
    jobs = {"scores": 0.0, "scores + embedding + timeline": TIMELINE_HOP_S}
    peaks = {(f, j): [] for f in files for j in jobs}
    for _ in range(args.repeats):  # Alternating, as docs/benchmarks.md asks.
      for file, job in peaks:
        peaks[file, job].append(peak_rss_mb(workdir, files[file], jobs[job]))
    print(f"{'stereo 44.1 kHz file':<21} {'size MB':>8} {'what':<30} "
          f"{'peak RSS MB (median)':>21} {'vs 1 s':>7}")
    for file, job in peaks:
      peak, short = np.median(peaks[file, job]), np.median(peaks["1 s", job])
      size = files[file].stat().st_size / 1e6
      print(f"{file:<21} {size:>8.1f} {job:<30} {peak:>21.0f} {peak / short:>7.3f}")

if __name__ == "__main__":
  main()
