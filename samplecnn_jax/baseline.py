"""Classical baselines on a prepared store: MFCC / log-mel statistics with sklearn classifiers.

  python -m samplecnn_jax.baseline --data_dir=prepared/mine [--out_dir=.] \
      [--features=mfcc,mfcc_d,logmel] [--models=lr,svm,mlp] [--metric=auto] [--seed=0]

What a sample-level CNN has to beat on a small dataset of one's own. Every clip becomes one
vector of frame statistics (mean and standard deviation over the whole clip) of

- `mfcc`: 40 MFCCs of 64 log-mel bands (librosa), 25 ms window, 10 ms hop (scaled with the
  store's sample rate: 400 / 160 samples at 16 kHz);
- `mfcc_d`: the same plus their deltas;
- `logmel`: the 64 log-mel bands themselves;

and each feature set is fitted on the train split, standardised (`StandardScaler`), by

- `lr`: logistic regression (C=1);
- `svm`: an RBF SVM (C=1, gamma='scale'), scored by its decision function (softmax over
  classes; per-class sigmoid for multi-label data, so that 0.5 is the SVM's own decision);
- `mlp`: one hidden layer of 256 ReLU units (Adam, seeded).

Hyperparameters are fixed, nothing is tuned: the point is a floor, not a contest. Multi-label
stores get one-vs-rest LR and SVM (the MLP has sigmoid outputs of its own). The valid and test
splits are scored with `evaluate.score_clips`, the function training's evaluation uses, so
`baseline_<split>.json` has the keys of `metrics_<split>.json` (accuracy with the store's
`eval_label_map`, or F-score and ROC/PR-AUC), with the same 95% bootstrap intervals over clips
(`<metric>_ci95`, `evaluate.score_intervals`). Each model's clip scores go to their own
`predictions_<split>_<features>+<model>.npz` beside the JSON (`workdir_files.Predictions`,
the format of a run's `predictions_<split>.npz`), which `python -m samplecnn_jax.compare`
reads to set the models against a run on the same clips.

The engine is `run_baselines(data_dir, ...)`, which returns a `BaselineResult` (for tests and
notebooks); `main(argv)` is the command (`cli.run`: exit 0 done, 2 usage or data error), which
writes `baseline_<split>.json` with the predictions and prints the table.

What this is not for: anything with a GPU, model selection, or the CNN itself; it reads a store
only through `store.Store`.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import librosa
import numpy as np
import threadpoolctl
from absl import flags

from samplecnn_jax import cli, evaluate, metrics, store, workdir_files

FEATURES = ("mfcc", "mfcc_d", "logmel")
MODELS = ("lr", "svm", "mlp")
METRIC_CHOICES = ("auto", *metrics.METRICS)  # auto: by the store's label type.
NUM_MELS = 64  # Log-mel bands (also what the MFCCs are computed from).
NUM_MFCC = 40  # Cepstral coefficients kept.
WINDOW_SECONDS = 0.025  # STFT window: 400 samples at 16 kHz.
HOP_SECONDS = 0.010  # STFT hop: 160 samples at 16 kHz.


# --- Features ---------------------------------------------------------------------------------


def frame_settings(sample_rate: int) -> tuple[int, int]:
  """(n_fft, hop_length) in samples: 25 ms and 10 ms at `sample_rate`."""
  return round(WINDOW_SECONDS * sample_rate), round(HOP_SECONDS * sample_rate)


def _mean_std(frames: np.ndarray) -> np.ndarray:
  """(dims, frames) -> (2 * dims,): the mean and the standard deviation of every row."""
  return np.concatenate([frames.mean(axis=1), frames.std(axis=1)])


def clip_features(audio: np.ndarray, sample_rate: int) -> dict[str, np.ndarray]:
  """All feature sets of one clip (int16 or float audio), as float32 vectors by name.

  Statistics are over every frame of the clip, however long it is; a clip shorter than one
  window is zero-padded to one window, so that it still has frames.
  """
  audio = np.asarray(audio)
  if audio.dtype == np.int16:
    audio = audio.astype(np.float32) / 32768.0
  n_fft, hop = frame_settings(sample_rate)
  if len(audio) < n_fft:
    audio = np.pad(audio, (0, n_fft - len(audio)))
  power = librosa.feature.melspectrogram(
      y=audio, sr=sample_rate, n_fft=n_fft, hop_length=hop, n_mels=NUM_MELS)
  logmel = librosa.power_to_db(power)  # dB, floored 80 dB below the clip's peak.
  mfcc = librosa.feature.mfcc(S=logmel, n_mfcc=NUM_MFCC)
  # 'nearest' works on clips of any number of frames ('interp' needs at least 9).
  deltas = librosa.feature.delta(mfcc, mode="nearest")
  return {
      "mfcc": _mean_std(mfcc).astype(np.float32),
      "mfcc_d": np.concatenate([_mean_std(mfcc), _mean_std(deltas)]).astype(np.float32),
      "logmel": _mean_std(logmel).astype(np.float32),
  }


@dataclasses.dataclass(frozen=True)
class SplitFeatures:
  """The feature matrices of one split, by feature-set name, and its labels."""

  features: dict[str, np.ndarray]  # name -> (clips, dims) float32.
  labels: np.ndarray  # (clips,) class indices (multi-class) or (clips, classes) multi-hot.
  seconds: float  # Wall time of reading and featurising the split.
  clip_ids: tuple[str, ...] = ()  # The store's ids, in the store's order.


def split_features(prepared: store.Store, split: str) -> SplitFeatures:
  """Reads and featurises every clip of `split`, in this process.

  A pool of 2 worker processes did not pay off on a busy 2-core machine: the workers spent
  seconds importing sklearn, librosa and grain, and the 1,200-clip demo train split took 36 s
  instead of 23 s.
  """
  start_time = time.perf_counter()
  manifest = prepared.manifest
  source = prepared.clips(split)
  if len(source) == 0:
    raise ValueError(f"Split {split!r} of {prepared.path} has no clips.")
  rate = manifest.sample_rate
  rows, clip_labels, clip_ids = [], [], []
  for index in range(len(source)):
    clip = source[index]
    rows.append(clip_features(clip["audio"], rate))
    clip_labels.append(clip["labels"])
    clip_ids.append(str(clip["clip_id"]))
  features = {name: np.stack([row[name] for row in rows]) for name in FEATURES}
  num_classes = len(manifest.vocabulary)
  if manifest.label_type == "multi_class":
    labels = np.asarray([int(labels[0]) for labels in clip_labels], np.int64)
  else:
    labels = np.zeros((len(clip_labels), num_classes), np.int64)
    for row, indices in enumerate(clip_labels):
      labels[row, indices] = 1
  return SplitFeatures(features, labels, time.perf_counter() - start_time, tuple(clip_ids))


# --- Models -----------------------------------------------------------------------------------


def make_model(name: str, label_type: str, seed: int = 0):
  """An unfitted sklearn pipeline (StandardScaler + classifier) with fixed hyperparameters."""
  from sklearn.linear_model import LogisticRegression
  from sklearn.multiclass import OneVsRestClassifier
  from sklearn.neural_network import MLPClassifier
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  from sklearn.svm import SVC

  if name == "lr":
    classifier = LogisticRegression(C=1.0, max_iter=1000)
  elif name == "svm":
    classifier = SVC(kernel="rbf", C=1.0, gamma="scale")
  elif name == "mlp":
    classifier = MLPClassifier(hidden_layer_sizes=(256,), max_iter=1000, random_state=seed)
  else:
    raise ValueError(f"Unknown model {name!r}; choose from {', '.join(MODELS)}.")
  if label_type == "multi_label" and name != "mlp":
    classifier = OneVsRestClassifier(classifier)
  return make_pipeline(StandardScaler(), classifier)


def _softmax(x: np.ndarray) -> np.ndarray:
  x = x - x.max(axis=1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=1, keepdims=True)


def clip_scores(model, features: np.ndarray, label_type: str, num_classes: int) -> np.ndarray:
  """(clips, num_classes) scores in [0, 1] of a fitted `make_model` pipeline.

  Probabilities where the classifier has them; for the SVM, its decision function through a
  softmax (multi-class) or a sigmoid (multi-label). A multi-class model trained on fewer
  classes than the vocabulary scores the missing ones 0; a multi-label class that is always
  (or never) present in training is scored 1 (or 0): see `run_baselines`.
  """
  probabilities = hasattr(model, "predict_proba")  # SVC has only a decision function.
  if label_type == "multi_label":
    if probabilities:
      return model.predict_proba(features)
    return 1.0 / (1.0 + np.exp(-model.decision_function(features)))
  present = np.asarray(model[-1].classes_, np.int64)
  if not probabilities:
    decision = model.decision_function(features)
    if decision.ndim == 1:  # Two classes: one margin, positive for classes_[1].
      decision = np.stack([-decision, decision], axis=1)
    present_scores = _softmax(decision)
  else:
    present_scores = model.predict_proba(features)
  scores = np.zeros((len(features), num_classes))
  scores[:, present] = present_scores
  return scores


# --- Scoring ----------------------------------------------------------------------------------


def metric_kinds(label_type: str, metric: str = "auto") -> tuple[str, ...]:
  """The `metrics.compute_metrics` kinds to report for a store's label type.

  auto: accuracy for multi-class stores, F-score and ROC/PR-AUC for multi-label ones.
  """
  if metric not in METRIC_CHOICES:
    raise ValueError(f"Unknown metric {metric!r}; choose from {', '.join(METRIC_CHOICES)}.")
  if metric == "auto":
    return ("accuracy",) if label_type == "multi_class" else ("f_score", "roc_auc")
  if metric == "accuracy" and label_type != "multi_class":
    raise ValueError(
        f"metric 'accuracy' needs a multi_class store, this one is {label_type}; use "
        f"--metric=f_score, roc_auc, pr_auc or auto.")
  return (metric,)


def score_split(scores: np.ndarray, labels: np.ndarray, kinds: Sequence[str],
                eval_label_map: list[int] | None, f_score_threshold: float) -> dict[str, Any]:
  """The numbers training writes for a split (same keys): `evaluate.score_clips` and
  `evaluate.score_intervals` per kind."""
  result: dict[str, Any] = {}
  options = {"eval_label_map": eval_label_map, "f_score_threshold": f_score_threshold}
  for kind in kinds:
    result.update(evaluate.score_clips(labels, scores, kind, **options))
  for kind in kinds:
    result.update(evaluate.score_intervals(labels, scores, kind, **options))
  return result


@dataclasses.dataclass
class BaselineResult:
  """What `run_baselines` produced: per split, per model (`<features>+<model>`), the metrics
  and the clip scores behind them."""

  scores: dict[str, dict[str, dict[str, Any]]]  # split -> name -> metrics.
  fit_seconds: dict[str, float]  # name -> seconds to fit on the train split.
  score_seconds: dict[str, float]  # name -> seconds to score all evaluation splits.
  feature_seconds: dict[str, float]  # split -> seconds to read and featurise it.
  kinds: tuple[str, ...]  # The metric kinds reported.
  predictions: dict[str, dict[str, workdir_files.Predictions]] = dataclasses.field(
      default_factory=dict)  # split -> name -> clip scores.


def _check_names(kind: str, names: Sequence[str], valid: Sequence[str]) -> tuple[str, ...]:
  names = tuple(names)
  unknown = [name for name in names if name not in valid]
  if unknown or not names:
    raise ValueError(f"Unknown or no {kind} {unknown or names}; choose from {', '.join(valid)}.")
  return names


# One BLAS/OpenMP thread: these matrices are small, and on a busy 2-core machine two spinning
# BLAS threads made a whole run 3.5x slower (same results).
@threadpoolctl.threadpool_limits.wrap(limits=1)
def run_baselines(data_dir: str | Path, *, features: Sequence[str] = FEATURES,
                  models: Sequence[str] = MODELS, metric: str = "auto", seed: int = 0,
                  train_split: str = "train", eval_splits: Sequence[str] = ("valid", "test"),
                  f_score_threshold: float = 0.5,
                  progress: Callable[[str], None] | None = None) -> BaselineResult:
  """Fits every feature set x model on `train_split` and scores `eval_splits`.

  For every evaluation split, one entry per model, `"<features>+<model>"`, holding
  `features`, `model`, `num_clips`, the metric keys and their intervals, and the clip scores
  (`write_results` writes them as `baseline_<split>.json` and the predictions files).
  `progress(message)` is called after each step. Raises ValueError (naming the store's
  splits) when a split is missing, before any work is done.
  """
  features = _check_names("feature sets", features, FEATURES)
  models = _check_names("models", models, MODELS)
  prepared = store.Store.open(data_dir)
  manifest = prepared.manifest
  label_type = manifest.label_type
  kinds = metric_kinds(label_type, metric)
  splits = (train_split, *eval_splits)
  for split in splits:
    prepared.split_info(split)  # Raises, naming the splits the store has.
  say = progress or (lambda message: None)
  data = {}
  for split in splits:
    data[split] = split_features(prepared, split)
    say(f"features of {split}: {len(data[split].labels)} clips, {data[split].seconds:.1f} s")
  train = data[train_split]
  if label_type == "multi_class" and len(np.unique(train.labels)) < 2:
    raise ValueError(f"Split {train_split!r} of {data_dir} has fewer than 2 classes.")
  num_classes = len(manifest.vocabulary)
  # Multi-label classes that training never (or always) sees.
  constant = train.labels.min(axis=0) == train.labels.max(axis=0)
  scores: dict[str, dict[str, dict[str, Any]]] = {split: {} for split in eval_splits}
  predictions: dict[str, dict[str, workdir_files.Predictions]] = {s: {} for s in eval_splits}
  fit_seconds, score_seconds = {}, {}
  for feature_set in features:
    for model_name in models:
      name = f"{feature_set}+{model_name}"
      model = make_model(model_name, label_type, seed)
      start = time.perf_counter()
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(train.features[feature_set], train.labels)
      fit_seconds[name] = time.perf_counter() - start
      for warning in {str(w.message).split("\n")[0] for w in caught}:
        say(f"{name}: warning while fitting: {warning}")
      start = time.perf_counter()
      for split in eval_splits:
        split_scores = clip_scores(model, data[split].features[feature_set], label_type,
                                   num_classes)
        if label_type == "multi_label":  # One-vs-rest fits a constant there; SVM margin 0.
          split_scores[:, constant] = train.labels[0, constant]
        scores[split][name] = {
            "features": feature_set, "model": model_name,
            **score_split(split_scores, data[split].labels, kinds,
                          manifest.eval_label_map, f_score_threshold)}
        predictions[split][name] = workdir_files.Predictions.of(
            data[split].clip_ids, data[split].labels, split_scores, label_type=label_type,
            metric=kinds[0], f_score_threshold=f_score_threshold,
            eval_label_map=manifest.eval_label_map)
      score_seconds[name] = time.perf_counter() - start
      say(f"{name}: fit {fit_seconds[name]:.2f} s, scored in {score_seconds[name]:.2f} s")
  return BaselineResult(scores, fit_seconds, score_seconds,
                        {split: data[split].seconds for split in splits}, kinds, predictions)


def write_results(result: BaselineResult, out_dir: str | Path) -> list[Path]:
  """Writes `baseline_<split>.json` into `out_dir` for every scored split, and each model's
  `predictions_<split>_<name>.npz` beside it; returns the JSON paths."""
  paths = []
  for split, entries in result.scores.items():
    for name, predictions in result.predictions.get(split, {}).items():
      predictions.save(workdir_files.predictions_path(out_dir, split, name))
    path = Path(out_dir) / f"baseline_{split}.json"
    store.write_json(path, entries)
    paths.append(path)
  return paths


# --- Command line -----------------------------------------------------------------------------

def format_table(result: BaselineResult) -> str:
  """A plain-text table: one row per model, a column per split x headline metric (with its
  95% interval), times."""
  keys = [key for kind in result.kinds for key in metrics.HEADLINE[kind]]
  keys = list(dict.fromkeys(keys))
  splits = list(result.scores)
  names = list(result.fit_seconds)
  header = ["model"] + [f"{split} {key}" for split in splits for key in keys] + ["fit s", "score s"]
  rows = [header]
  for name in names:
    row = [name] + [_with_interval(result.scores[split][name], key)
                    for split in splits for key in keys]
    rows.append(row + [f"{result.fit_seconds[name]:.2f}", f"{result.score_seconds[name]:.2f}"])
  widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
  lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                     for i, (cell, w) in enumerate(zip(row, widths, strict=True))) for row in rows]
  lines.insert(1, "-" * len(lines[0]))
  return "\n".join(lines)


def _with_interval(entry: dict[str, Any], key: str) -> str:
  interval = entry.get(f"{key}_ci95")
  if interval is None:
    return f"{entry[key]:.3f}"
  return f"{entry[key]:.3f} ({interval[0]:.3f}-{interval[1]:.3f})"


def _define_flags(flag_values: flags.FlagValues) -> None:
  flags.DEFINE_string("data_dir", None, "Prepared store (output of samplecnn_jax.prepare).",
                      flag_values=flag_values)
  flags.DEFINE_string("out_dir", ".", "Folder for baseline_<split>.json and the predictions.",
                      flag_values=flag_values)
  flags.DEFINE_list("features", list(FEATURES), f"Feature sets: {', '.join(FEATURES)}.",
                    flag_values=flag_values)
  flags.DEFINE_list("models", list(MODELS), f"Models: {', '.join(MODELS)}.",
                    flag_values=flag_values)
  flags.DEFINE_enum("metric", "auto", list(METRIC_CHOICES),
                    "Metrics: auto = accuracy (multi-class store) or f_score and roc_auc "
                    "(multi-label store).", flag_values=flag_values)
  flags.DEFINE_float("f_score_threshold", 0.5, "Decision threshold of the F-scores.",
                     flag_values=flag_values)
  flags.DEFINE_string("train_split", "train", "Split the models are fitted on.",
                      flag_values=flag_values)
  flags.DEFINE_list("eval_splits", ["valid", "test"], "Splits scored.", flag_values=flag_values)
  flags.DEFINE_integer("seed", 0, "Seed of the MLP.", flag_values=flag_values)


def _command(f: flags.FlagValues, args: list[str]) -> int:
  if not f.data_dir:
    raise cli.UsageError("--data_dir is required: a store written by `python -m "
                         "samplecnn_jax.prepare`")
  start = time.perf_counter()
  result = run_baselines(f.data_dir, features=f.features, models=f.models, metric=f.metric,
                         seed=f.seed, train_split=f.train_split, eval_splits=f.eval_splits,
                         f_score_threshold=f.f_score_threshold,
                         progress=lambda message: print(message, flush=True))
  paths = write_results(result, f.out_dir)
  print(format_table(result))
  print(f"Total {time.perf_counter() - start:.1f} s (features "
        f"{sum(result.feature_seconds.values()):.1f} s). Wrote "
        f"{', '.join(str(p) for p in paths)}")
  return cli.EXIT_DONE


def main(argv: Sequence[str] | None = None) -> int:
  """Command line: `python -m samplecnn_jax.baseline --data_dir=STORE [...]`; the exit code."""
  return cli.run("python -m samplecnn_jax.baseline", _define_flags, _command, argv)


if __name__ == "__main__":
  sys.exit(main())
