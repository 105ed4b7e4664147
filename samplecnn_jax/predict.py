"""The `predict` command: score audio files with a trained workdir or an exported model.

  python -m samplecnn_jax.predict --workdir=DIR FILE_OR_FOLDER [...] [--output=out.json|out.csv]
      [--embeddings=OUT.npz] [--timeline=OUT_DIR --hop_seconds=S]
  python -m samplecnn_jax.predict --model=FILE.onnx FILE_OR_FOLDER [...] [same options]

This module finds the files (`find_audio_files`), runs the engine (a `scoring.ClipScorer`:
`inference.Predictor` for a workdir, `exported.OnnxPredictor` for an exported model; both
decode each file once for everything asked) and writes the results: a table, JSON or CSV (`write_json`, `write_csv`, `format_table`),
clip embeddings (.npz) and per-file timelines (`write_timeline`: CSV + PNG heat map). Exit
codes (`cli.run`): 0 every file scored, 1 some or all files failed (each is reported in the
output with its error), 2 a usage or configuration error (bad flag, missing workdir,
unloadable checkpoint), said in one line. See docs/predict.md.

From Python, use the engine: `from samplecnn_jax.inference import Predictor`. This module
holds no model code and does no scoring of its own. With `--model` it imports neither JAX nor
Flax (only onnxruntime): a deployed model predicts without them.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import flags
from tqdm import tqdm

from samplecnn_jax import audio, cli, exported, scoring, segments
from samplecnn_jax.scoring import DEFAULT_THREADS, DEFAULT_TOP_K, ClipScorer, FileResult
from samplecnn_jax.workdir_files import LabelInfo

PROG = "python -m samplecnn_jax.predict"
PROGRESS_MIN_FILES = 10  # A progress bar appears from this many files on (when not disabled).
OUTPUT_FORMATS = ("table", "json", "csv")


# --- Finding files and writing results ------------------------------------------------------


def find_audio_files(paths: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str]]:
  """Expands folders (recursively, sorted, hidden entries skipped) to their audio files.

  Returns (files, notes): a path given directly is always kept (a missing or non-audio file
  is then reported by prediction), and so is a broken symbolic link with an audio name found
  in a folder (reported as failed, with its target); `notes` names folders that held no
  audio file.
  """
  files, notes = [], []
  for path in map(Path, paths):
    if not path.is_dir():
      files.append(path)
      continue
    found = sorted(
        p for p in path.rglob("*")
        if p.suffix.lower() in audio.AUDIO_EXTENSIONS and (p.is_file() or _broken_link(p))
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not found:
      extensions = ", ".join(sorted(audio.AUDIO_EXTENSIONS))
      notes.append(f"{path}: no audio files (looked for {extensions})")
    files.extend(found)
  return files, notes


def _broken_link(path: Path) -> bool:
  return path.is_symlink() and not path.exists()


def display_name(path: str | os.PathLike) -> str:
  """A printable form of a path: bytes that are not UTF-8 shown as `\\xNN` (for tables and
  plot titles; JSON and CSV outputs keep the exact name, see docs/predict.md)."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")


def write_json(results: list[dict], out: io.TextIOBase, meta: dict[str, Any]) -> None:
  """`{...meta, "files": [one record per file]}` as indented JSON.

  ASCII-only (`ensure_ascii`): a file name that is not UTF-8 is written with `\\udcXX`
  escapes, and `os.fsencode(json.load(f)["files"][i]["file"])` gives its bytes back.
  """
  json.dump({**meta, "files": results}, out, indent=2, allow_nan=False)
  out.write("\n")


