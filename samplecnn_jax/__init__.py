"""samplecnn_jax: sample-level CNNs for raw-waveform audio classification in JAX/Flax."""

__version__ = "0.1.0"
