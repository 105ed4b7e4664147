"""Score a stream's overlapping windows without recomputing what they share.

`stream` slides a window of `input_size` samples by a hop of about 100 ms, so consecutive
windows share 90% of their samples. The front conv and the first blocks of a SampleCNN see
only a few samples around each output frame (convs of 3, pools of 3, nothing global), so
their output over the shared samples is the same in both windows except for a frame or two
at each end, where the window's zero padding reaches. Those early blocks are also most of
the work: block 1 runs at a third of the sample rate, block 2 at a ninth. `IncrementalWindows`
keeps the output of one block (the cut) for the last window; for the next window it computes
that output only for the new samples and for the window's two ends, and runs the blocks after
the cut and the head on the whole window as before. The scores are the full window's (the
same operations on the same samples; `for_network` checks this once on noise, to 1e-4,
before it trusts a cut). On the speech SampleCNN (input 16,000, width 128) one window costs
a third of the full model or less (docs/deploy.md).

The hop must be a whole number of the cut's frames (3^(k+1) samples for block k):
`aligned_hop` rounds it (`hop_for`: only for a model that has a cut). The cut is the deepest
block whose frame is at most 1/16 of the hop (a 100 ms hop at 16 kHz: block 3, frames of 81
samples, a 1,620-sample hop), so the rounding moves the hop by 3% at most. A model whose
early part is not local (input RMS normalisation, Squeeze-Excitation gates, which read the
whole window) has no cut: it is scored window by window. Both runtimes can be cut: an ONNX
model at a block's named output (`OnnxSplit`, `onnx_cut`), a JAX model through
`models.SampleLevelCNN`'s `cut` (`inference.JaxSplit`); each network says where
(`cut_for`) and builds the halves (`split`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

HOP_PER_FRAME = 16  # The cut's frame is at most 1/16 of the hop: aligning moves it <= 3%.
EDGE_FRAMES = 2  # Frames at a piece's end that its zero padding may change (1 measured).
TOLERANCE = 1e-4  # Most |incremental - full| score `for_network` accepts on its check.
# Operators that read a few neighbouring samples at most (the elementwise ones with constants).
LOCAL_OPS = frozenset({"Unsqueeze", "Conv", "Relu", "MaxPool", "Add", "Sub", "Mul", "Identity",
                       "QuantizeLinear", "DequantizeLinear"})


def frame(block: int) -> int:
  """Samples per output frame of block `block` (the front conv strides 3, each block pools 3)."""
  return 3 ** (block + 1)


def cut_for_hop(hop: int) -> int:
  """The deepest block whose frame is at most `hop / HOP_PER_FRAME` samples; 0 if none."""
  block = 0
  while frame(block + 1) * HOP_PER_FRAME <= hop:
    block += 1
  return block


def aligned_hop(hop: int) -> int:
  """`hop` rounded to a whole number of `cut_for_hop(hop)`'s frames (unchanged without one)."""
  block = cut_for_hop(hop)
  return hop if block == 0 else max(1, round(hop / frame(block))) * frame(block)


class Split(Protocol):
  """A model cut at block k: `front` maps samples to block k's output `(channels, frames)`,
  `back` a whole window's block-k output to its class scores `(classes,)`."""

  def front(self, samples: np.ndarray) -> np.ndarray: ...

  def back(self, features: np.ndarray) -> np.ndarray: ...


class OnnxSplit:
  """An ONNX model cut at a block's output: `front` (waveform piece -> that output), `back`."""

  def __init__(self, model, cut: str, num_threads: int | None = None):
    import onnx  # The optional `export` extra: imported only for ONNX models.
    import onnxruntime as ort
    from onnx.utils import Extractor

    from samplecnn_jax import onnx_graph

    extractor = Extractor(onnx.shape_inference.infer_shapes(model))
    front = extractor.extract_model([onnx_graph.INPUT], [cut])
    back = extractor.extract_model([cut], [onnx_graph.SCORES])
    # The front runs on pieces of any length; the back always on a whole window's frames.
    front.graph.input[0].type.tensor_type.shape.dim[1].dim_param = "samples"
    front.graph.output[0].type.tensor_type.shape.dim[2].dim_param = "frames"
    for part in (front, back):
      del part.graph.value_info[:]
    options = ort.SessionOptions()
    if num_threads:
      options.intra_op_num_threads = num_threads
    session = lambda part: ort.InferenceSession(part.SerializeToString(), options,
                                                providers=["CPUExecutionProvider"])
    self.cut, self.input, self._front, self._back = cut, onnx_graph.INPUT, session(front), session(
        back)

  def front(self, samples: np.ndarray) -> np.ndarray:
    """The cut's output `(channels, frames)` of mono float32 `samples`."""
    return self._front.run(None, {self.input: samples[None]})[0][0]

  def back(self, features: np.ndarray) -> np.ndarray:
    """Class scores `(classes,)` of a whole window's cut output `(channels, frames)`."""
    return self._back.run(None, {self.cut: features[None]})[0][0]


