"""Decoding audio files to mono float32 at a target rate, with a clear error for bad files.

`load_audio` reads WAV, FLAC, OGG/Vorbis, MP3 (and the other formats libsndfile knows) with
soundfile, reading only the frames a clip needs, mixes channels to mono and resamples with
soxr through librosa. Every way a file can be unusable (missing or a broken symlink,
unreadable, empty, not audio, truncated, undecodable, NaN samples) raises `AudioError`, whose
`kind` and `reason` end up in `prepare`'s report. File names that are not valid UTF-8 are
opened by their bytes (`os.fsencode`), so they read like any other. `AudioFile` decodes
windows of a long file without reading the rest. librosa 1.0 decodes through soundfile only
(no audioread), so there is no second decoder to fall back on: formats libsndfile cannot read
(AAC/M4A, WMA) are reported as `unsupported_format`.

This module only decodes: it imports no other module of the project, writes no files, and
knows no datasets, segments or models (how a clip becomes model inputs is `segments.py`).
"""

from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path

import numpy as np
import soundfile as sf

# Extensions the dataset listers treat as audio. Those libsndfile cannot decode still get
# listed, so that they show up in the report instead of being silently ignored.
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc",
        ".au", ".snd", ".caf", ".w64", ".rf64", ".m4a", ".aac", ".wma",
    }
)  # fmt: skip

INT16_SCALE = np.float32(1.0 / 32768.0)  # int16 PCM -> float32 in [-1, 1).
RESAMPLE_TYPE = "soxr_hq"  # librosa's default: soxr high quality.

# AudioError kinds, as counted in report.json.
ERROR_KINDS = (
    "missing", "unreadable", "empty", "unsupported_format", "truncated", "corrupt", "invalid",
)  # fmt: skip

# libsndfile logs "data : 64000 (should be 31978)" when a WAV header promises more audio
# than the file holds; it then quietly returns the shorter audio.
_WAV_SHORT_DATA = re.compile(r"\bdata\s*:\s*(\d+)\s*\(should be (\d+)\)")
_STREAMED_WAV_SIZES = (0, 0xFFFFFFFF, 0x7FFFFFFF)  # "Unknown length" markers of piped WAVs.
# MP3 frame counts are estimates (Xing header or bitrate): allow 2 MPEG frames or 1 %.
_MP3_SLACK_FRAMES = 2 * 1152


class AudioError(Exception):
  """An audio file that cannot be used, with the kind of problem and a readable reason."""

  def __init__(self, path: str | os.PathLike, kind: str, reason: str):
    assert kind in ERROR_KINDS, kind
    super().__init__(f"{path}: {reason}")
    self.path = str(path)
    self.kind = kind
    self.reason = reason


def to_int16(audio: np.ndarray) -> np.ndarray:
  """Float audio in [-1, 1] to int16 PCM (clipped); int16 input read as float round-trips."""
  scaled = np.rint(np.asarray(audio, dtype=np.float32) * 32768.0)
  return np.clip(scaled, -32768, 32767).astype(np.int16)


