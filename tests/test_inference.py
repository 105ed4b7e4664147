"""Tests for samplecnn_jax.inference: the Predictor engine on a real checkpointed workdir and
real audio files of many formats; agreement with evaluation, with arrays and across batchings;
embeddings, timelines and the one batching engine."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
import soundfile as sf
from trained_run import (
  BROKEN,
  EVAL_LABEL_MAP,
  EVAL_VOCABULARY,
  NUM_TEST_CLIPS,
  RATE,
  by_name,
  make_eval_mapped_run,
  tone,
)

from samplecnn_jax import (
  audio,
  checkpointing,
  evaluate,
  inference,
  models,
  segments,
  sharding,
  store,
  train,
  workdir_files,
)
from samplecnn_jax.predict import find_audio_files


def test_predict_files_scores_every_readable_format_and_reports_broken_files(
    predictor, audio_dir
):
  files, notes = find_audio_files([audio_dir])
  names = [f.name for f in files]
  assert "notes.txt" not in names and "skipped.wav" not in names and not notes
  assert files == sorted(files)
  results = by_name(predictor.predict_files(files, top_k=3, threshold=0.5))
  assert results["g_corrupt.wav"]["error"].startswith(("corrupt", "unsupported_format"))
  assert results["h_empty.flac"]["error"].startswith("empty")
  assert results["g_corrupt.wav"]["scores"] == {} and results["g_corrupt.wav"]["top_k"] == []
  good = {n: r for n, r in results.items() if n not in BROKEN}
  assert len(good) == len(files) - 2 >= 5
  vocabulary = list(predictor.labels.vocabulary)
  for name, r in good.items():
    assert r["error"] is None, name
    assert list(r["scores"]) == vocabulary
    scores = np.array(list(r["scores"].values()))
    assert np.all((scores >= 0) & (scores <= 1)), name
    top = [t["score"] for t in r["top_k"]]
    assert len(top) == 3 and top == sorted(top, reverse=True)
    assert top[0] == scores.max()
    assert set(r["above_threshold"]) == {k for k, v in r["scores"].items() if v >= 0.5}
    assert r["num_segments"] == 2  # config.eval_segments, also for the 300-sample clip.
  assert good["d_long_22k.flac"]["duration_s"] == pytest.approx(4.0)
  assert good["c_short.wav"]["duration_s"] == pytest.approx(300 / RATE, abs=1e-3)
  # Different audio gives different scores: the equality tests below are not vacuous.
  assert len({tuple(r["scores"].values()) for r in good.values()}) == len(good)


def test_arrays_give_the_same_scores_as_files(predictor, audio_dir):
  files = [f for f in find_audio_files([audio_dir])[0] if f.suffix in (".wav", ".flac")]
  files = [f for f in files if f.name not in BROKEN]
  from_files = predictor.predict_files(files)
  for path, result in zip(files, from_files, strict=True):
    data, rate = sf.read(path, dtype="float32", always_2d=True)  # (frames, channels)
    expected = np.array(list(result["scores"].values()))
    np.testing.assert_allclose(predictor.predict_waveform(data, rate), expected, atol=1e-6)
    # librosa's (channels, frames) layout is recognised too.
    np.testing.assert_allclose(predictor.predict_waveform(data.T, rate), expected, atol=1e-6)
  int16 = (np.clip(tone(0.5, RATE, 440, 0), -1, 32767 / 32768) * 32768).astype(np.int16)
  np.testing.assert_allclose(
      predictor.predict_waveform(int16, RATE),
      predictor.predict_waveform(int16.astype(np.float32) / 32768, RATE), atol=1e-7,
  )


def test_batching_across_files_matches_one_file_at_a_time(run, predictor, audio_dir):
  files = find_audio_files([audio_dir])[0]
  together = predictor.predict_files(files, num_threads=3)
  alone = [predictor.predict_files([f], num_threads=1)[0] for f in files]
  assert [r["file"] for r in together] == [str(f) for f in files]
  for a, b in zip(together, alone, strict=True):
    assert a["error"] == b["error"]
    np.testing.assert_allclose(list(a["scores"].values()), list(b["scores"].values()), atol=1e-6)
  # 3 segments per clip in batches of 8: clips straddle batch boundaries.
  variables = checkpointing.load_variables(run["workdir"], run["config"])
  odd = inference.Predictor(run["config"], variables, predictor.labels, num_segments=3)
  waves = [tone(s, RATE, 300 * (i + 1), 10 + i) for i, s in enumerate((0.3, 1.0, 0.05, 2.0, 0.6))]
  batch = odd.predict_batch(waves, RATE)
  single = np.stack([odd.predict_waveform(w, RATE) for w in waves])
  assert batch.shape == (5, 6)
  np.testing.assert_allclose(batch, single, atol=1e-6)


def test_scores_match_evaluation_of_the_prepared_store(run, predictor, tmp_path):
  """Clips written from the store as wav get exactly the clip scores `evaluate.Evaluator` gives."""
  setup = train.setup(run["config"], str(run["workdir"]))
  variables = sharding.replicate(train.model_variables(run["state"]), setup.mesh)
  evaluator = evaluate.Evaluator(setup.config, setup.store, setup.mesh, setup.steps.eval_step)
  _, arrays = evaluator.evaluate(variables, "test")
  clips = store.ClipSource(run["data_dir"], "test")
  paths = []
  for i in range(len(clips)):
    paths.append(tmp_path / f"{clips[i]['clip_id']}.wav")
    sf.write(paths[-1], clips[i]["audio"], RATE, subtype="PCM_16")
  results = predictor.predict_files(paths)
  got = np.array([list(r["scores"].values()) for r in results])
  assert got.shape == arrays["scores"].shape == (NUM_TEST_CLIPS, 6)
  np.testing.assert_allclose(got, arrays["scores"], atol=1e-6)


def test_rms_pooling_matches_evaluation_and_differs_from_the_mean(run, predictor, tmp_path):
  """config.segment_pooling=rms: predict weighs a clip's segments as evaluation does."""
  config = run["config"].copy_and_resolve_references()
  config.segment_pooling, config.eval_segments = "rms", 3
  setup = train.setup(run["config"], str(run["workdir"]))
  variables = sharding.replicate(train.model_variables(run["state"]), setup.mesh)
  evaluator = evaluate.Evaluator(config, setup.store, setup.mesh, setup.steps.eval_step)
  _, arrays = evaluator.evaluate(variables, "test")
  clips = store.ClipSource(run["data_dir"], "test")
  paths, waves = [], []
  for i in range(len(clips)):
    paths.append(tmp_path / f"{clips[i]['clip_id']}.wav")
    sf.write(paths[-1], clips[i]["audio"], RATE, subtype="PCM_16")
    waves.append(clips[i]["audio"])
  rms = inference.Predictor(config, checkpointing.load_variables(run["workdir"], run["config"]),
                            predictor.labels)
  got = np.array([list(r["scores"].values()) for r in rms.predict_files(paths)])
  np.testing.assert_allclose(got, arrays["scores"], atol=1e-6)
  np.testing.assert_allclose(rms.predict_batch(waves, RATE), arrays["scores"], atol=1e-6)
  config.segment_pooling = "mean"
  mean = evaluate.Evaluator(config, setup.store, setup.mesh, setup.steps.eval_step)
  assert np.abs(mean.evaluate(variables, "test")[1]["scores"] - got).max() > 1e-4


