"""Keyword spotting on a long stream: event precision / recall / F1, false alarms, latency, RTF.

Builds a stream from the Speech Commands v0.02 excerpt's test clips (the 10 command words
are the events; `_unknown_` and `_silence_` clips are distractors that must not fire), in a
seeded random order, each preceded by 1-3 s cut from the v0.01 `_background_noise_`
recordings, and runs `stream.Spotter` over it in 100 ms reads (reusing the early blocks
between windows, as `stream` does; `--no-incremental` scores windows whole). A detection is
a hit when it names the word of an event whose span (widened by `--tolerance_s`, 0.5 s)
holds its time; each event is hit at most once; other detections are false alarms. Printed (JSON): event
precision / recall / F1, the median latency from a word's end to its detection, false alarms
per hour on `--background_s` of background noise alone, the real-time factor (compute time /
stream time, this process's threads), and, for comparison, the model's clip accuracy on the
same clips (`predict`'s argmax, words vs everything else as in the stream).

A measurement script, not a test; figures go to docs/deploy.md. `--workdir` is a run trained
on the excerpt (12 classes, e.g. `configs/speech_commands.py:samplecnn,small_data` with
`--config.num_classes=12`); `--model` an export of one.

  python benchmarks/streaming.py --workdir=workdirs/sc02 [--model=sc02.onnx]
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from samplecnn_jax import stream, testing

SHARED = testing.REPO.parent / "shared" / "data"
V02_CSV = "speech_commands_v0.02_excerpt/labels.csv"
NOISE_DIR = "speech_commands_v0.01_subset/_background_noise_"
NOT_EVENTS = ("_unknown_", "_silence_")


def _read(path: Path) -> np.ndarray:
  audio, rate = sf.read(path, dtype="float32", always_2d=True)
  assert rate == stream.RAW_RATE, (path, rate)
  return audio.mean(axis=1)


def build_stream(data_root: Path, seed: int) -> tuple[np.ndarray, list[dict], np.ndarray]:
  """(stream, events {label, start_s, end_s, is_event}, background noise) at 16 kHz."""
  rng = np.random.default_rng(seed)
  rows = [r for r in csv.DictReader(open(data_root / V02_CSV)) if r["split"] == "test"]
  rows = [rows[i] for i in rng.permutation(len(rows))]
  noise = np.concatenate([_read(p) for p in sorted((data_root / NOISE_DIR).glob("*.wav"))])
  pieces, events, at = [], [], 0
  for row in rows:
    gap = round(rng.uniform(1.0, 3.0) * stream.RAW_RATE)
    start = rng.integers(0, len(noise) - gap)
    pieces.append(noise[start : start + gap])
    at += gap
    clip = _read(data_root / Path(V02_CSV).parent / row["path"])
    pieces.append(clip)
    events.append({"label": row["label"], "start_s": at / stream.RAW_RATE,
                   "end_s": (at + len(clip)) / stream.RAW_RATE,
                   "is_event": row["label"] not in NOT_EVENTS,
                   "path": str(data_root / Path(V02_CSV).parent / row["path"])})
    at += len(clip)
  return np.concatenate(pieces), events, noise


def run_spotter(spotter: stream.Spotter, audio: np.ndarray) -> tuple[list, float]:
  hop = stream.RAW_RATE // 10
  found, start = [], time.perf_counter()
  for i in range(0, len(audio), hop):
    found += spotter.feed(audio[i : i + hop])
  return found, time.perf_counter() - start


def score_events(found: list, events: list[dict], tolerance_s: float) -> dict:
  targets = [e for e in events if e["is_event"]]
  hit = [False] * len(targets)
  latencies, false_alarms = [], 0
  for detection in found:
    match = next((i for i, e in enumerate(targets) if not hit[i]
                  and e["label"] == detection.label
                  and e["start_s"] - tolerance_s <= detection.time_s <= e["end_s"] + tolerance_s),
                 None)
    if match is None:
      false_alarms += 1
      continue
    hit[match] = True
    latencies.append(detection.time_s - targets[match]["end_s"])
  tp = sum(hit)
  precision = tp / max(tp + false_alarms, 1)
  recall = tp / max(len(targets), 1)
  f1 = 2 * precision * recall / max(precision + recall, 1e-12)
  return {"events": len(targets), "detections": len(found), "hits": tp,
          "precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4),
          "median_latency_s": round(float(np.median(latencies)), 3) if latencies else None}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", help="A run trained on the v0.02 excerpt (JAX).")
  parser.add_argument("--model", help="An ONNX export of such a run (onnxruntime).")
  parser.add_argument("--data_root", default=str(SHARED), help="The shared data folder.")
  parser.add_argument("--seed", type=int, default=0, help="Order of the clips and the gaps.")
  parser.add_argument("--hop_ms", type=float, default=stream.DEFAULT_HOP_MS)
  parser.add_argument("--incremental", action=argparse.BooleanOptionalAction, default=True,
                      help="Reuse the early blocks between windows, as `stream` does.")
  parser.add_argument("--smooth", type=int, default=stream.DEFAULT_SMOOTH)
  parser.add_argument("--threshold", type=float, default=None)
  parser.add_argument("--refractory_s", type=float, default=stream.DEFAULT_REFRACTORY_S)
  parser.add_argument("--tolerance_s", type=float, default=0.5,
                      help="A detection this close to a word's span counts for it.")
  parser.add_argument("--background_s", type=float, default=120.0,
                      help="Seconds of background alone for the false-alarm rate.")
  args = parser.parse_args()
  scorer = stream.load_scorer(args.workdir, args.model)
  audio, events, noise = build_stream(Path(args.data_root), args.seed)

  hop = stream.spotting_hop(scorer, args.hop_ms, args.incremental)

  def spotter() -> stream.Spotter:
    return stream.Spotter(scorer, hop=hop, smooth=args.smooth, threshold=args.threshold,
                          refractory_s=args.refractory_s, incremental=args.incremental)

  first = spotter()
  found, seconds = run_spotter(first, audio)
  result = {"scorer": args.model or args.workdir, "stream_s": round(len(audio) / 16000, 1),
            "hop": hop, "how": first.note,
            **score_events(found, events, args.tolerance_s),
            "real_time_factor": round(seconds / (len(audio) / 16000), 4)}
  background = noise[: int(args.background_s * 16000)]
  alarms, _ = run_spotter(spotter(), background)
  result["false_alarms_per_hour_background"] = round(len(alarms) * 3600 / (len(background) / 16000),
                                                     1)
  names = list(scorer.labels.vocabulary)
  scores = scorer.predict_batch([_read(Path(e["path"])) for e in events], 16000)
  predicted = [names[i] for i in scores.argmax(axis=1)]
  result["clip_accuracy_same_clips"] = round(float(np.mean(
      [p == e["label"] for p, e in zip(predicted, events, strict=True)])), 4)
  print(json.dumps(result), flush=True)


if __name__ == "__main__":
  main()
