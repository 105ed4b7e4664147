"""Deployment speed and int8 accuracy: JAX vs onnxruntime float32 and int8 (issue 24).

Speed (`--configs`, `--variants`): each model is built with random weights and random
BatchNorm statistics (speed does not depend on training), exported (`export.onnx_model`,
`export.quantize_int8` calibrated on noise), and timed in one process, alternating round by
round: the jitted JAX forward pass (`inference.Network`) and onnxruntime float32 and int8
sessions (`--ort-threads`, default 1) on batches of 64 windows and of 1 window; then the
real-time factor of `stream.Spotter` over `--stream-seconds` of noise at a 100 ms hop
(onnxruntime float and int8, and JAX on its default threads), reusing the early blocks
between windows as `stream` does (`_rtf`; the hop rounded to their frames,
`incremental.hop_for`) and window by window (`_rtf_whole`). The float graph's largest difference from JAX is printed too.

Accuracy (`--workdir=DIR`): the run's test split (its store at `config.data_dir`) scored by
JAX, by the float export and by the int8 export (static, calibrated on 64 train clips, as
`export --quantize=int8`), with the run's metric.

A measurement script, not a test; figures go to docs/deploy.md. Needs the `export` extra.

  python benchmarks/deploy_speed.py --quick
  python benchmarks/deploy_speed.py --workdir=workdirs/demo
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from samplecnn_jax import export, exported, incremental, inference, metrics, store, stream, testing
from samplecnn_jax.workdir_files import LabelInfo

CONFIGS = ("speech_commands",)
VARIANTS = ("samplecnn", "rese2_multi")


def _median_seconds(fn, calls: int) -> float:
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def speed(config_name: str, variant: str, args) -> dict:
  config = testing.load_config(config_name, variant)
  config.normalize_rms = args.normalize_rms
  variables = testing.random_variables(config, mean_spread=0.1)
  labels = LabelInfo.numbered(config.num_classes, config.label_type)
  rng = np.random.default_rng(1)
  noise = lambda n: (0.1 * rng.standard_normal((n, config.input_size))).astype(np.float32)
  float_bytes = export.onnx_model(config, variables, labels).SerializeToString()
  int8_bytes = export.quantize_int8(float_bytes, noise(64), args.int8_float_blocks)
  difference = export.max_difference(float_bytes, config, variables,
                                     export.check_waveforms(config))
  runners = {"jax": inference.Network(config, variables),
             "onnx_float32": exported.OnnxNetwork(float_bytes, args.ort_threads),
             "onnx_int8": exported.OnnxNetwork(int8_bytes, args.ort_threads)}
  batch, one = noise(64), noise(1)
  times = {name: {"b64": [], "b1": []} for name in runners}
  for run in runners.values():  # Compile / warm up.
    run(batch), run(one)
  for _ in range(args.rounds):
    for name, run in runners.items():
      times[name]["b64"].append(_median_seconds(lambda r=run: r(batch), 1))
      times[name]["b1"].append(_median_seconds(lambda r=run: r(one), args.latency_calls))
  row = {"config": config_name, "variant": variant, "float_vs_jax": difference}
  for name, t in times.items():
    row[f"{name}_windows_per_s_b64"] = round(64 / float(np.median(t["b64"])), 1)
    row[f"{name}_ms_b1"] = round(1000 * float(np.median(t["b1"])), 2)
  info = export.export_info(config, labels)
  audio = (0.1 * rng.standard_normal(int(args.stream_seconds * config.sample_rate))
           ).astype(np.float32)
  scorers = {name: exported.OnnxPredictor(runners[name], info, num_segments=1)
             for name in ("onnx_float32", "onnx_int8")}
  scorers["jax"] = inference.Predictor(config, variables, labels, num_segments=1)
  for name, scorer in scorers.items():
    hop = incremental.hop_for(scorer.network, config.sample_rate // 10, config.input_size)
    for mode, reuse in (("", True), ("_whole", False)):
      spotter = stream.Spotter(scorer, hop=hop, incremental=reuse)
      if reuse:
        row[f"{name}_stream"] = f"hop {hop}; {spotter.note}"
      start = time.perf_counter()
      for i in range(0, len(audio), hop):
        spotter.feed(audio[i : i + hop])
      seconds = time.perf_counter() - start
      row[f"{name}_stream_rtf{mode}"] = round(seconds / args.stream_seconds, 3)
  return row


def accuracy(workdir: str, float_blocks: int | None = None) -> dict:
  config, variables, labels, _ = export.load_run(workdir)
  float_bytes = export.onnx_model(config, variables, labels).SerializeToString()
  int8_bytes = export.quantize_int8(float_bytes, export.calibration_windows(config), float_blocks)
  clips = store.Store.open(config.data_dir).clips("test")
  test = [clips[i] for i in range(len(clips))]
  waves = [c["audio"].astype(np.float32) / 32768 for c in test]
  truth = np.zeros((len(test), config.num_classes), np.int32)
  for i, clip in enumerate(test):
    truth[i, clip["labels"]] = 1
  scorers = {"jax": inference.Predictor(config, variables, labels)}
  for name, model in (("onnx_float32", float_bytes), ("onnx_int8", int8_bytes)):
    scorers[name] = exported.OnnxPredictor(exported.OnnxNetwork(model),
                                           export.export_info(config, labels))
  scores = {name: s.predict_batch(waves, config.sample_rate) for name, s in scorers.items()}
  row = {"workdir": workdir, "metric": config.metric, "clips": len(test)}
  for name, s in scores.items():
    numbers = metrics.compute_metrics(config.metric, truth, s, threshold=config.f_score_threshold,
                                      eval_label_map=labels.eval_label_map)
    row[name] = {k: round(v, 4) for k, v in numbers.items() if k == config.metric}
    row[name]["max_diff_vs_jax"] = float(np.abs(s - scores["jax"]).max())
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", default=",".join(CONFIGS), help="Comma-separated configs.")
  parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated variants.")
  parser.add_argument("--rounds", type=int, default=3, help="Alternating timing rounds.")
  parser.add_argument("--latency-calls", type=int, default=5, help="Batch-1 calls per round.")
  parser.add_argument("--ort-threads", type=int, default=1, help="onnxruntime intra-op threads.")
  parser.add_argument("--stream-seconds", type=float, default=20.0, help="Noise streamed.")
  parser.add_argument("--workdir", help="Also score this run's test split (int8 accuracy).")
  parser.add_argument("--int8-float-blocks", type=int, default=None,
                      help="Blocks int8 keeps in float32 (export --int8_float_blocks; default "
                      "as export: 0 with --normalize-rms, else 1).")
  parser.add_argument("--normalize-rms", type=float, default=0.0,
                      help="Build the speed models with this input RMS normalisation.")
  parser.add_argument("--quick", action="store_true",
                      help="One round of the speech SampleCNN, 5 s of stream.")
  args = parser.parse_args()
  variants = args.variants.split(",")
  if args.quick:
    args.rounds, args.stream_seconds, variants = 1, 5.0, ["samplecnn"]
  for config_name in args.configs.split(","):
    for variant in variants:
      print(json.dumps(speed(config_name, variant, args)), flush=True)
  if args.workdir:
    print(json.dumps(accuracy(args.workdir, args.int8_float_blocks)), flush=True)


if __name__ == "__main__":
  main()
