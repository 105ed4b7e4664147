"""Inference speed: `inference.Predictor` on a folder of files, and the forward pass, vs PyTorch.

For each dataset config and model variant, in one process and alternating round by round:
  * folder: clips per second of `Predictor.predict_files` on a folder of 1-s files and one of
    30-s files (44.1 kHz wav: decode + resample to the config's rate + the default
    `config.eval_segments` segments + forward + the clip average), against the same pipeline
    written in PyTorch: soundfile + soxr (the same soxr "HQ" quality librosa uses), the same
    evenly spread segments, segments of several files batched together
    (`config.eval_batch_size`), decoding in as many threads ahead of the model, and the twin
    model (`samplecnn_jax/torch_reference.py`, the same weights) in `torch.inference_mode`;
  * forward: one jitted `model.apply(train=False)` + sigmoid/softmax on a batch of 64
    segments against the twin in `torch.inference_mode` (eager, and `torch.compile`d when
    `--torch-compile` is on).
Both pipelines get the same weights, and their clip scores are checked to agree.

With `--onnx` (needs the `export` extra), a second table adds onnxruntime beside JAX for each
config and variant, timed alternating round by round in this process: windows per second at
batch 64 and milliseconds at batch 1 for the jitted JAX forward pass and the float32 and int8
ONNX exports (`--ort-threads`, default 1), and the stream real-time factor
(`benchmarks/deploy_speed.py`'s `speed`, which also prints them as JSON).

Folder size: `Predictor` runs fixed-shape batches of `config.eval_batch_size` segments and
zero-pads the last one, so a folder of a few files costs a whole batch. By default each folder
holds the fewest files whose segments fill whole batches (`--batches` of them: 16 files for
mtat's 12 segments per clip, 64 for Speech Commands' 1), so the figure is the steady rate of a
large folder; `--files N` sets the count instead (a partial last batch shows the padding cost).

A measurement script, not a test; figures go to docs/benchmarks.md. PyTorch and soxr are the
optional `bench` dependency.

  python benchmarks/inference_speed.py --quick
  python benchmarks/inference_speed.py            # mtat and speech_commands, both variants
"""

from __future__ import annotations

import argparse
import concurrent.futures
import functools
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # Run as a script: make `benchmarks` and the repo importable.
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np
import soundfile as sf

from benchmarks import common
from samplecnn_jax import inference, models, scoring, testing, train
from samplecnn_jax.workdir_files import LabelInfo

CONFIGS = ("mtat", "speech_commands")
VARIANTS = ("samplecnn", "rese2_multi")
FILE_RATE = 44100  # Source rate of the benchmark files (resampled to the config's 16 kHz).
FORWARD_BATCH = 64


def write_folder(folder: Path, count: int, seconds: float, seed: int) -> list[Path]:
  """`count` mono 16-bit wav files of `seconds` of noise at FILE_RATE."""
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  paths = []
  for i in range(count):
    path = folder / f"clip_{i:03d}.wav"
    sf.write(path, rng.uniform(-0.5, 0.5, int(seconds * FILE_RATE)).astype(np.float32),
             FILE_RATE, subtype="PCM_16")
    paths.append(path)
  return paths


# --- The PyTorch pipeline ----------------------------------------------------------------------


