"""Tests for samplecnn_jax.audio: decoding, mono mixing, resampling, and bad-file errors."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from samplecnn_jax import audio
from samplecnn_jax.audio import AudioError, load_audio

MP3_SUPPORTED = "MP3" in sf.available_formats()


def _sine(freq: float, seconds: float, rate: int, amplitude: float = 0.5) -> np.ndarray:
  return (amplitude * np.sin(2 * np.pi * freq * np.arange(int(seconds * rate)) / rate)).astype(
      np.float32
  )


def _peak_hz(x: np.ndarray, rate: int) -> float:
  spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
  return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


def test_to_int16_scales_and_clips():
  x = np.array([-2.0, -1.0, -0.5, 0.0, 0.5, 0.99999, 1.0, 2.0], np.float32)
  np.testing.assert_array_equal(
      audio.to_int16(x), [-32768, -32768, -16384, 0, 16384, 32767, 32767, 32767]
  )
  pcm = np.array([-32768, -1, 0, 1, 32767], np.int16)
  np.testing.assert_array_equal(audio.to_int16(audio.to_float32(pcm)), pcm)


def test_to_float32_scales_every_integer_width_and_fills_out():
  pcm = np.array([-32768, -16384, 0, 16384, 32767], np.int16)
  expected = np.array([-1.0, -0.5, 0.0, 0.5, 32767 / 32768], np.float32)
  np.testing.assert_array_equal(audio.to_float32(pcm), expected)
  out = np.full(5, 7.0, np.float32)
  assert audio.to_float32(pcm, out=out) is out
  np.testing.assert_array_equal(out, expected)
  # 8-bit WAV is unsigned, centred on 128; int32 spans +-2^31.
  np.testing.assert_array_equal(audio.to_float32(np.array([0, 128, 192], np.uint8)), [-1, 0, 0.5])
  np.testing.assert_array_equal(audio.to_float32(np.array([-2**31, 2**30], np.int32)), [-1, 0.5])
  floats = np.array([0.25, -2.0], np.float64)
  assert audio.to_float32(floats).dtype == np.float32
  with pytest.raises(ValueError, match="integer or float audio samples"):
    audio.to_float32(np.array([True, False]))


def test_int16_wav_at_target_rate_round_trips_exactly(tmp_path):
  pcm = np.random.default_rng(0).integers(-32768, 32767, 16000, dtype=np.int16)
  sf.write(tmp_path / "a.wav", pcm, 16000, subtype="PCM_16")
  x = load_audio(tmp_path / "a.wav", 16000)
  assert x.dtype == np.float32 and x.shape == (16000,)
  np.testing.assert_array_equal(audio.to_int16(x), pcm)


def test_float_wav_and_flac(tmp_path):
  x = _sine(440, 0.5, 16000)
  sf.write(tmp_path / "f.wav", x, 16000, subtype="FLOAT")
  np.testing.assert_allclose(load_audio(tmp_path / "f.wav", 16000), x, atol=1e-7)
  pcm = audio.to_int16(x)
  sf.write(tmp_path / "a.flac", pcm, 16000)
  np.testing.assert_array_equal(audio.to_int16(load_audio(tmp_path / "a.flac", 16000)), pcm)


def test_stereo_is_mixed_to_mono(tmp_path):
  left, right = _sine(300, 0.25, 16000), _sine(700, 0.25, 16000, 0.25)
  sf.write(tmp_path / "s.wav", np.stack([left, right], axis=1), 16000, subtype="FLOAT")
  np.testing.assert_allclose(load_audio(tmp_path / "s.wav", 16000), (left + right) / 2, atol=1e-7)


def test_44k_resampled_to_16k_keeps_length_pitch_and_level(tmp_path):
  x = _sine(1000, 1.5, 44100)
  sf.write(tmp_path / "hi.wav", x, 44100, subtype="PCM_16")
  y = load_audio(tmp_path / "hi.wav", 16000)
  assert y.shape == (24000,)
  assert abs(_peak_hz(y, 16000) - 1000) < 2
  middle = y[1000:-1000]
  assert np.sqrt(np.mean(middle**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)


def test_offset_and_duration_read_only_that_part(tmp_path):
  pcm = np.random.default_rng(1).integers(-30000, 30000, 32000, dtype=np.int16)
  sf.write(tmp_path / "long.wav", pcm, 16000)
  crop = load_audio(tmp_path / "long.wav", 16000, offset=0.25, duration=0.5)
  np.testing.assert_array_equal(audio.to_int16(crop), pcm[4000:12000])
  # A duration past the end returns the audio up to the end.
  tail = load_audio(tmp_path / "long.wav", 16000, offset=1.5, duration=1.0)
  np.testing.assert_array_equal(audio.to_int16(tail), pcm[24000:])


def test_ogg_vorbis(tmp_path):
  sf.write(tmp_path / "a.ogg", _sine(800, 1.0, 22050), 22050, format="OGG", subtype="VORBIS")
  y = load_audio(tmp_path / "a.ogg", 16000)
  assert y.shape == (16000,)
  assert abs(_peak_hz(y, 16000) - 800) < 3


@pytest.mark.skipif(not MP3_SUPPORTED, reason=f"libsndfile {sf.__libsndfile_version__} lacks MP3")
def test_mp3_decodes(tmp_path):
  sf.write(tmp_path / "a.mp3", _sine(600, 2.0, 44100), 44100, format="MP3")
  y = load_audio(tmp_path / "a.mp3", 16000)
  assert abs(len(y) - 32000) <= 1200  # MP3 adds encoder delay/padding.
  assert abs(_peak_hz(y, 16000) - 600) < 3
  assert np.sqrt(np.mean(y[4000:-4000] ** 2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.05)
  assert load_audio(tmp_path / "a.mp3", 16000, offset=0.5, duration=1.0).shape == (16000,)


def _truncate(path, keep=0.5):
  data = path.read_bytes()
  path.write_bytes(data[: int(len(data) * keep)])


def _bad_files(tmp_path):
  """(path, expected kind) for each way a file can be unusable."""
  cases = []
  empty = tmp_path / "empty.wav"
  empty.write_bytes(b"")
  cases.append((empty, "empty", "0 bytes"))
  text = tmp_path / "text.wav"
  text.write_text("these are not the samples you are looking for\n" * 20)
  cases.append((text, "unsupported_format", "not an audio format"))
  wav = tmp_path / "cut.wav"
  sf.write(wav, _sine(440, 1.0, 16000), 16000, subtype="PCM_16")
  _truncate(wav)
  cases.append((wav, "truncated", "header declares"))
  flac = tmp_path / "cut.flac"
  sf.write(flac, _sine(440, 1.0, 16000), 16000)
  _truncate(flac)
  cases.append((flac, "corrupt", "decoding failed"))
  no_frames = tmp_path / "no_frames.wav"
  sf.write(no_frames, np.zeros(0, np.float32), 16000)
  cases.append((no_frames, "empty", "no audio frames"))
  nan = tmp_path / "nan.wav"
  sf.write(nan, np.array([0.0, np.nan, 0.1] * 100, np.float32), 16000, subtype="FLOAT")
  cases.append((nan, "invalid", "NaN"))
  cases.append((tmp_path / "missing.wav", "missing", "not found"))
  if MP3_SUPPORTED:
    mp3 = tmp_path / "cut.mp3"
    sf.write(mp3, _sine(440, 2.0, 16000), 16000, format="MP3")
    _truncate(mp3)
    cases.append((mp3, "truncated", "decoded"))
  return cases


def test_bad_files_raise_audio_error_with_kind_and_reason(tmp_path):
  for path, kind, words in _bad_files(tmp_path):
    with pytest.raises(AudioError) as info:
      load_audio(path, 16000)
    assert info.value.kind == kind, (path.name, info.value)
    assert words in info.value.reason, (path.name, info.value.reason)
    assert path.name in str(info.value)


def test_offset_past_end_is_invalid_and_bad_arguments_are_value_errors(tmp_path):
  sf.write(tmp_path / "a.wav", _sine(440, 1.0, 16000), 16000)
  with pytest.raises(AudioError, match="past the end") as info:
    load_audio(tmp_path / "a.wav", 16000, offset=1.0)
  assert info.value.kind == "invalid"
  with pytest.raises(ValueError, match="offset"):
    load_audio(tmp_path / "a.wav", 16000, offset=-1.0)
  with pytest.raises(ValueError, match="duration"):
    load_audio(tmp_path / "a.wav", 16000, duration=0.0)


def test_real_esc50_clip_resampled_from_44k(shared_data):
  folder = shared_data / "esc50_sample" / "audio"
  files = sorted(folder.glob("*.wav"))
  if not files:
    pytest.skip(f"no ESC-50 excerpt in {folder}")
  native, rate = sf.read(files[0], dtype="float32")
  assert rate == 44100
  y = load_audio(files[0], 16000)
  assert y.shape == (int(np.ceil(len(native) * 16000 / 44100)),)
  # Resampling keeps the energy below 8 kHz: compare band-limited RMS levels.
  spectrum = np.fft.rfft(native)
  spectrum[np.fft.rfftfreq(len(native), 1 / 44100) > 7500] = 0
  low_rms = np.sqrt(np.mean(np.fft.irfft(spectrum, len(native)) ** 2))
  assert np.sqrt(np.mean(y**2)) == pytest.approx(low_rms, rel=0.05)


def non_utf8_path(folder, stem: bytes = b"caf\xe9", suffix: str = ".wav"):
  """`folder/<stem><suffix>` as os.fsdecode gives it (surrogate escapes); skips where the
  file system refuses names that are not UTF-8."""
  path = os.path.join(os.fsencode(folder), stem + suffix.encode())
  try:
    open(path, "wb").close()
  except OSError as e:
    pytest.skip(f"this file system refuses non-UTF-8 names: {e}")
  return Path(os.fsdecode(path))


def test_non_utf8_file_name_decodes(tmp_path):
  """Issue 10 item 7: soundfile gets the name's bytes; before, such a file was 'corrupt'."""
  path = non_utf8_path(tmp_path)
  sf.write(os.fsencode(path), _sine(440, 0.5, 16000), 16000, subtype="PCM_16")
  expected = sf.read(os.fsencode(path), dtype="float32")[0]
  for name in (path, str(path), os.fsencode(path)):
    np.testing.assert_allclose(load_audio(name, 16000), expected, atol=1e-6)
  with audio.AudioFile(path) as file:
    assert file.frames == 8000
    window = file.read(4000, 4000, 16000)
  assert window.shape == (4000,) and window.any()