def write_csv(results: list[dict], out: io.TextIOBase, labels: LabelInfo) -> None:
  """One row per file: file, error, top_k, above_threshold, [eval_label], one column per class.

  Multi-label cells join labels with ';'; top_k cells are `label:score` pairs. Open `out`
  with `errors="surrogateescape"` (as `main` does): a file name that is not UTF-8 is then
  written as its bytes, read back with the same errors handler.
  """
  extra = ["eval_label"] if labels.eval_label_map is not None else []
  writer = csv.writer(out)
  writer.writerow(["file", "error", "top_k", "above_threshold", *extra, *labels.vocabulary])
  for r in results:
    top = ";".join(f"{t['label']}:{t['score']:.6f}" for t in r["top_k"])
    scores = [f"{r['scores'][name]:.6f}" if r["scores"] else "" for name in labels.vocabulary]
    row = [r["file"], r["error"] or "", top, ";".join(r["above_threshold"])]
    row += [r.get("eval_label") or ""] if extra else []
    writer.writerow(row + scores)


def write_timeline(
    timeline: dict[str, np.ndarray], labels: LabelInfo, path: str | os.PathLike,
    out_dir: str | os.PathLike,
) -> Path:
  """Writes `<name>.timeline.csv` and `<name>.timeline.png` of one file's timeline
  (`Predictor.timeline`); returns the CSV path."""
  from matplotlib.figure import Figure

  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  name = Path(os.fsdecode(path)).name
  classes = list(labels.vocabulary)
  csv_path = out / f"{name}.timeline.csv"
  with open(csv_path, "w", newline="") as f:
    writer = csv.writer(f)
    writer.writerow(["start_s", "end_s", *classes])
    for start, end, row in zip(timeline["start"], timeline["end"], timeline["scores"],
                               strict=True):
      writer.writerow([f"{start:.3f}", f"{end:.3f}", *(f"{v:.5f}" for v in row)])
  width = max(6.0, min(20.0, len(timeline["start"]) / 20))
  figure = Figure(figsize=(width, 1 + 0.3 * len(classes)))
  ax = figure.subplots()
  end = float(timeline["end"][-1]) if len(timeline["end"]) else 0.0
  image = ax.imshow(timeline["scores"].T, aspect="auto", origin="lower", vmin=0.0, vmax=1.0,
                    extent=(0.0, end, -0.5, len(classes) - 0.5), interpolation="nearest")
  ax.set_yticks(range(len(classes)), classes)
  ax.set_xlabel("time (s)")
  ax.set_title(display_name(name))
  figure.colorbar(image, ax=ax, label="score")
  figure.savefig(out / f"{name}.timeline.png", dpi=80, bbox_inches="tight")
  return csv_path


def format_table(results: list[dict], threshold: float) -> str:
  """Human-readable lines: file, top-k labels with scores, labels above the threshold."""
  names = [display_name(r["file"]) for r in results]
  width = min(max((len(name) for name in names), default=4), 60)
  lines = []
  for r, name in zip(results, names, strict=True):
    name = name if len(name) <= width else "..." + name[-(width - 3):]
    if r["error"]:
      lines.append(f"{name:<{width}}  ERROR {r['error']}")
      continue
    top = ", ".join(f"{t['label']} {t['score']:.3f}" for t in r["top_k"])
    line = f"{name:<{width}}  {top}  | >= {threshold:g}: {', '.join(r['above_threshold']) or '-'}"
    if "eval_label" in r:
      line += f"  | eval label: {r['eval_label']}"
    lines.append(line)
  return "\n".join(lines)