class TorchPipeline:
  """Files -> clip scores in PyTorch, as a PyTorch user would write `Predictor`'s pipeline."""

  def __init__(self, config, model, num_threads: int = scoring.DEFAULT_THREADS):
    import torch

    self.torch = torch
    self.config = config
    self.model = model.eval()
    self.num_threads = num_threads
    self.batch_size = int(config.eval_batch_size)
    self.multi_label = config.label_type == "multi_label"

  def decode(self, path) -> np.ndarray:
    import soxr

    waveform, rate = sf.read(path, dtype="float32", always_2d=True)
    mono = waveform.mean(axis=1)
    if rate != self.config.sample_rate:
      mono = soxr.resample(mono, rate, self.config.sample_rate, quality="HQ")
    size, count = int(self.config.input_size), int(self.config.eval_segments)
    if len(mono) < size:
      mono = np.pad(mono, (0, size - len(mono)))
    starts = np.rint(np.linspace(0, len(mono) - size, count)).astype(np.int64)
    segments = np.stack([mono[s : s + size] for s in starts]).astype(np.float32)
    if self.config.standardize:
      segments = (segments - self.config.audio_mean) / self.config.audio_std
    return segments

  def probabilities(self, batch: np.ndarray) -> np.ndarray:
    torch = self.torch
    with torch.inference_mode():
      logits = self.model(torch.from_numpy(batch))
      probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, dim=1)
    return probs.numpy()

  def predict_files(self, paths) -> np.ndarray:
    """Clip scores `(len(paths), num_classes)`; segments of several files share a batch."""
    with concurrent.futures.ThreadPoolExecutor(self.num_threads) as pool:
      clips = list(pool.map(self.decode, paths))
    counts = [len(c) for c in clips]
    segments = np.concatenate(clips)
    probs = np.concatenate([
        self.probabilities(segments[i : i + self.batch_size])
        for i in range(0, len(segments), self.batch_size)
    ])
    bounds = np.cumsum([0] + counts)
    return np.stack([probs[a:b].mean(axis=0) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])


# --- One row -----------------------------------------------------------------------------------


def files_per_folder(config, args) -> int:
  """Fewest files whose segments fill `args.batches` whole batches (or `args.files`)."""
  if args.files:
    return args.files
  per_batch = config.eval_batch_size // math.gcd(config.eval_batch_size, config.eval_segments)
  return per_batch * args.batches


def benchmark_row(name: str, variant: str, folders: dict[str, list[Path]], args) -> dict:
  import torch

  from samplecnn_jax import torch_reference

  config = testing.load_config(name, variant)
  count = files_per_folder(config, args)
  folders = {kind: paths[:count] for kind, paths in folders.items()}
  model = models.create_model(config.model, config.num_classes)
  x = np.zeros((FORWARD_BATCH, config.input_size), np.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(0), x)
  labels = LabelInfo.numbered(config.num_classes, config.label_type)
  predictor = inference.Predictor(config, variables, labels)
  twin = torch_reference.create_model(config)
  torch_reference.load_flax_variables(twin, variables)
  pipeline = TorchPipeline(config, twin)
  row: dict[str, object] = {"config": name, "variant": variant, "files": count,
                            "segments_per_clip": config.eval_segments}

  @jax.jit
  def jax_forward(variables, segments):  # Predictor's forward pass, without the embedding.
    return train.probabilities(model.apply(variables, segments, train=False), config.label_type)

  batch = np.random.default_rng(0).standard_normal(x.shape).astype(np.float32) * 0.1
  torch_batch = torch.from_numpy(batch)

  def run_jax_forward():
    jax_forward(variables, batch).block_until_ready()

  def run_torch_forward(module):
    with torch.inference_mode():
      module(torch_batch)

  forwards = {"jax": run_jax_forward, "torch": functools.partial(run_torch_forward, twin)}
  if args.torch_compile:
    compiled = torch.compile(twin)
    start = time.perf_counter()
    run_torch_forward(compiled)
    row["torch_compile_s"] = time.perf_counter() - start
    forwards["torch_compiled"] = functools.partial(run_torch_forward, compiled)
  for run in forwards.values():
    run()  # Warm-up (JAX: compile).

  # Same weights, same pipeline: the clip scores must agree (float rounding aside).
  for kind, paths in folders.items():
    jax_scores = np.stack([r_["scores_array"] for r_ in _jax_predict(predictor, paths[:2])])
    torch_scores = pipeline.predict_files(paths[:2])
    diff = float(np.max(np.abs(jax_scores - torch_scores)))
    row[f"max_score_diff_{kind}"] = diff
    if diff > 1e-3:
      raise AssertionError(f"{name}/{variant} {kind}: JAX and PyTorch scores differ by {diff}.")

  times: dict[str, list[float]] = {}
  for _ in range(args.rounds):
    for kind, paths in folders.items():
      times.setdefault(f"jax_{kind}", []).append(
          common.time_per_call(functools.partial(_jax_predict, predictor, paths), 1))
      times.setdefault(f"torch_{kind}", []).append(
          common.time_per_call(functools.partial(pipeline.predict_files, paths), 1))
    for framework, run in forwards.items():
      times.setdefault(f"{framework}_forward", []).append(
          common.time_per_call(run, args.forward_calls))
  for kind, paths in folders.items():
    jax_t, torch_t = times[f"jax_{kind}"], times[f"torch_{kind}"]
    row[f"jax_{kind}_clips_s"] = len(paths) / common.median(jax_t)
    row[f"torch_{kind}_clips_s"] = len(paths) / common.median(torch_t)
    row[f"speedup_{kind}"] = common.median([t / j for t, j in zip(torch_t, jax_t, strict=True)])
  for framework in forwards:
    t = times[f"{framework}_forward"]
    row[f"{framework}_forward_segments_s"] = FORWARD_BATCH / common.median(t)
    if framework != "jax":
      row[f"speedup_forward_{framework}"] = common.median(
          [a / j for a, j in zip(t, times["jax_forward"], strict=True)])
  return row