def test_labels_come_from_labels_json_then_the_store_manifest_then_numbers(run, tmp_path):
  config = run["config"]
  labels = inference.load_labels(run["workdir"], config)
  assert labels.vocabulary == tuple(run["vocabulary"])
  assert labels.source.endswith(workdir_files.LABELS_FILE)
  # Without labels.json: the store manifest at config.data_dir.
  labels = inference.load_labels(tmp_path, config)
  assert labels.vocabulary == tuple(run["vocabulary"])
  assert labels.source.endswith(store.MANIFEST)
  # Neither: numbered names.
  lost = config.copy_and_resolve_references()
  lost.data_dir = str(tmp_path / "gone")
  assert inference.load_labels(tmp_path, lost).vocabulary[:2] == ("class_0", "class_1")
  store.write_json(tmp_path / "wrong.json", {"vocabulary": ["a", "b"]})
  with pytest.raises(ValueError, match="names 2 classes but the model has"):
    inference.load_labels(tmp_path, config, str(tmp_path / "wrong.json"))


def test_multi_class_with_eval_label_map(run, audio_dir, tmp_path):
  """Speech Commands style: softmax scores and the coarser scoring label of the argmax."""
  eval_vocabulary, eval_label_map = list(EVAL_VOCABULARY), list(EVAL_LABEL_MAP)
  sc = inference.Predictor.from_workdir(make_eval_mapped_run(run, tmp_path / "sc"))
  results = sc.predict_files([audio_dir / "a_int16_mono_16k.wav", audio_dir / "g_corrupt.wav"])
  scores = np.array(list(results[0]["scores"].values()))
  assert scores.sum() == pytest.approx(1.0, abs=1e-5)
  best = int(np.argmax(scores))
  assert results[0]["eval_label"] == eval_vocabulary[eval_label_map[best]]
  assert results[1]["error"] and results[1]["eval_label"] is None