# --- Command line ---------------------------------------------------------------------------


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).",
                      flag_values=fv)
  flags.DEFINE_string("model", None, "An exported FILE.onnx (`python -m samplecnn_jax.export`), "
                      "instead of --workdir: scored through onnxruntime, without JAX.",
                      flag_values=fv)
  cli.define_checkpoint(fv)
  flags.DEFINE_string("config", None, "Config that trained the workdir (file.py[:arg] or "
                      ".json); default: the workdir's config.json.", flag_values=fv)
  flags.DEFINE_string("labels", None, "labels.json or store manifest.json with the class "
                      "names; default: workdir/labels.json, then the store manifest.",
                      flag_values=fv)
  flags.DEFINE_string("output", None, "Write results to FILE.json or FILE.csv.", flag_values=fv)
  flags.DEFINE_enum("format", None, list(OUTPUT_FORMATS), "Output format (default: from "
                    "--output's extension; table on stdout).", flag_values=fv)
  flags.DEFINE_integer("top_k", DEFAULT_TOP_K, "Labels listed per file.", lower_bound=0,
                       flag_values=fv)
  flags.DEFINE_float("threshold", None, "List labels scoring at least this (default: "
                     "config.f_score_threshold).", flag_values=fv)
  flags.DEFINE_string("segments", None, f"Segments per file: an integer, or {segments.COVER!r} "
                      "for the whole file (default: config.eval_segments, as in evaluation).",
                      flag_values=fv)
  flags.DEFINE_integer("batch_size", None, "Segments per forward pass (default: "
                       "config.eval_batch_size).", lower_bound=1, flag_values=fv)
  flags.DEFINE_integer("threads", DEFAULT_THREADS, "Decoding threads.", lower_bound=1,
                       flag_values=fv)
  flags.DEFINE_bool("no_progress", False, "No progress bar.", flag_values=fv)
  flags.DEFINE_string("embeddings", None, "Also write clip embeddings (files x D, the mean "
                      "over segments of what the head reads) and their paths to OUT.npz.",
                      flag_values=fv)
  flags.DEFINE_string("timeline", None, "Also write, per file, <name>.timeline.csv (class "
                      "scores every --hop_seconds) and <name>.timeline.png (a classes x time "
                      "heat map) to this folder.", flag_values=fv)
  flags.DEFINE_float("hop_seconds", None, "Hop of --timeline segments, s (default: half a "
                     "segment).", flag_values=fv)


def _segments_flag(value: str | None) -> int | str | None:
  if value is None or value == segments.COVER:
    return value
  try:
    count = int(value)
  except ValueError:
    count = 0
  if count < 1:
    raise cli.UsageError(f"--segments={value}: expected an integer >= 1 or {segments.COVER!r}")
  return count


def _output_format(fv: flags.FlagValues) -> str:
  if fv.format:
    return fv.format
  if fv.output is None:
    return "table"
  suffix = Path(fv.output).suffix.lower().lstrip(".")
  if suffix not in ("json", "csv"):
    raise cli.UsageError(f"--output={fv.output}: use a .json or .csv name, or pass --format")
  return suffix


def _load(fv: flags.FlagValues) -> ClipScorer:
  """The predictor of --workdir or --model; every way that fails is a configuration error
  (exit 2)."""
  num_segments = _segments_flag(fv.segments)
  if (fv.workdir is None) == (fv.model is None):
    raise cli.UsageError("name the model to score with: --workdir=DIR (a training run) or "
                         "--model=FILE.onnx (an export), not both")
  if fv.model is not None:
    if fv.config is not None or fv.labels is not None:
      raise cli.UsageError("--config and --labels read a workdir: an exported --model carries "
                           "its own; drop them")
    try:
      return exported.OnnxPredictor.from_file(fv.model, batch_size=fv.batch_size,
                                              num_segments=num_segments)
    except cli.USER_ERRORS:
      raise
    except Exception as e:  # onnxruntime's errors on a file that is not a valid model.
      raise cli.UsageError(f"cannot load --model={fv.model} (not an ONNX model, or damaged?): "
                           f"{type(e).__name__}: {str(e)[:300]}") from e
  from samplecnn_jax.inference import Predictor  # JAX: not imported for --model.

  # A damaged best falls back to a checkpoint that restores (`checkpoint_note` says so);
  # with none, `checkpointing.UnreadableCheckpointError` names the files in one line.
  return Predictor.from_workdir(
      fv.workdir, fv.checkpoint, config=fv.config, labels=fv.labels,
      batch_size=fv.batch_size, num_segments=num_segments,
  )


def _write_results(fv, fmt: str, results: list[dict], meta: dict, labels: LabelInfo) -> None:
  if fv.output:  # surrogateescape: a file name that is not UTF-8 is written as its bytes.
    out = open(fv.output, "w", newline="", encoding="utf-8", errors="surrogateescape")
  else:
    out = sys.stdout
    if fmt == "csv" and hasattr(out, "reconfigure"):
      out.reconfigure(errors="surrogateescape")
  try:
    if fmt == "json":
      write_json(results, out, meta)
    elif fmt == "csv":
      write_csv(results, out, labels)
    else:
      out.write(format_table(results, meta["threshold"]) + "\n")
  finally:
    if fv.output:
      out.close()


