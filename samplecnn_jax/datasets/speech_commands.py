"""Speech Commands v0.01 as downloaded: `<word>/<speaker>_nohash_<n>.wav` plus the split lists.

Lists the clips for the paper's protocol: 31 training classes (the 30 words and `_silence_`),
scored as 12 classes at test (`_silence_`, `_unknown_` and the 10 commands; the other 20
words count as `_unknown_`). Every split keeps 31-class labels; the listing carries the
12-class `eval_vocabulary` and the `eval_label_map` that scoring applies. Silence examples
are 1-s crops of the `_background_noise_` recordings, and the recordings themselves form the
`background_noise` split for noise augmentation (labelled `_silence_`, the class they are the
source of; the input pipeline uses only their audio). The separate official test archive can
replace the test split (`--test_src`). Nothing is decoded here except wav headers (to know
how long the noise recordings are).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soundfile
from absl import flags

from samplecnn_jax.datasets import common
from samplecnn_jax.datasets.common import ClipSpec, LayoutError, Listing

SILENCE = "_silence_"
UNKNOWN = "_unknown_"
NOISE_DIR = "_background_noise_"
VALIDATION_LIST = "validation_list.txt"
TESTING_LIST = "testing_list.txt"
COMMANDS = ("yes", "no", "up", "down", "left", "right", "on", "off", "stop", "go")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
AUXILIARY = ("bed", "bird", "cat", "dog", "happy", "house", "marvin", "sheila", "tree", "wow")
WORDS = COMMANDS + DIGITS + AUXILIARY  # The 30 word folders of v0.01.
VOCABULARY = (SILENCE, *WORDS)  # The 31 training classes.
EVAL_VOCABULARY = (SILENCE, UNKNOWN, *COMMANDS)  # The 12 test classes, in TensorFlow's order.
# Training class index -> test class index (the 20 non-command words -> _unknown_).
EVAL_LABEL_MAP = tuple(EVAL_VOCABULARY.index(c) if c in EVAL_VOCABULARY else 1 for c in VOCABULARY)
SPLIT_RULES = ("lists", "paper")
SILENCE_PERCENTAGE = 10.0  # TensorFlow's default.
SEED = 59185  # TensorFlow's default random seed for the data partition.


def define_flags(flag_values: flags.FlagValues) -> None:
  """The `prepare speech_commands` flags: the options of `list_clips`."""
  common.define_lister_flags(flag_values, list_clips, {
      "split_rule": "lists: train / validation_list / testing_list. paper: the testing_list "
                    "clips join train (the paper's 57,929 training files; it tested on "
                    "Kaggle's leaderboard).",
      "test_src": "The extracted official test archive speech_commands_test_set_v0.01 "
                  "(folders _silence_, _unknown_ and the 10 commands): it becomes the test "
                  "split; with --split_rule lists the testing_list clips become split dev_test.",
      "silence_percentage": "Silence crops per split, in percent of the split's word clips.",
      "seed": "Seed for the silence crops.",
  }, choices={"split_rule": SPLIT_RULES})


def _read_list(path: Path) -> set[str]:
  return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _noise_recordings(
    noise_dir: Path, skipped: list[dict[str, str]]
) -> list[tuple[Path, int, int]]:
  """(path, frames, sample rate) of each readable noise wav, from its header only."""
  recordings = []
  for path in sorted(noise_dir.glob("*.wav")):
    try:
      info = soundfile.info(str(path))
    except (RuntimeError, OSError) as error:
      skipped.append({"source": f"{NOISE_DIR}/{path.name}", "reason": f"unreadable: {error}"})
      continue
    recordings.append((path, info.frames, info.samplerate))
  return recordings


def silence_crops(
    recordings: list[tuple[Path, int, int]], counts: dict[str, int], seed: int
) -> list[ClipSpec]:
  """`counts[split]` random 1-s crops of the noise recordings per split, labelled silence.

  Deterministic for a seed: a recording is drawn uniformly, then a start sample uniformly.
  """
  usable = [(path, frames, rate) for path, frames, rate in recordings if frames >= rate]
  if any(counts.values()) and not usable:
    raise LayoutError(f"No {NOISE_DIR} recording of at least 1 s to crop silence from.")
  rng = np.random.default_rng(seed)
  crops = []
  for split, count in counts.items():
    for i in range(count):
      path, frames, rate = usable[rng.integers(len(usable))]
      start = int(rng.integers(frames - rate + 1))
      crops.append(
          ClipSpec(
              clip_id=f"{SILENCE}/{split}-{i:05d}",
              path=str(path),
              split=split,
              labels=(0,),
              offset=start / rate,
              duration=1.0,
              source=f"{NOISE_DIR}/{path.name}",
          )
      )
  return crops


def list_test_archive(test_src: Path, skipped: list[dict[str, str]]) -> list[ClipSpec]:
  """The official test archive: `_silence_/`, `_unknown_/<word>_<speaker>_nohash_<n>.wav`
  and one folder per command. Unknown clips keep their original word as label."""
  if not ((test_src / SILENCE).is_dir() and (test_src / UNKNOWN).is_dir()):
    raise LayoutError(
        f"--test_src {test_src}: expected the folders {SILENCE}/, {UNKNOWN}/ and the 10 command "
        "folders of speech_commands_test_set_v0.01.tar.gz."
    )
  clips = []
  for folder in sorted(p for p in test_src.iterdir() if p.is_dir()):
    if folder.name not in (SILENCE, UNKNOWN, *COMMANDS):
      skipped.append({"source": f"test_set/{folder.name}", "reason": "not a test archive folder"})
      continue
    for path in sorted(folder.glob("*.wav")):
      word = path.name.split("_", 1)[0] if folder.name == UNKNOWN else folder.name
      source = f"test_set/{folder.name}/{path.name}"
      if word not in VOCABULARY or (folder.name == UNKNOWN and word in COMMANDS):
        skipped.append({"source": source, "reason": f"unknown-word clip of {word!r}"})
        continue
      clips.append(ClipSpec(source, str(path), "test", (VOCABULARY.index(word),), source=source))
  return clips


def list_clips(
    src: Path,
    split_rule: str = "lists",
    test_src: str | None = None,
    silence_percentage: float = SILENCE_PERCENTAGE,
    seed: int = SEED,
) -> Listing:
  """Lists Speech Commands v0.01 under `src` (the extracted speech_commands_v0.01.tar.gz)."""
  src = Path(src).absolute()
  if split_rule not in SPLIT_RULES:
    raise ValueError(f"--split_rule {split_rule!r}: choose one of {', '.join(SPLIT_RULES)}.")
  if silence_percentage < 0:
    raise ValueError(f"--silence_percentage must be >= 0, got {silence_percentage}.")
  if (src / UNKNOWN).is_dir() and not (src / VALIDATION_LIST).exists():
    raise LayoutError(
        f"{src} looks like the separate test archive: pass the training archive as --src and "
        "this folder as --test_src."
    )
  missing = [name for name in (VALIDATION_LIST, TESTING_LIST) if not (src / name).is_file()]
  missing += [f"{word}/" for word in WORDS if not (src / word).is_dir()]
  if missing:
    raise LayoutError(
        f"{src} is not the extracted speech_commands_v0.01.tar.gz: missing {', '.join(missing)}."
    )
  noise_dir = src / NOISE_DIR
  if silence_percentage > 0 and not any(noise_dir.glob("*.wav")):
    raise LayoutError(
        f"Expected the noise recordings {noise_dir}/*.wav to crop silence from "
        "(or pass --silence_percentage 0)."
    )
  test_archive = Path(test_src).absolute() if test_src else None
  skipped: list[dict[str, str]] = []
  test_clips = list_test_archive(test_archive, skipped) if test_archive else []

  # --- Word clips, split by the list files --------------------------------------------------
  validation, testing = _read_list(src / VALIDATION_LIST), _read_list(src / TESTING_LIST)
  testing_split = "train" if split_rule == "paper" else "dev_test" if test_archive else "test"
  clips = []
  for word in WORDS:
    for path in sorted((src / word).glob("*.wav")):
      source = f"{word}/{path.name}"
      split = "valid" if source in validation else testing_split if source in testing else "train"
      clips.append(ClipSpec(source, str(path), split, (VOCABULARY.index(word),), source=source))
  present = {clip.source for clip in clips}
  for name, listed in ((VALIDATION_LIST, validation), (TESTING_LIST, testing)):
    for source in sorted(listed - present):
      skipped.append({"source": source, "reason": f"listed in {name}, file missing"})
  for folder in sorted(p.name for p in src.iterdir() if p.is_dir()):
    if folder not in WORDS and folder != NOISE_DIR and not folder.startswith("."):
      skipped.append({"source": f"{folder}/", "reason": "not a v0.01 word folder, not used"})

  # --- Silence crops per split, and the noise recordings themselves ------------------------
  recordings = _noise_recordings(noise_dir, skipped) if noise_dir.is_dir() else []
  splits = ("train", "valid", "test", "dev_test")
  word_counts = {split: sum(clip.split == split for clip in clips) for split in splits}
  silence_counts = {
      split: math.ceil(count * silence_percentage / 100)
      for split, count in word_counts.items()
      if count
  }
  clips += silence_crops(recordings, silence_counts, seed)
  for path, _, _ in recordings:  # Whole recordings, for noise augmentation.
    source = f"{NOISE_DIR}/{path.name}"
    clips.append(ClipSpec(source, str(path), "background_noise", (0,), source=source))
  clips += test_clips
  if test_archive:
    test_source = f"official test archive {test_archive}"
  else:
    test_source = "none" if split_rule == "paper" else TESTING_LIST
  return common.published_listing(
      "speech_commands", VOCABULARY, "multi_class", clips, skipped,
      version="v0.01", split_rule=split_rule,
      details={
          "test_source": test_source,
          "silence_percentage": silence_percentage,
          "silence_clips": silence_counts,
          "seed": seed,
      },
      eval_vocabulary=EVAL_VOCABULARY,
      eval_label_map=EVAL_LABEL_MAP,
  )