class IncrementalWindows:
  """Scores of windows `hop` samples apart that reuse the cut's output of the window before.

  Call it with each window and its start (in samples); a window that does not start one hop
  after the previous one is scored whole.
  """

  def __init__(self, split: Split, input_size: int, hop: int, frame_samples: int):
    if hop % frame_samples:
      raise ValueError(f"the hop ({hop} samples) must be a whole number of frames "
                       f"({frame_samples} samples): see aligned_hop")
    self.split, self.input_size, self.frame = split, input_size, frame_samples
    self.hop_frames = hop // frame_samples
    self.features: np.ndarray | None = None  # The cut's output for the last window.
    self.start: int | None = None

  def __call__(self, window: np.ndarray, start: int) -> np.ndarray:
    """Class scores `(classes,)` of `window` (`input_size` samples) starting at `start`."""
    consecutive = self.start is not None and start == self.start + self.hop_frames * self.frame
    self.features = self._update(window) if consecutive else self.split.front(window)
    self.start = start
    return self.split.back(self.features)

  def _update(self, window: np.ndarray) -> np.ndarray:
    previous, edge, shift = self.features, EDGE_FRAMES, self.hop_frames
    length = previous.shape[1]
    if length < 2 * edge + shift + 1:  # Too few frames to reuse any: score it whole.
      return self.split.front(window)
    # New frames, and the previous window's last `edge` (its zero padding reached them); the
    # piece starts `edge` frames earlier still, and those frames (its own left end) are dropped.
    tail = self.split.front(window[(length - shift - 2 * edge) * self.frame :])[:, edge:]
    # The window's first frames, which see its left zero padding (the previous window's did
    # not): a piece from the window's start, whose own right end is dropped.
    head = self.split.front(window[: 2 * edge * self.frame])[:, :edge]
    return np.concatenate([head, previous[:, edge + shift : length - edge], tail], axis=1)


def deepest_cut(hop: int, blocks: Sequence[int]) -> tuple[int, str]:
  """The deepest of `blocks` (those a model can be cut at) at most `cut_for_hop(hop)` whose
  frame divides `hop`; (0, why not) when there is none."""
  for block in sorted(blocks, reverse=True):
    if block <= cut_for_hop(hop) and hop % frame(block) == 0:
      return block, ""
  if cut_for_hop(hop) == 0:
    return 0, f"the hop ({hop} samples) is too short to reuse any block"
  return 0, f"the hop ({hop} samples) is not a multiple of {frame(1)}: see aligned_hop"


def onnx_cut(model, hop: int) -> tuple[int, str]:
  """`deepest_cut` among the blocks of an ONNX model whose output is named and computed by
  local operators only; (0, why not) when there is none."""
  from samplecnn_jax import onnx_graph

  local = set()  # The tensors computed before the first operator that is not local.
  first_global = None
  for node in model.graph.node:
    if node.op_type not in LOCAL_OPS:
      first_global = node
      break
    local.update(node.output)
  blocks = [b for b in range(1, 64) if onnx_graph.block_output(b) in local]
  if not blocks:
    where = f" ({first_global.op_type} {first_global.name})" if first_global is not None else ""
    return 0, ("no named block output comes before the first operator that reads the whole "
               f"window{where}: input RMS normalisation, a Squeeze-Excitation gate, or a model "
               "exported before block outputs were named")
  return deepest_cut(hop, blocks)


def hop_for(network, hop: int, input_size: int) -> int:
  """`aligned_hop(hop)` when `network` (`Network.cut_for`) can be cut at that hop and windows
  of `input_size` samples overlap, else `hop` unchanged."""
  aligned = aligned_hop(hop)
  if aligned >= input_size:  # Nothing is shared between windows.
    return hop
  return aligned if network.cut_for(aligned)[0] else hop


def for_network(network, input_size: int, hop: int,
                check: Callable[[np.ndarray], np.ndarray] | None = None
                ) -> tuple[IncrementalWindows | None, str]:
  """An `IncrementalWindows` for `network` at `hop`, or None; and a line saying which.

  `network` says where it can be cut (`cut_for(hop) -> (block, why not)`) and builds the
  two halves (`split(block) -> Split`): `exported.OnnxNetwork` and `inference.Network` do.
  `check` maps windows `(n, input_size)` to the full model's scores; when given, the
  incremental scores of three consecutive noise windows must match it to `TOLERANCE`.
  """
  block, reason = network.cut_for(hop)
  if block == 0:
    return None, f"scoring every window whole: {reason}"
  windows = IncrementalWindows(network.split(block), input_size, hop, frame(block))
  if check is not None:
    noise = (0.1 * np.random.default_rng(0).standard_normal(input_size + 2 * hop)
             ).astype(np.float32)
    starts = [0, hop, 2 * hop]
    batch = np.stack([noise[s : s + input_size] for s in starts])
    mine = np.stack([windows(window, start) for window, start in zip(batch, starts, strict=True)])
    difference = float(np.abs(mine - check(batch)).max())
    windows.features = windows.start = None
    if difference > TOLERANCE:
      return None, (f"scoring every window whole: reusing block {block} changed the scores "
                    f"by {difference:.2g}")
  blocks = f"blocks 1-{block}" if block > 1 else "block 1"
  return windows, f"reusing {blocks} between windows (frames of {frame(block)} samples)"
