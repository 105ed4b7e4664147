"""Peak RSS of `predict` on one long stereo WAV versus a 1-second file (issue 10 item 11).

  PYTHONPATH=. python benchmarks/predict_memory.py [--minutes=20]

Each case runs in a fresh subprocess (a tiny configs/test.py workdir, default segments) and
reports its peak resident set size from resource.getrusage(RUSAGE_SELF) inside the child. Prints a table.
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

CHILD = r"""
import resource, sys, jax
from samplecnn_jax import predict
predictor = predict.Predictor.from_workdir(sys.argv[1])
[record] = predictor.predict_files([sys.argv[2]], progress=False)
assert record["error"] is None, record
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def make_workdir(root: Path) -> Path:
  """A workdir with an untrained tiny model (memory does not depend on the weights)."""
  import jax

  from samplecnn_jax import checkpointing, models, store, train
  from samplecnn_jax import workdir as workdir_files
  from samplecnn_jax.testing import load_config

  config = load_config("test")
  model = models.create_model(config.model, config.num_classes)
  state = train.create_train_state(config, model, jax.random.key_data(jax.random.key(0)))
  workdir = root / "workdir"
  ckpt = checkpointing.Checkpointer(workdir)
  ckpt.save_best(state, {"best_value": 0.0, "best_step": 0})
  ckpt.close()
  workdir_files.write_config(workdir, config)
  labels = [f"c{i}" for i in range(config.num_classes)]
  store.write_json(workdir / "labels.json", {"vocabulary": labels, "label_type": config.label_type})
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


def peak_rss_mb(workdir: Path, path: Path) -> float:
  out = subprocess.run([sys.executable, "-c", CHILD, str(workdir), str(path)],
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
    cases = {"1 s stereo 44.1 kHz": root / "short.wav",
             f"{args.minutes:g} min stereo 44.1 kHz": root / "long.wav"}
    write_wav(cases["1 s stereo 44.1 kHz"], 1.0)
    write_wav(root / "long.wav", args.minutes * 60)
    peaks = {name: [] for name in cases}
    for _ in range(args.repeats):  # Alternating, as docs/benchmarks.md asks.
      for name, path in cases.items():
        peaks[name].append(peak_rss_mb(workdir, path))
    short = np.median(peaks["1 s stereo 44.1 kHz"])
    print(f"{'file':<26} {'size MB':>8} {'peak RSS MB (median)':>21} {'vs 1 s':>7}")
    for name, path in cases.items():
      peak = np.median(peaks[name])
      print(f"{name:<26} {path.stat().st_size / 1e6:>8.1f} {peak:>21.0f} {peak / short:>7.3f}")


if __name__ == "__main__":
  main()
