"""
GPTQ / RTN quantization of linear weights to the LPU's int4 / int8 format: symmetric, zero point 2^(bits-1), one fp16 scale per group of consecutive input columns
"""
from __future__ import annotations
import numpy
import typing
__all__: list[str] = ['HessianAccumulator', 'dequantize', 'gptq', 'rtn']
class HessianAccumulator:
    """
    H = 2/n sum x x^T over a layer's n input rows, accumulated in fp64 (order-independent of batching)
    """
    def __init__(self, cols: typing.SupportsInt | typing.SupportsIndex, num_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> None:
        ...
    def add(self, x: numpy.ndarray) -> None:
        """
        Adds rows x [..., cols] (float16, float32 or float64).
        """
    def hessian(self) -> numpy.ndarray:
        """
        2 / count * sum x x^T as a float64 array [cols, cols].
        """
    @property
    def cols(self) -> int:
        ...
    @property
    def count(self) -> int:
        """
        Rows added so far.
        """
def dequantize(codes: typing.Any, scales: typing.Any, bits: typing.SupportsInt | typing.SupportsIndex, group_size: typing.SupportsInt | typing.SupportsIndex, num_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> numpy.ndarray:
    """
    The exact dequantized weights fp16((q - 2^(bits-1)) * scale) as float16 [out, in].
    """
def gptq(W: typing.Any, H: typing.Any, bits: typing.SupportsInt | typing.SupportsIndex = 4, group_size: typing.SupportsInt | typing.SupportsIndex = 128, sym: bool = True, desc_act: bool = False, static_groups: bool = False, damp_percent: typing.SupportsFloat | typing.SupportsIndex = 0.01, block_size: typing.SupportsInt | typing.SupportsIndex = 128, mse: typing.SupportsFloat | typing.SupportsIndex = 0.0, act_group_aware: bool = False, name: str = '', num_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> dict:
    """
    GPTQ of W (float32 [out, in]) with the Hessian H (float64 [in, in], lower triangle read).
    Returns {'codes': uint8 [out, in] (original column order), 'scales': float16 [out, groups], 'loss': float, 'damp': float (damping used), 'retries': int (damping x10 steps)}.
    """
def rtn(W: typing.Any, bits: typing.SupportsInt | typing.SupportsIndex = 4, group_size: typing.SupportsInt | typing.SupportsIndex = 128, sym: bool = True, mse: typing.SupportsFloat | typing.SupportsIndex = 0.0, name: str = '', num_threads: typing.SupportsInt | typing.SupportsIndex = 0) -> dict:
    """
    Round to nearest; same result dict as gptq ('loss' = sum of squared weight errors, 'damp' = 0, 'retries' = 0).
    """