def _jax_predict(predictor: inference.Predictor, paths) -> list[dict]:
  results = predictor.predict_files(paths)
  for r in results:
    if r["error"]:
      raise RuntimeError(f"{r['file']}: {r['error']}")
    r["scores_array"] = np.array(list(r["scores"].values()), np.float32)
  return results


def print_table(rows, folders, args) -> None:
  headers = ["config", "variant", "files per folder", "segments/clip"]
  for kind in folders:
    headers += [f"{kind} JAX clips/s", f"{kind} PyTorch clips/s", f"{kind} speed-up"]
  headers += ["forward JAX seg/s", "forward PyTorch seg/s", "forward speed-up"]
  if args.torch_compile:
    headers += ["forward compiled seg/s", "speed-up vs compiled", "compile s"]
  table = []
  for r in rows:
    line = [r["config"], r["variant"], r["files"], r["segments_per_clip"]]
    for kind in folders:
      line += [r[f"jax_{kind}_clips_s"], r[f"torch_{kind}_clips_s"], r[f"speedup_{kind}"]]
    line += [r["jax_forward_segments_s"], r["torch_forward_segments_s"],
             r["speedup_forward_torch"]]
    if args.torch_compile:
      line += [r["torch_compiled_forward_segments_s"], r["speedup_forward_torch_compiled"],
               r["torch_compile_s"]]
    table.append(line)
  print(common.format_table(headers, table))
  print(
      f"\nclips/s: files per second through the whole pipeline ({FILE_RATE} Hz wav -> decode,\n"
      "resample, segments, forward, clip mean); seg/s: segments per second of the forward pass\n"
      f"alone at batch {FORWARD_BATCH}. Medians over rounds; speed-ups taken within a round."
  )


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default=",".join(CONFIGS), help="Comma-separated configs.")
  parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated variants.")
  parser.add_argument("--batches", type=int, default=1,
                      help="Folder size in whole eval batches of segments (see the docstring).")
  parser.add_argument("--files", type=int, default=0,
                      help="Files per folder instead (a partial last batch is zero-padded).")
  parser.add_argument("--rounds", type=int, default=2, help="Alternating timing rounds.")
  parser.add_argument("--forward-calls", type=int, default=2, help="Forward calls per round.")
  parser.add_argument("--torch-compile", action=argparse.BooleanOptionalAction, default=False,
                      help="Also time the torch.compile'd (inductor, default mode) forward pass.")
  parser.add_argument("--quick", action="store_true",
                      help="speech_commands samplecnn, 4 files per folder, 1 round: a check that "
                      "it runs.")
  parser.add_argument("--json", default="", help="Also write the rows to this JSON file.")
  parser.add_argument("--onnx", action="store_true",
                      help="Also time onnxruntime float32 and int8 exports beside JAX.")
  parser.add_argument("--ort-threads", type=int, default=1, help="onnxruntime intra-op threads.")
  parser.add_argument("--latency-calls", type=int, default=5, help="Batch-1 calls per round.")
  parser.add_argument("--int8-float-blocks", type=int, default=None,
                      help="Blocks int8 keeps in float32 (export --int8_float_blocks; default "
                      "as export).")
  parser.add_argument("--stream-seconds", type=float, default=20.0,
                      help="Noise streamed for the real-time factor (--onnx).")
  args = parser.parse_args(argv)
  if args.quick:
    args.configs, args.variants, args.rounds = "speech_commands", "samplecnn", 1
    args.files, args.forward_calls = 4, 1
  return args