def test_cover_segments_span_long_files(run, predictor):
  cover = inference.Predictor(run["config"], predictor.network.variables, predictor.labels,
                              num_segments=segments.COVER)
  long = tone(1.0, RATE, 440, 20)
  cut = cover.segments(long)
  assert cut.shape == (int(np.ceil(RATE / 729)), 729)
  np.testing.assert_array_equal(cut[0], long[:729])
  np.testing.assert_array_equal(cut[-1], long[-729:])
  assert cover.segments(long[:100]).shape == (1, 729)


def test_bad_arrays_and_arguments_raise_clear_errors(predictor):
  with pytest.raises(ValueError, match="1-D or 2-D"):
    predictor.predict_waveform(np.zeros((2, 3, 4), np.float32), RATE)
  with pytest.raises(ValueError, match="NaN"):
    predictor.predict_waveform(np.full(1000, np.nan, np.float32), RATE)
  with pytest.raises(ValueError, match="sample_rate"):
    predictor.predict_waveform(np.zeros(1000, np.float32), 0)
  with pytest.raises(ValueError, match="num_segments"):
    inference.Predictor(predictor.config, predictor.network.variables, predictor.labels,
                        num_segments=0)


def test_config_json_from_before_a_field_existed_still_loads(run, predictor, tmp_path):
  """Fields added to the config later take their defaults when an old workdir is loaded."""
  workdir = tmp_path / "old"
  shutil.copytree(run["workdir"], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  del saved["tune_thresholds"], saved["model"]["remat"]
  (workdir / "config.json").write_text(json.dumps(saved))
  old = inference.Predictor.from_workdir(workdir)
  assert old.config.tune_thresholds is False and old.config.model.remat is False
  wave = tone(0.7, RATE, 880, 30)
  expected = predictor.predict_waveform(wave, RATE)
  np.testing.assert_allclose(old.predict_waveform(wave, RATE), expected, atol=1e-6)


def test_rms_normalisation_of_the_run_makes_predictions_level_invariant(run, predictor, tmp_path):
  """config.normalize_rms is read from the workdir, so predict scales inputs as training did."""
  workdir = tmp_path / "rms"
  shutil.copytree(run["workdir"], workdir)
  saved = json.loads((workdir / "config.json").read_text())
  saved["normalize_rms"] = 0.1
  (workdir / "config.json").write_text(json.dumps(saved))
  normalised = inference.Predictor.from_workdir(workdir)
  wave = tone(0.7, RATE, 880, 30)
  wave = 0.05 * wave / np.abs(wave).max()
  quiet, loud = normalised.predict_waveform(wave, RATE), normalised.predict_waveform(8 * wave, RATE)
  np.testing.assert_allclose(quiet, loud, atol=1e-5)
  assert not np.allclose(predictor.predict_waveform(wave, RATE),
                         predictor.predict_waveform(8 * wave, RATE), atol=1e-5)


def test_non_finite_scores_are_a_failed_file(run, audio_dir):
  """Issue 10 item 10: NaN weights give an error record, never a NaN score."""
  variables = jax.tree.map(lambda x: np.full(np.shape(x), np.nan, np.float32),
                           {"params": run["state"].params, "batch_stats": run["state"].batch_stats})
  labels = inference.load_labels(run["workdir"], run["config"])
  nan_predictor = inference.Predictor(run["config"], variables, labels)
  [record] = nan_predictor.predict_files([audio_dir / "a_int16_mono_16k.wav"])
  assert record["error"].startswith("invalid: the model gave non-finite scores")
  assert record["scores"] == {} and record["top_k"] == []


def test_embeddings_are_the_mean_of_what_the_head_reads(run, predictor, audio_dir):
  files = [audio_dir / "a_int16_mono_16k.wav", audio_dir / "g_corrupt.wav",
           audio_dir / "nested" / "d_long_22k.flac"]
  embeddings, paths, failures = predictor.embed(files)
  assert paths == [str(files[0]), str(files[2])] and failures[0]["path"] == str(files[1])
  # rese2_multi: the head reads the concatenated max pools of the last 3 blocks.
  model = models.create_model(run["config"].model, run["config"].num_classes)
  cut, _ = predictor.load_segments(files[2])
  _, state = model.apply(jax.device_get(predictor.network.variables), cut, train=False,
                         mutable=["intermediates"])
  expected = np.asarray(state["intermediates"][models.EMBEDDING][0]).mean(axis=0)
  assert embeddings.shape == (2, expected.shape[-1]) and embeddings.dtype == np.float32
  np.testing.assert_allclose(embeddings[1], expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(embeddings[0], embeddings[1])


def test_timeline_streams_segments_at_the_hop(predictor, tmp_path):
  seconds, rate = 3.0, 22050
  wav = tmp_path / "long.wav"
  sf.write(wav, tone(seconds, rate, 700, 9, channels=2), rate)
  hop = 0.25
  timeline = predictor.timeline(wav, hop, chunk_segments=3)  # Several chunks.
  expected_count = int((seconds * RATE - predictor.input_size) // (hop * RATE)) + 1
  assert timeline["scores"].shape == (expected_count, predictor.num_classes)
  np.testing.assert_allclose(np.diff(timeline["start"]), hop)
  # Each row is the score of exactly that window, as if decoded whole.
  whole = audio.load_audio(wav, RATE)
  k = expected_count - 1
  start = int(round(timeline["start"][k] * RATE))
  direct = predictor.predict_batch([whole[start : start + predictor.input_size]], RATE)[0]
  np.testing.assert_allclose(timeline["scores"][k], direct, rtol=1e-3, atol=1e-4)


def test_one_pass_gives_scores_embeddings_and_timelines_as_the_single_calls_do(
    predictor, audio_dir, tmp_path
):
  """`iter_files` reads each file once for all three: the results equal the separate calls."""
  files = [audio_dir / "nested" / "d_long_22k.flac", audio_dir / "g_corrupt.wav",
           audio_dir / "b_float_stereo_44k.wav"]
  results = list(predictor.iter_files(files, embeddings=True, hop_seconds=0.1, num_threads=2,
                                      chunk_segments=4))
  assert [r.path for r in results] == files
  assert results[1].error and results[1].scores is None and results[1].timeline is None
  records = predictor.predict_files(files)
  embeddings, _, _ = predictor.embed(files)
  for result, record, embedding in zip(results[::2], records[::2], embeddings, strict=True):
    np.testing.assert_allclose(result.scores, list(record["scores"].values()), atol=1e-6)
    np.testing.assert_allclose(result.embedding, embedding, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.timeline["scores"],
                               predictor.timeline(result.path, 0.1)["scores"], atol=1e-6)
  with pytest.raises(audio.AudioError):
    predictor.timeline(files[1], 0.1)
