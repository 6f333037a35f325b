"""Codecs: every dtype and codec round-trips; int8 stays within its stated bound; bad inputs are refused."""

import pytest
import torch

from pac.wire import CODECS, WireError, decode, encode, int8_error_bound

FLOATS = [torch.float32, torch.float16, torch.bfloat16]
OTHERS = [torch.float64, torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool]
SHAPES = [(), (0,), (5,), (3, 7), (2, 3, 4), (4, 0)]


def _sample(dtype: torch.dtype, shape, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if dtype == torch.bool:
        return torch.rand(shape, generator=generator) > 0.5
    if dtype.is_floating_point:
        return (torch.randn(shape, generator=generator) * 3).to(dtype)
    return torch.randint(-100 if dtype != torch.uint8 else 0, 100, shape, generator=generator).to(dtype)


def _round_trip(tensor: torch.Tensor, codec: str) -> torch.Tensor:
    header, payload = encode(tensor, job_id="j", step=1, micro_batch=2, kind="hidden", codec=codec)
    assert header.payload_bytes == len(payload)
    out = decode(header, bytes(payload))
    assert out.dtype == tensor.dtype and tuple(out.shape) == tuple(tensor.shape)
    return out


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS + OTHERS)
def test_none_codec_is_exact(dtype, shape):
    tensor = _sample(dtype, shape)
    assert torch.equal(_round_trip(tensor, "none"), tensor)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_fp16_codec_within_half_precision(dtype, shape):
    tensor = _sample(dtype, shape)
    out = _round_trip(tensor, "fp16")
    tolerance = tensor.float().abs() * (2**-11 + torch.finfo(dtype).eps) + 2**-24
    assert ((out.float() - tensor.float()).abs() <= tolerance).all()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", FLOATS)
def test_int8_codec_within_stated_bound(dtype, shape):
    tensor = _sample(dtype, shape, seed=3)
    out = _round_trip(tensor, "int8")
    assert ((out.float() - tensor.float()).abs() <= int8_error_bound(tensor)).all()


def test_int8_payload_is_a_quarter_of_fp32_plus_scales():
    tensor = torch.randn(64, 1024)
    header, _ = encode(tensor, job_id="j", step=0, micro_batch=0, kind="hidden", codec="int8")
    assert header.payload_bytes == 64 * 1024 + 64 * 4


def test_int8_keeps_rows_independent():
    tensor = torch.tensor([[1000.0, -1000.0], [0.001, 0.002]])
    out = _round_trip(tensor, "int8")
    assert torch.allclose(out[1], tensor[1], rtol=0.01)


@pytest.mark.parametrize("codec", ["fp16", "int8"])
def test_float_codecs_refuse_integers(codec):
    with pytest.raises(WireError, match="floating-point tensors only"):
        encode(torch.arange(4), job_id="j", step=0, micro_batch=0, kind="labels", codec=codec)


def test_fp16_refuses_values_beyond_its_range():
    with pytest.raises(WireError, match="float16 max"):
        encode(torch.tensor([1e6]), job_id="j", step=0, micro_batch=0, kind="hidden", codec="fp16")


def test_int8_refuses_non_finite_values():
    with pytest.raises(WireError, match="inf or nan"):
        encode(torch.tensor([1.0, float("nan")]), job_id="j", step=0, micro_batch=0, kind="hidden", codec="int8")


def test_unknown_codec_lists_the_known_ones():
    with pytest.raises(WireError, match="none, fp16, int8"):
        encode(torch.ones(2), job_id="j", step=0, micro_batch=0, kind="hidden", codec="zstd")


def test_every_codec_has_a_distinct_name():
    assert sorted(CODECS) == ["fp16", "int8", "none"]
