"""Export a trained run for deployment: an ONNX graph (float or int8) or a StableHLO artifact.

  python -m samplecnn_jax.export --workdir=DIR --out=model.onnx [--quantize=int8]
  python -m samplecnn_jax.export --workdir=DIR --out=model.jax

- `FILE.onnx`: the graph of `onnx_graph.build_model` (input `waveform` float32
  `[batch, input_size]` at the run's rate, outputs `scores` and `embedding`; BatchNorm folded,
  the run's input scaling inside), with the run's facts in `metadata_props`
  (`exported.ExportInfo`: labels, sample rate, input size, label type, threshold, segment
  rule). Before it is written it is run beside the JAX model on random waveforms and refused
  when they differ by more than `TOLERANCE`. `--quantize=int8` writes an int8 model through
  onnxruntime's static quantisation, calibrated on the run's train clips or `--calibration`
  files (see docs/deploy.md for why static and what it costs).
- `FILE.jax`: `jax.export` serialisation (StableHLO) of waveform -> scores with a symbolic
  batch dimension, the weights and input scaling baked in; `jax.export.deserialize(bytes)
  .call(waveform)` runs it with no project code. `FILE.jax.json` beside it holds the same
  facts as the ONNX metadata.

The engine (`load_run`, `onnx_model`, `max_difference`, `calibration_windows`,
`quantize_int8`, `stablehlo`) takes
configs and variables and returns models and bytes; `main` is the command (cli.run). Scoring
an exported model is `exported.py`'s (`predict --model`). Needs the `export` extra (onnx,
onnxruntime) for ONNX.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags

from samplecnn_jax import (
  audio,
  checkpointing,
  cli,
  exported,
  inference,
  input_pipeline,
  models,
  scoring,
  segments,
  store,
  workdir_files,
)
from samplecnn_jax.workdir_files import LabelInfo

PROG = "python -m samplecnn_jax.export"
TOLERANCE = 1e-4  # Largest |ONNX - JAX| score difference an export may have.
FORMATS = {".onnx": "onnx", ".jax": "stablehlo"}
QUANTIZE = ("none", "int8")
CALIBRATION_CLIPS = 64  # Clips whose segments calibrate the int8 activation ranges.
# Blocks after the front conv that int8 export keeps in float32, by default: none when the run
# scales each input to a fixed RMS (`normalize_rms`), else block 1 (see `float_blocks_for`).
FLOAT_BLOCKS = 1
FLOAT_BLOCKS_RMS_NORMALISED = 0


# --- A run --------------------------------------------------------------------------------


def load_run(
    workdir: str | os.PathLike, which: str = "best", config: str | None = None,
    labels: str | None = None,
) -> tuple[ml_collections.ConfigDict, dict[str, Any], LabelInfo, str | None]:
  """(config, variables as numpy, labels, note) of a training workdir, as `predict` reads them.

  A damaged checkpoint falls back to the newest one that restores
  (`checkpointing.read_checkpoint`); `note` then says which was used and which file was
  damaged (None otherwise).
  """
  if not Path(workdir).is_dir():
    raise FileNotFoundError(f"Workdir {workdir} does not exist.")
  config = workdir_files.read_config(workdir, config)
  info = inference.load_labels(workdir, config, labels)
  loaded = checkpointing.read_checkpoint(workdir, config, which)
  variables = jax.device_get({"params": loaded.variables["params"],
                              "batch_stats": loaded.variables["batch_stats"]})
  return config, variables, info, loaded.note


def export_info(config: ml_collections.ConfigDict, labels: LabelInfo, source: str = "",
                quantization: str = "float32") -> exported.ExportInfo:
  """The facts an exported model carries (`exported.ExportInfo`) for this run."""
  return exported.ExportInfo(
      labels=labels, sample_rate=int(config.sample_rate), input_size=int(config.input_size),
      num_segments=int(config.eval_segments), threshold=float(config.f_score_threshold),
      batch_size=int(config.eval_batch_size),
      scaling=segments.InputScaling.from_config(config), source=source,
      quantization=quantization, pooling=config.segment_pooling,
  )


# --- ONNX ---------------------------------------------------------------------------------


def onnx_model(config: ml_collections.ConfigDict, variables: dict[str, Any], labels: LabelInfo,
               source: str = ""):
  """The float32 ONNX model (`onnx.ModelProto`) of a run, its facts in `metadata_props`."""
  from samplecnn_jax import onnx_graph  # Imports onnx, the optional `export` extra.

  return onnx_graph.build_model(
      config.model, int(config.num_classes), config.label_type, int(config.input_size),
      variables, segments.InputScaling.from_config(config),
      export_info(config, labels, source).to_metadata(),
  )


def jax_scores(config: ml_collections.ConfigDict, variables: dict[str, Any],
               waveforms: np.ndarray) -> np.ndarray:
  """What the run's JAX model gives unscaled `waveforms` `(n, input_size)`: scaled as in
  training, then the class probabilities (the reference an export is checked against)."""
  model = models.create_model(config.model, config.num_classes)
  inputs = segments.InputScaling.from_config(config)(np.array(waveforms, np.float32))
  logits = model.apply(variables, inputs, train=False)
  return np.asarray(models.probabilities(logits, config.label_type))


def check_waveforms(config: ml_collections.ConfigDict, count: int = 8, seed: int = 0
                    ) -> np.ndarray:
  """Random waveforms at several levels (quiet to loud) for checking an export."""
  rng = np.random.default_rng(seed)
  levels = np.geomspace(1e-3, 0.5, count)[:, None]
  return (levels * rng.standard_normal((count, int(config.input_size)))).astype(np.float32)


def max_difference(model_bytes: bytes, config: ml_collections.ConfigDict,
                   variables: dict[str, Any], waveforms: np.ndarray) -> float:
  """Largest |onnxruntime - JAX| score over `waveforms` (unscaled, `(n, input_size)`)."""
  network = exported.OnnxNetwork(model_bytes)
  onnx_scores = network(waveforms)[scoring.PROBABILITIES]
  return float(np.max(np.abs(onnx_scores - jax_scores(config, variables, waveforms))))


def calibration_windows(config: ml_collections.ConfigDict,
                        paths: Sequence[str] | None = None,
                        max_clips: int = CALIBRATION_CLIPS) -> np.ndarray:
  """Unscaled model inputs `(n, input_size)` that int8 quantisation calibrates on.

  The evaluation segments of up to `max_clips` clips: audio files (or folders of them) in
  `paths`, else the train split of the run's prepared store (`config.data_dir`).
  """
  size, count = int(config.input_size), int(config.eval_segments)
  if paths:
    files = []
    for path in map(Path, paths):
      files += sorted(p for p in path.rglob("*") if p.suffix.lower() in audio.AUDIO_EXTENSIONS
                      ) if path.is_dir() else [path]
    windows = [segments.read_segments(f, int(config.sample_rate), size, count)[0]
               for f in files[:max_clips]]
  else:
    data_dir = input_pipeline.data_dir_for(config)
    if not (Path(data_dir) / store.MANIFEST).is_file():
      raise cli.UsageError(
          f"int8 quantisation calibrates on audio and the run's store {data_dir} is not here: "
          "pass --calibration=FILES_OR_FOLDER (a few dozen clips like the ones to score)")
    clips = store.Store.open(data_dir).clips("train")
    windows = [segments.segment_clip(audio.to_float32(clips[i]["audio"]), size, count)
               for i in range(min(max_clips, len(clips)))]
  if not windows:
    raise cli.UsageError(f"--calibration={','.join(paths or [])}: no audio files found")
  return np.concatenate(windows).astype(np.float32)


def float_blocks_for(scaling: segments.InputScaling) -> int:
  """How many blocks int8 export keeps in float32 for a run with this input scaling.

  Block 1 reads the front conv's output at a third of the sample rate, and 8 bits with one
  calibrated range cover it only when the clips come in at one level. Without RMS
  normalisation they do not: on the Speech Commands excerpt run, quantising from block 1 on
  cost 8 points (the front conv's median output was 0.048 against one 8-bit step of 0.124)
  and keeping block 1 float 1.3. A run trained with `normalize_rms` sees every window at one
  RMS: quantising from block 1 on cost 1.3 points there, at 2.2x the float model's speed
  where block 1 in float gives 1.4x (docs/deploy.md).
  """
  return FLOAT_BLOCKS_RMS_NORMALISED if scaling.rms > 0 else FLOAT_BLOCKS


def quantize_int8(model_bytes: bytes, calibration: np.ndarray,
                  float_blocks: int | None = None) -> bytes:
  """The int8 model of a float ONNX model, same metadata: onnxruntime static quantisation.

  Weights (per channel) and activations are int8 (QDQ format), the activation ranges
  calibrated on `calibration` (unscaled windows, `calibration_windows`). The front end (the
  input scaling and the strided front conv) and the first `float_blocks` blocks stay float32
  (None: `float_blocks_for` the input scaling in the model's metadata): on the Speech
  Commands excerpt run, quantising the waveform itself to 8 bits cost 19 points of accuracy;
  where to start quantising after it is `float_blocks_for`'s choice. Static rather than
  dynamic: on the demo run both kept the float model's F-score, and dynamic quantisation
  (ConvInteger, activations quantised per batch) ran at 0.4x the float model's speed where
  static ran at 0.6-1.0x (3-4x on the speech SampleCNN; docs/deploy.md).
  """
  import onnx
  from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
  )
  from onnxruntime.quantization.shape_inference import quant_pre_process

  float_model = onnx.load_from_string(model_bytes)
  props = {p.key: p.value for p in float_model.metadata_props}
  if float_blocks is None:
    float_blocks = float_blocks_for(exported.ExportInfo.from_metadata(props).scaling)
  front_end = []  # The nodes before the first quantised block's, in graph order.
  first_quantised = f"block{float_blocks + 1}_"
  for node in float_model.graph.node:
    if node.name.startswith(first_quantised):
      break
    front_end.append(node.name)

  class Reader(CalibrationDataReader):
    def __init__(self):
      self.batches = iter(calibration[i : i + 32] for i in range(0, len(calibration), 32))

    def get_next(self):
      batch = next(self.batches, None)
      return None if batch is None else {exported.INPUT: batch}

  with tempfile.TemporaryDirectory() as tmp:
    src, prep, out = (Path(tmp) / name for name in ("f.onnx", "p.onnx", "q.onnx"))
    src.write_bytes(model_bytes)
    quant_pre_process(str(src), str(prep), skip_symbolic_shape=True)
    quantize_static(str(prep), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, nodes_to_exclude=front_end)
    model = onnx.load(str(out))
  props["quantization"] = "int8"
  del model.metadata_props[:]
  onnx.helper.set_model_props(model, props)
  return model.SerializeToString()


# --- StableHLO ----------------------------------------------------------------------------


def stablehlo(config: ml_collections.ConfigDict, variables: dict[str, Any]) -> bytes:
  """`jax.export` bytes of waveform `(batch, input_size)` -> scores, batch symbolic.

  The input scaling and the weights are part of the function; it is lowered for CPU and,
  where this JAX can lower for them, CUDA and TPU.
  """
  model = models.create_model(config.model, config.num_classes)
  scaling = segments.InputScaling.from_config(config)

  def scores(waveform):
    x = waveform
    if scaling.rms > 0:
      level = jnp.sqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True))
      x = x * (scaling.rms / jnp.maximum(level, segments.RMS_FLOOR))
    if scaling.standardize:
      x = (x - scaling.mean) * (1.0 / scaling.std)
    logits = model.apply(variables, x, train=False)
    return models.probabilities(logits, config.label_type)

  batch = jax.export.symbolic_shape("batch")
  spec = jax.ShapeDtypeStruct((*batch, int(config.input_size)), jnp.float32)
  try:
    artifact = jax.export.export(jax.jit(scores), platforms=("cpu", "cuda", "tpu"))(spec)
  except Exception:  # noqa: BLE001 -- a JAX that cannot lower for accelerators here.
    artifact = jax.export.export(jax.jit(scores), platforms=("cpu",))(spec)
  return bytes(artifact.serialize())


# --- Command line -------------------------------------------------------------------------


def _define_flags(fv: flags.FlagValues) -> None:
  flags.DEFINE_string("workdir", None, "Training workdir (config.json + checkpoints).",
                      flag_values=fv)
  flags.mark_flag_as_required("workdir", flag_values=fv)
  cli.define_checkpoint(fv)
  flags.DEFINE_string("out", None, "Output file: FILE.onnx (ONNX) or FILE.jax (StableHLO).",
                      flag_values=fv)
  flags.mark_flag_as_required("out", flag_values=fv)
  flags.DEFINE_enum("quantize", "none", list(QUANTIZE), "int8: write an int8 ONNX model "
                    "(onnxruntime static quantisation, calibrated on --calibration).",
                    flag_values=fv)
  flags.DEFINE_integer("int8_float_blocks", None, "Blocks after the front conv that "
                       "--quantize=int8 keeps in float32 (default: 0 for a run trained with "
                       "normalize_rms, else 1: 0 is faster, 2.2x float, but without RMS "
                       "normalisation lost 8 points on the Speech Commands excerpt).",
                       lower_bound=0, flag_values=fv)
  flags.DEFINE_list("calibration", None, "Audio files or folders whose clips calibrate "
                    "--quantize=int8 (default: the train split of the run's store).",
                    flag_values=fv)
  flags.DEFINE_string("config", None, "Config that trained the workdir (file.py[:arg] or "
                      ".json); default: the workdir's config.json.", flag_values=fv)
  flags.DEFINE_string("labels", None, "labels.json or store manifest.json with the class "
                      "names; default: workdir/labels.json, then the store manifest.",
                      flag_values=fv)


def _command(fv: flags.FlagValues, _: list[str]) -> int:
  out = Path(fv.out)
  kind = FORMATS.get(out.suffix.lower())
  if kind is None:
    raise cli.UsageError(f"--out={fv.out}: name a .onnx (ONNX) or .jax (StableHLO) file")
  if fv.quantize != "none" and kind != "onnx":
    raise cli.UsageError(f"--quantize={fv.quantize} applies to ONNX: use --out=NAME.onnx")
  if fv.calibration and fv.quantize == "none":
    raise cli.UsageError("--calibration calibrates int8 quantisation: add --quantize=int8")
  if fv["int8_float_blocks"].present and fv.quantize == "none":
    raise cli.UsageError("--int8_float_blocks applies to int8 quantisation: add --quantize=int8")
  if kind == "onnx":
    try:
      import onnx  # noqa: F401 -- checked here, so that nothing is loaded in vain.
      import onnxruntime  # noqa: F401
    except ImportError as e:
      raise cli.UsageError(f"ONNX export needs onnx and onnxruntime: {exported.INSTALL}") from e
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax warns on every read-only restore.
  # A damaged checkpoint falls back to one that restores, with a note; none: one line, exit 2.
  config, variables, labels, note = load_run(fv.workdir, fv.checkpoint, fv.config, fv.labels)
  if note:
    print(f"export: note: {note}", file=sys.stderr)
  source = f"{fv.workdir} ({fv.checkpoint})"
  out.parent.mkdir(parents=True, exist_ok=True)
  if kind == "stablehlo":
    out.write_bytes(stablehlo(config, variables))
    meta = export_info(config, labels, source).to_metadata()
    Path(f"{out}.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"export: StableHLO -> {out} (+ {out.name}.json)", file=sys.stderr)
    return cli.EXIT_DONE
  model_bytes = onnx_model(config, variables, labels, source).SerializeToString()
  waveforms = check_waveforms(config)
  difference = max_difference(model_bytes, config, variables, waveforms)
  if not difference <= TOLERANCE:
    raise ValueError(f"the ONNX graph differs from the JAX model by {difference:.2e} > "
                     f"{TOLERANCE:g}: nothing written; please report it with the config")
  if fv.quantize == "int8":
    model_bytes = quantize_int8(model_bytes, calibration_windows(config, fv.calibration),
                                fv.int8_float_blocks)
  out.write_bytes(model_bytes)
  print(f"export: ONNX ({'int8' if fv.quantize == 'int8' else 'float32'}) -> {out}; float "
        f"graph vs JAX: max |difference| {difference:.1e} on {len(waveforms)} waveforms",
        file=sys.stderr)
  return cli.EXIT_DONE


def main(argv: Sequence[str] | None = None) -> int:
  """Exit status: 0 written, 2 a usage or configuration error (one line on stderr)."""
  return cli.run(PROG, _define_flags, _command, argv)


if __name__ == "__main__":
  sys.exit(main())