def to_float32(pcm: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
  """PCM samples as float32 in [-1, 1): the inverse of `to_int16`, and the one conversion.

  Integers of any width are scaled by their full range (unsigned ones centred first); float
  input is copied as float32. int16, the store's format, takes one vectorised pass, written
  into `out` when given (the input pipeline fills its batches in place).
  """
  pcm = np.asarray(pcm)
  if pcm.dtype == np.int16:
    return np.multiply(pcm, INT16_SCALE, out=out, dtype=np.float32)
  if np.issubdtype(pcm.dtype, np.unsignedinteger):
    half = 2.0 ** (8 * pcm.dtype.itemsize - 1)
    pcm = (pcm.astype(np.float64) - half) / half
  elif np.issubdtype(pcm.dtype, np.integer):
    pcm = pcm / np.float64(2.0 ** (8 * pcm.dtype.itemsize - 1))
  elif not np.issubdtype(pcm.dtype, np.floating):
    raise ValueError(f"Expected integer or float audio samples, got dtype {pcm.dtype}.")
  if out is None:
    return pcm.astype(np.float32)
  out[...] = pcm
  return out


def mix_to_mono(frames: np.ndarray) -> np.ndarray:
  """(frames, channels) or (frames,) to (frames,) by averaging the channels."""
  frames = np.asarray(frames, dtype=np.float32)
  return frames if frames.ndim == 1 else frames.mean(axis=1, dtype=np.float32)


def resample(audio: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
  """Resamples 1-D audio with soxr (via librosa); output length is ceil(n * target / orig)."""
  if orig_sr == target_sr:
    return np.asarray(audio, dtype=np.float32)
  import librosa  # Imported lazily: it pulls in scipy, and 16 kHz sources never need it.

  out = librosa.resample(
      np.asarray(audio, dtype=np.float32),
      orig_sr=orig_sr,
      target_sr=target_sr,
      res_type=RESAMPLE_TYPE,
  )
  return np.ascontiguousarray(out, dtype=np.float32)


def _as_path(path: str | bytes | os.PathLike) -> Path:
  """A Path from str, bytes (decoded with surrogate escapes, as `os.fsdecode`) or PathLike."""
  return Path(os.fsdecode(path))


def _decoder_name(path: Path) -> str:
  """The decoder libsndfile picks for a file, named by its extension (for messages)."""
  return path.suffix.lower().lstrip(".") or "audio"


def _open(path: Path) -> sf.SoundFile:
  """`sf.SoundFile` on the path's file-system bytes (`os.fsencode`), so that names that are
  not valid UTF-8 (surrogate-escaped by `os.fsdecode`) open like any other."""
  try:
    return sf.SoundFile(os.fsencode(path))
  except sf.LibsndfileError as e:
    message = e.error_string
    if "not recognised" in message or "unknown format" in message.lower():
      raise AudioError(
          path,
          "unsupported_format",
          f"not an audio format libsndfile {sf.__libsndfile_version__} can read ({message}); "
          "convert it to WAV or FLAC, e.g. `ffmpeg -i IN OUT.wav`",
      ) from None
    # `_open_checked` has already opened the file itself, so libsndfile's "File does not
    # exist" (what its MP3 decoder says of garbage) or "System error" is its decoder giving
    # up on the bytes, not a missing file.
    raise AudioError(
        path,
        "corrupt",
        f"not a readable audio file ({_decoder_name(path)} decoder: libsndfile "
        f"{sf.__libsndfile_version__} error {e.code}, the file's bytes are not audio it "
        "can decode)",
    ) from None
  except Exception as e:  # soundfile can raise RuntimeError/TypeError on odd headers.
    raise AudioError(path, "corrupt", f"cannot open: {type(e).__name__}: {e}") from None


def _check_file(path: Path) -> None:
  """Raises `AudioError` saying why `path` cannot be read as a file, before libsndfile (whose
  messages for these cases are "File does not exist" or "System error")."""
  try:
    info = os.stat(path)
  except FileNotFoundError:
    if os.path.islink(path):
      target = os.fsdecode(os.readlink(path))
      raise AudioError(
          path, "missing", f"broken symbolic link: it points to {target}, which does not exist"
      ) from None
    raise AudioError(path, "missing", "file not found") from None
  except PermissionError:
    raise AudioError(
        path, "unreadable", "permission denied: a folder on its path cannot be searched"
    ) from None
  except OSError as e:
    raise AudioError(path, "unreadable", f"cannot stat the file: {e.strerror}") from None
  if not stat.S_ISREG(info.st_mode):
    raise AudioError(path, "missing", "not a regular file (a folder, pipe or device)")
  if info.st_size == 0:
    raise AudioError(path, "empty", "file is empty (0 bytes)")
  try:
    with open(path, "rb") as f:
      f.read(1)
  except PermissionError:
    raise AudioError(
        path, "unreadable", "permission denied: the file is not readable by this user "
        "(e.g. `chmod a+r FILE`)"
    ) from None
  except OSError as e:
    raise AudioError(path, "unreadable", f"cannot read the file: {e.strerror}") from None


def _open_checked(path: Path) -> sf.SoundFile:
  """Opens `path` for reading, first raising `AudioError` for a missing, unreadable, empty
  or truncated file (a WAV whose header promises more audio than the file holds)."""
  _check_file(path)
  f = _open(path)
  try:
    if f.frames <= 0:
      raise AudioError(path, "empty", "the file holds no audio frames")
    missing = _wav_missing_bytes(f)
    if missing:
      raise AudioError(
          path, "truncated",
          f"truncated: header declares {missing[0]} bytes of audio data, file holds {missing[1]}",
      )
  except AudioError:
    f.close()
    raise
  return f


def _wav_missing_bytes(f: sf.SoundFile) -> tuple[int, int] | None:
  """(declared, present) audio bytes when a WAV-like header promises more than the file has."""
  match = _WAV_SHORT_DATA.search(f.extra_info)
  if not match:
    return None
  declared, present = int(match.group(1)), int(match.group(2))
  if declared in _STREAMED_WAV_SIZES or declared <= present:
    return None
  return declared, present


def load_audio(
    path: str | os.PathLike,
    sample_rate: int,
    offset: float = 0.0,
    duration: float | None = None,
) -> np.ndarray:
  """Decodes `duration` seconds from `offset` of an audio file as mono float32 at `sample_rate`.

  Only the needed frames are read. A `duration` that runs past the end of the file returns
  the audio up to the end (not an error); an `offset` at or past the end is `invalid`.

  Raises:
    AudioError: the file is missing, empty, not audio, truncated, undecodable or has
      non-finite samples; `kind` says which and `reason` says what was found.
    ValueError: negative `offset`, non-positive `duration` or `sample_rate` (caller bugs).
  """
  if sample_rate <= 0 or offset < 0 or (duration is not None and duration <= 0):
    raise ValueError(
        f"need sample_rate > 0, offset >= 0, duration > 0 or None; got {sample_rate}, "
        f"{offset}, {duration} for {path}"
    )
  path = _as_path(path)
  with _open_checked(path) as f:
    native_sr, declared = f.samplerate, f.frames
    start = int(round(offset * native_sr))
    if start >= declared:
      raise AudioError(
          path,
          "invalid",
          f"offset {offset:.3f} s is at or past the end of the file ({declared / native_sr:.3f} s)",
      )
    wanted = declared - start
    if duration is not None:
      wanted = min(wanted, int(round(duration * native_sr)))
    try:
      if start:
        f.seek(start)
      frames = f.read(wanted, dtype="float32", always_2d=True)
    except Exception as e:
      reason = e.error_string if isinstance(e, sf.LibsndfileError) else f"{type(e).__name__}: {e}"
      reason = f"decoding failed (truncated or corrupt?): {reason}"
      raise AudioError(path, "corrupt", reason) from None
    slack = max(_MP3_SLACK_FRAMES, wanted // 100) if f.format == "MP3" else 0

  if len(frames) == 0:
    raise AudioError(path, "empty", "decoded no audio frames")
  if len(frames) < wanted - slack:
    raise AudioError(
        path,
        "truncated",
        f"truncated: decoded {len(frames)} of the {wanted} frames the header declares",
    )
  if not np.isfinite(frames).all():
    raise AudioError(path, "invalid", "contains NaN or infinite samples")
  return resample(mix_to_mono(frames), native_sr, sample_rate)


def _resample_margin(native_sr: int) -> int:
  """Native frames read either side of a window so soxr's filter sees the same context as
  when it resamples the whole file (its half-length is well under 0.05 s)."""
  return max(256, native_sr // 20)


class AudioFile:
  """An audio file opened for reading windows of it at a target rate, decoding only their frames.

  `read` seeks to a window, reads it with a margin for the resampling filter, mixes it to
  mono and resamples it on its own, so a window of a 20-minute file costs what one of a
  1-second file does and equals (within resampling round-off) the same samples of
  `load_audio` on the whole file. Opening raises `AudioError` as `load_audio` does for
  missing, empty or truncated files; use it as a context manager (or `close` it).
  """

  def __init__(self, path: str | bytes | os.PathLike):
    self.path = _as_path(path)
    self._file = _open_checked(self.path)
    self.native_rate = self._file.samplerate
    self.frames = self._file.frames  # Native frames, as the header declares them.
    self._slack = _MP3_SLACK_FRAMES if self._file.format == "MP3" else 0

  @property
  def seconds(self) -> float:
    return self.frames / self.native_rate

  def num_samples(self, sample_rate: int) -> int:
    """The file's length in samples once resampled to `sample_rate`."""
    return math.ceil(self.frames * sample_rate / self.native_rate)

  def read(self, start: int, size: int, sample_rate: int) -> np.ndarray:
    """Mono float32 samples [start, start + size) at `sample_rate` (fewer at the end of the file).

    Raises `AudioError` when the frames cannot be decoded, are missing (truncated) or are
    not finite.
    """
    native_sr = self.native_rate
    step = native_sr // math.gcd(native_sr, sample_rate)  # Native frames per aligned block.
    out_step = sample_rate // math.gcd(native_sr, sample_rate)
    margin = _resample_margin(native_sr)
    lo = max(0, (int(start) * native_sr // sample_rate - margin) // step * step)
    hi = min(self.frames, math.ceil((int(start) + size) * native_sr / sample_rate) + margin)
    try:
      self._file.seek(lo)
      frames = self._file.read(hi - lo, dtype="float32", always_2d=True)
    except Exception as e:
      reason = e.error_string if isinstance(e, sf.LibsndfileError) else f"{type(e).__name__}: {e}"
      raise AudioError(
          self.path, "corrupt", f"decoding failed (truncated or corrupt?): {reason}"
      ) from None
    if len(frames) < (hi - lo) - self._slack:
      raise AudioError(
          self.path, "truncated",
          f"truncated: decoded {lo + len(frames)} of the {self.frames} frames the header "
          "declares",
      )
    if not np.isfinite(frames).all():
      raise AudioError(self.path, "invalid", "contains NaN or infinite samples")
    block = resample(mix_to_mono(frames), native_sr, sample_rate)
    first = int(start) - lo // step * out_step
    return block[first : first + size]

  def close(self) -> None:
    self._file.close()

  def __enter__(self) -> AudioFile:
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