def _reason(path) -> tuple[str, str]:
  with pytest.raises(AudioError) as info:
    load_audio(path, 16000)
  return info.value.kind, info.value.reason


@pytest.mark.skipif(not MP3_SUPPORTED, reason=f"libsndfile {sf.__libsndfile_version__} lacks MP3")
def test_random_bytes_mp3_is_not_reported_as_a_missing_file(tmp_path):
  """Issue 10 item 9: libsndfile says "File does not exist" of an MP3 it cannot decode."""
  junk = tmp_path / "junk.mp3"
  junk.write_bytes(np.random.default_rng(0).bytes(5000))
  kind, reason = _reason(junk)
  assert kind == "corrupt"
  assert reason.startswith("not a readable audio file (mp3 decoder:"), reason
  assert "does not exist" not in reason


def _load_as_nobody(path) -> tuple[str, str]:
  """(kind, reason) of loading `path` in a forked child running as user `nobody` (root reads
  any file, so a chmod 000 file is only unreadable to another user)."""
  read, write = os.pipe()
  pid = os.fork()
  if pid == 0:  # The child: drop to nobody, load, send the result, exit without cleanup.
    try:
      os.setgid(65534)
      os.setuid(65534)
      try:
        load_audio(path, 16000)
        message = "ok\nloaded"
      except AudioError as e:
        message = f"{e.kind}\n{e.reason}"
      os.write(write, message.encode())
    finally:
      os._exit(0)
  os.close(write)
  with os.fdopen(read) as f:
    kind, reason = f.read().split("\n", 1)
  os.waitpid(pid, 0)
  return kind, reason


def test_unreadable_file_says_permission_denied():
  """Issue 10 item 9: a chmod 000 file was "System error"; now "permission denied"."""
  folder = Path(tempfile.mkdtemp())  # Not under pytest's 0700 tmp folders: nobody must reach it.
  try:
    folder.chmod(0o755)
    path = folder / "locked.wav"
    sf.write(path, _sine(440, 0.2, 16000), 16000)
    path.chmod(0o000)
    if os.geteuid() == 0:
      kind, reason = _load_as_nobody(path)
    else:
      kind, reason = _reason(path)
    assert kind == "unreadable" and reason.startswith("permission denied"), (kind, reason)
  finally:
    shutil.rmtree(folder)


def test_broken_symlink_names_its_target(tmp_path):
  link = tmp_path / "gone.wav"
  link.symlink_to(tmp_path / "moved_away.wav")
  kind, reason = _reason(link)
  assert kind == "missing" and "broken symbolic link" in reason and "moved_away.wav" in reason
