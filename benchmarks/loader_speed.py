"""Training-loader throughput: segments/s, and segments per CPU-second, from a prepared store.

For three clip/segment shapes of the paper (MTAT-like 29.1-s clips cut into 39,366-sample
segments, DCASE-like 10-s clips into 19,683, Speech-Commands-like 1-s clips into 16,000) it
builds a synthetic store in a temporary folder (int16 noise written with `store.write_shard`,
so shards are stored exactly as `prepare` writes them, uncompressed; `--zstd` writes
zstd-compressed shards instead, for comparison), then reads `create_train_iterator` batches for
a few seconds with 0 workers (reading threads in the main process) and with N worker
processes. "per core" divides the segments by the CPU time the loader used (main process plus
workers), so it does not depend on how many cores the machine has or how busy it is. The
evaluation loader (`create_eval_iterator`) is measured the same way with 0 workers.

Target: over 3,000 segments of 39,366 samples per second per CPU core, and at least 20x the
train step's consumption (compare with benchmarks/train_step_speed.py). A measurement script,
not a test.

  python benchmarks/loader_speed.py --quick
  python benchmarks/loader_speed.py --workers 0,4,8
  python benchmarks/loader_speed.py --data_dir prepared/mtat --config mtat
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # Run as a script: make `benchmarks` and the repo importable.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks import common
from samplecnn_jax import config_base, store, testing
from samplecnn_jax import input_pipeline as ip

# name -> (clip seconds, segment samples, classes, eval segments); the paper's shapes at 16 kHz.
PROFILES = {
    "mtat": (29.1, 39366, 50, 12),
    "dcase": (10.0, 19683, 17, 9),
    "speech": (1.0, 16000, 31, 1),
}
STORE_MB = {"quick": 48, "full": 768}  # Audio written per profile.
TARGET_PER_CORE = 3000  # Segments of 39,366 samples per CPU-second.


def write_synthetic_store(root: Path, clip_seconds: float, num_classes: int, megabytes: int,
                          zstd: bool) -> int:
  """A one-split store of noise clips (int16, ~1/10 full scale); returns its clip count."""
  samples = int(round(clip_seconds * 16000))
  count = max(8, int(megabytes * 2**20 // (2 * samples)))
  rng = np.random.default_rng(0)

  def records():
    for i in range(count):
      audio = (rng.standard_normal(samples) * 3000).astype(np.int16)
      yield store.encode_clip(f"clip{i}", audio, [i % num_classes])

  name = f"train/train-00000{store.SHARD_SUFFIX}"
  if zstd:
    from array_record.python.array_record_module import ArrayRecordWriter

    (root / "train").mkdir(parents=True)
    writer = ArrayRecordWriter(str(root / name), "group_size:1")
    for record in records():
      writer.write(record)
    writer.close()
  else:
    store.write_shard(root / name, records())
  np.save(root / "train" / store.CLIP_LENGTHS, np.full(count, samples, np.int64))
  split = {"num_clips": count, "num_samples": count * samples, "shards": [name]}
  store.write_json(root / store.MANIFEST, {
      "format_version": store.FORMAT_VERSION,
      "vocabulary": [f"class{i}" for i in range(num_classes)],
      "label_type": "multi_label",
      "sample_rate": 16000,
      "splits": {"train": split, "valid": split},
  })
  return count


def cpu_seconds() -> float:
  """CPU time of this process and its live children (Grain workers), in seconds."""
  try:
    import psutil
  except ImportError:  # Without psutil only this process is counted.
    return time.process_time()
  me = psutil.Process()
  total = sum(me.cpu_times()[:2])
  for child in me.children(recursive=True):
    try:
      total += sum(child.cpu_times()[:2])
    except psutil.NoSuchProcess:
      pass
  return total


def measure(batches, seconds: float, warmup: int) -> tuple[float, float, float]:
  """(segments/s, CPU cores busy, segments per CPU-second) over `seconds` after warm-up."""
  iterator = iter(batches)
  for _ in range(warmup):
    next(iterator)
  segments, start, cpu_start = 0, time.perf_counter(), cpu_seconds()
  while time.perf_counter() - start < seconds:
    try:
      batch = next(iterator)
    except StopIteration:
      iterator = iter(batches)
      continue
    segments += int(batch["mask"].sum()) if "mask" in batch else len(batch["audio"])
  wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu_start
  return segments / wall, cpu / wall, segments / max(cpu, 1e-9)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--quick", action="store_true", help="Small store, 2 s per measurement.")
  parser.add_argument("--workers", default=None,
                      help="Comma-separated worker counts (default: 0 and the CPU count).")
  parser.add_argument("--seconds", type=float, default=None, help="Seconds per measurement.")
  parser.add_argument("--modes", default="all,random", help="config.train_segments values.")
  parser.add_argument("--profiles", default=",".join(PROFILES), help="Which clip shapes.")
  parser.add_argument("--batch_size", type=int, default=23, help="Global batch (paper: 23).")
  parser.add_argument("--zstd", action="store_true",
                      help="Write zstd-compressed shards (the store's default is uncompressed).")
  parser.add_argument("--data_dir", default=None, help="Measure this prepared store instead.")
  parser.add_argument("--config", default=None, help="Config of --data_dir (e.g. mtat).")
  args = parser.parse_args()

  from absl import flags

  flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags; this is not an absl app.
  cores = os.cpu_count() or 1
  workers = [int(w) for w in (args.workers or f"0,{min(cores, 8)}").split(",")]
  seconds = args.seconds or (2.0 if args.quick else 10.0)
  if args.data_dir and not args.config:
    parser.error("--data_dir needs --config (the config the store was prepared for).")

  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    setups = []
    if args.data_dir:
      config = testing.load_config(args.config)
      setups.append((args.config, config, args.data_dir, "-"))
    else:
      for name in args.profiles.split(","):
        clip_seconds, input_size, num_classes, eval_segments = PROFILES[name]
        root = Path(tmp) / name
        count = write_synthetic_store(root, clip_seconds, num_classes,
                                      STORE_MB["quick" if args.quick else "full"],
                                      args.zstd)
        config = config_base.base_config()
        config.input_size, config.num_classes = input_size, num_classes
        config.eval_segments = eval_segments
        config.train_split, config.eval_split = "train", "valid"
        setups.append((name, config, root, count))
    for name, config, data_dir, count in setups:
      config.batch_size = args.batch_size
      config.eval_batch_size = args.batch_size * 4
      for mode in args.modes.split(","):
        config.train_segments = mode
        for num_workers in workers:
          config.num_workers = num_workers
          iterator = ip.create_train_iterator(config, store.Store.open(data_dir), seed=0,
                                              process=ip.ProcessSlice(0, 1))
          try:
            rate, busy, per_core = measure(iterator, seconds, warmup=max(3, 2 * num_workers))
          finally:
            iterator.close()
          rows.append((name, count, config.input_size, f"train/{mode}", num_workers, rate,
                       busy, per_core))
          print(common.format_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)
      config.num_workers = 0
      batches = ip.create_eval_iterator(config, store.Store.open(data_dir), config.eval_split,
                                        ip.ProcessSlice(0, 1))
      rate, busy, per_core = measure(batches, seconds, warmup=2)
      rows.append((name, count, config.input_size, "eval", 0, rate, busy, per_core))
      print(common.format_table(HEADERS, rows[-1:]).splitlines()[-1], flush=True)

  print()
  print(f"Loader throughput ({cores} CPU cores, batch {args.batch_size}, "
        f"{'zstd' if args.zstd else 'uncompressed (store default)'} shards, "
        f"{seconds:g} s per row):")
  print(common.format_table(HEADERS, rows))
  for row in rows:
    if row[2] == 39366 and row[3].startswith("train"):
      verdict = "meets" if row[7] > TARGET_PER_CORE else "BELOW"
      print(f"{row[3]}, {row[4]} workers: {row[7]:,.0f} segments of 39,366 samples per "
            f"CPU-second ({verdict} the {TARGET_PER_CORE:,} target)")


HEADERS = ("profile", "clips", "segment", "loader", "workers", "segments/s", "CPU cores busy",
           "segments/s per core")

if __name__ == "__main__":
  main()