def _command(fv: flags.FlagValues, paths: list[str]) -> int:
  if not paths:
    raise cli.UsageError("no FILE_OR_FOLDER given: name the audio files or folders to score")
  if fv.hop_seconds is not None and fv.hop_seconds <= 0:
    raise cli.UsageError(f"--hop_seconds={fv.hop_seconds}: the timeline hop must be > 0 s")
  fmt = _output_format(fv)
  # Orbax warns on every read-only restore; a CLI user cannot act on it.
  logging.getLogger("absl").setLevel(logging.ERROR)
  predictor = _load(fv)
  if predictor.checkpoint_note:  # A damaged checkpoint: says which file and what was used.
    print(f"predict: note: {predictor.checkpoint_note}", file=sys.stderr)
  files, notes = find_audio_files(paths)
  for note in notes:
    print(f"predict: {note}", file=sys.stderr)
  if not files:
    raise cli.UsageError("no audio files to score: name audio files, or folders that hold them")
  threshold = predictor.threshold if fv.threshold is None else fv.threshold
  hop = None
  if fv.timeline:
    hop = fv.hop_seconds or predictor.input_size / predictor.sample_rate / 2
  results = predictor.iter_files(files, embeddings=bool(fv.embeddings), hop_seconds=hop,
                                 num_threads=fv.threads)
  records, embedded = [], []
  show = not fv.no_progress and len(files) >= PROGRESS_MIN_FILES
  for result in tqdm(results, total=len(files), unit="file", desc="predict", disable=not show):
    records.append(scoring.file_record(result, predictor.labels, fv.top_k, threshold))
    if fv.embeddings:
      embedded.append(result)
    if fv.timeline:
      _write_timeline_of(result, predictor.labels, fv.timeline)
  if fv.model is not None:
    source = {"model": str(fv.model), "quantization": predictor.info.quantization,
              "label_type": predictor.info.label_type}
  else:
    source = {"workdir": str(fv.workdir), "checkpoint": fv.checkpoint,
              "label_type": predictor.config.label_type}
  meta = {
      **source, "sample_rate": predictor.sample_rate,
      "input_size": predictor.input_size, "segments": predictor.num_segments,
      "threshold": threshold, "top_k": fv.top_k, "labels": list(predictor.labels.vocabulary),
  }
  _write_results(fv, fmt, records, meta, predictor.labels)
  if fv.embeddings:
    embeddings, kept, failures = scoring.embedding_table(embedded)
    np.savez(fv.embeddings, embeddings=embeddings, paths=np.asarray(kept, dtype=str))
    print(f"predict: {len(kept)} embeddings ({embeddings.shape[-1]} dims) -> {fv.embeddings}",
          file=sys.stderr)
    for failure in failures:
      print(f"predict: no embedding for {failure['path']}: {failure['error']}", file=sys.stderr)
  failed = sum(1 for r in records if r["error"])
  where = f" -> {fv.output}" if fv.output else ""
  print(f"predict: {len(records) - failed} files scored, {failed} failed{where}", file=sys.stderr)
  return cli.EXIT_SOME_FAILED if failed else cli.EXIT_DONE


def _write_timeline_of(result: FileResult, labels: LabelInfo, out_dir: str) -> None:
  if result.error is not None:
    print(f"predict: no timeline for {result.path}: {result.error}", file=sys.stderr)
    return
  written = write_timeline(result.timeline, labels, result.path, out_dir)
  print(f"predict: timeline of {result.path} -> {written}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
  """Exit status: 0 every file scored, 1 some (or all) files failed (they are in the output
  with their error), 2 a usage or configuration error (one line on stderr)."""
  return cli.run(PROG, _define_flags, _command, argv, positional="FILE_OR_FOLDER")


if __name__ == "__main__":
  sys.exit(main())