def main(argv=None) -> None:
  args = parse_args(argv)
  try:
    import soxr  # noqa: F401
    import torch
  except ImportError:
    if not args.onnx:
      sys.exit("PyTorch and soxr are needed: pip install -e '.[bench]' (or pass --onnx for "
               "the onnxruntime rows alone).")
    print("PyTorch or soxr is missing: only the onnxruntime rows (pip install -e '.[bench]' "
          "for the rest).")
    rows = onnx_rows(args)
    if args.json:
      Path(args.json).write_text(json.dumps(rows, indent=1))
    return
  torch.set_num_threads(os.cpu_count())
  os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor_"))
  print(f"backend {jax.default_backend()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads); {args.rounds} rounds; "
        f"{scoring.DEFAULT_THREADS} decoding threads in both pipelines")
  count = max(files_per_folder(testing.load_config(name), args)
              for name in args.configs.split(","))
  with tempfile.TemporaryDirectory() as tmp:
    folders = {
        "1s": write_folder(Path(tmp) / "1s", count, 1.0, seed=1),
        "30s": write_folder(Path(tmp) / "30s", count, 30.0, seed=2),
    }
    rows = []
    for name in args.configs.split(","):
      for variant in args.variants.split(","):
        row = benchmark_row(name, variant, folders, args)
        print(json.dumps(row), flush=True)
        rows.append(row)
  print()
  print_table(rows, folders, args)
  if args.onnx:
    rows += onnx_rows(args)
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=1))


def onnx_rows(args) -> list[dict]:
  """onnxruntime float32 and int8 beside JAX for every config and variant; prints a table."""
  from benchmarks import deploy_speed  # The export extra's imports stay out of the default run.

  rows = [deploy_speed.speed(name, variant, args) for name in args.configs.split(",")
          for variant in args.variants.split(",")]
  table = []
  for r in rows:
    table.append([r["config"], r["variant"]] + [
        r[f"{name}_windows_per_s_b64"] for name in ("jax", "onnx_float32", "onnx_int8")] + [
        round(r["onnx_int8_windows_per_s_b64"] / r["onnx_float32_windows_per_s_b64"], 2)] + [
        r[f"{name}_ms_b1"] for name in ("jax", "onnx_float32", "onnx_int8")] + [
        r["onnx_float32_stream_rtf"], r["onnx_int8_stream_rtf"], f"{r['float_vs_jax']:.1e}"])
  print()
  print(common.format_table(
      ["config", "variant", "jax win/s b64", "ort f32 win/s", "ort int8 win/s", "int8/f32",
       "jax ms b1", "ort f32 ms b1", "ort int8 ms b1", "f32 stream RTF", "int8 stream RTF",
       "max |f32 - jax|"], table))
  print(f"\nonnxruntime with {args.ort_threads} intra-op thread(s); medians over "
        f"{args.rounds} alternating rounds; RTF = seconds of compute per second of stream at a "
        "100 ms hop (lower is faster).")
  return rows


if __name__ == "__main__":
  main()
