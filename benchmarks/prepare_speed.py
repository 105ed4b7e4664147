"""How fast `prepare` turns audio files into the store, in real time per core.

  python benchmarks/prepare_speed.py            # 64 files x 30 s per format, 1 worker
  python benchmarks/prepare_speed.py --workers 4
  python benchmarks/prepare_speed.py --quick    # 8 files x 10 s, a smoke run

Writes noise-plus-tone files (WAV at 44.1 kHz and 16 kHz, MP3 at 44.1 kHz when libsndfile
can encode it) into a temporary `folder` dataset and times the whole `prepare` job: listing,
decoding, resampling to 16 kHz, int16 conversion, ArrayRecord writing and the report. The
figure is audio seconds / wall seconds / workers ("x real time per core"); the issue's
target for WAV is > 200x. The one-off librosa import is done before timing; with several
workers the wall time includes starting them (spawn and imports, about a second). This
script measures speed only; correctness is tested in tests/.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from samplecnn_jax import audio, prepare

CASES = (  # (label, format, subtype, file sample rate)
    ("wav 44.1k->16k", "WAV", "PCM_16", 44100),
    ("wav 16k->16k", "WAV", "PCM_16", 16000),
    ("mp3 44.1k->16k", "MP3", "MPEG_LAYER_III", 44100),
)


def write_files(folder: Path, fmt: str, subtype: str, rate: int, count: int, seconds: float):
  """`count` files of `seconds` each under folder/x/ (one class, so `folder` accepts it)."""
  (folder / "x").mkdir(parents=True)
  rng = np.random.default_rng(0)
  t = np.arange(int(seconds * rate)) / rate
  for i in range(count):
    wave = 0.1 * rng.standard_normal(len(t)) + 0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)
    sf.write(folder / "x" / f"{i:04d}.{fmt.lower()}", wave, rate, format=fmt, subtype=subtype)


def run_case(root: Path, case, count: int, seconds: float, workers: int) -> dict:
  label, fmt, subtype, rate = case
  src = root / label.split()[0] / str(rate)
  write_files(src, fmt, subtype, rate, count, seconds)
  start = time.perf_counter()
  manifest = prepare.prepare(
      "folder", src, root / "out" / src.relative_to(root), workers=workers, progress=False,
      valid_fraction=0.0, test_fraction=0.0,
  )  # fmt: skip
  wall = time.perf_counter() - start
  train = manifest.splits["train"]
  audio_seconds = train.num_samples / manifest.sample_rate
  assert train.num_clips == count, manifest.skipped
  return {
      "format": label,
      "files": count,
      "audio_s": audio_seconds,
      "wall_s": wall,
      "workers": workers,
      "x_rt_per_core": audio_seconds / wall / workers,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--quick", action="store_true", help="8 files x 10 s: a smoke run")
  parser.add_argument("--workers", type=int, default=1, help="decoding processes")
  parser.add_argument("--files", type=int, default=None, help="files per format")
  parser.add_argument("--seconds", type=float, default=None, help="seconds per file")
  args = parser.parse_args()
  count = args.files or (8 if args.quick else 64)
  seconds = args.seconds or (10.0 if args.quick else 30.0)
  cases = [c for c in CASES if c[1] in sf.available_formats()]
  skipped = [c[0] for c in CASES if c not in cases]

  # Import librosa/soxr once (about 0.5 s) so the first row does not pay for it; worker
  # processes (--workers > 1) still do, as part of their start-up.
  audio.resample(np.zeros(441, np.float32), 44100, 16000)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for case in cases:
      rows.append(run_case(Path(tmp), case, count, seconds, args.workers))
  header = f"{'format':<16}{'files':>6}{'audio s':>10}{'wall s':>9}{'workers':>9}{'x RT/core':>11}"
  print(header)
  for r in rows:
    print(
        f"{r['format']:<16}{r['files']:>6}{r['audio_s']:>10.1f}{r['wall_s']:>9.2f}"
        f"{r['workers']:>9}{r['x_rt_per_core']:>11.0f}"
    )
  for label in skipped:
    print(f"{label}: skipped, libsndfile {sf.__libsndfile_version__} cannot write this format")


if __name__ == "__main__":
  main()
