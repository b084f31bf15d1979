"""Pool + project + quantise: the torch reference against an independent computation written here,
and the Triton kernel (under the interpreter on CPU machines, see conftest) against the reference.
"""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mads_fast.errors import BackendUnavailableError, InputError
from mads_fast.pooling import (POOLS, QUANTS, dequantize, make_projection, out_dtype, out_width, pool_quant,
                               pool_quant_reference, quantize_reference)

# The Triton kernel runs on CUDA tensors where a GPU is present, else under the interpreter on CPU.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
PAD = 1e4  # put in padded positions: any leak shifts a mean by >= 1e4 / T and wins every max

# (B, T, H): one token, one column, H not a multiple of the 128-wide block, T spanning several
# 32-token steps, B = 1.
SHAPES = [(1, 1, 1), (3, 1, 7), (5, 123, 123), (2, 17, 1000), (1, 40, 33), (4, 33, 129)]

# Both twins read 16-bit inputs exactly into fp32 and accumulate in fp32, so the tolerance stays
# tight for 16-bit inputs: a twin that accumulated a 123-token mean in fp16 would miss by ~1e-3,
# in bf16 by ~1e-2.
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.float16, 2e-5, 1e-5), (torch.bfloat16, 2e-5, 1e-5)]


def make_batch(shape, dtype=torch.float32, seed=0, pad=PAD, device=DEVICE):
    """Right-padded hidden [B, T, H] with ``pad`` in padded slots; row 0 is full, row 1 has one token."""
    n_rows, n_tok, n_cols = shape
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, n_tok + 1, (n_rows,), generator=gen)  # [B]
    lengths[0] = n_tok
    if n_rows > 1:
        lengths[1] = 1
    hidden = torch.randn(n_rows, n_tok, n_cols, generator=gen)  # [B, T, H]
    for b in range(n_rows):
        hidden[b, lengths[b]:] = pad
    return hidden.to(device=device, dtype=dtype), lengths.to(device)


def independent_pool(hidden, lengths, pool):
    """The pooling written a second way: a mask matrix for the sums, Python slices for the rest."""
    x = hidden.double()  # [B, T, H]
    n_rows, n_tok, _ = x.shape
    mask = torch.zeros(n_rows, n_tok, dtype=torch.float64, device=x.device)  # [B, T]
    for b in range(n_rows):
        mask[b, :lengths[b]] = 1.0
    if pool == "mean":
        return torch.einsum("bt,bth->bh", mask, x) / mask.sum(1)[:, None]  # 0 * 1e4 = 0
    if pool == "active":
        return torch.einsum("bt,bth->bh", mask, (x > 0).double()) / mask.sum(1)[:, None]
    rows = []
    for b in range(n_rows):
        valid = x[b, :lengths[b]]  # [L, H]
        rows.append(valid.max(dim=0).values if pool == "max" else valid[-1])
    return torch.stack(rows)  # [B, H]


# --- the reference against the independent computation ---------------------------------------

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pool", POOLS)
def test_reference_pooling_matches_independent(shape, pool):
    hidden, lengths = make_batch(shape)
    q, scale = pool_quant_reference(hidden, lengths, pool, "fp32")
    torch.testing.assert_close(q.double(), independent_pool(hidden, lengths, pool), atol=1e-5, rtol=1e-5)
    assert torch.equal(scale, torch.ones(shape[0]))


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("pool", POOLS)
def test_reference_pooling_dtypes(dtype, atol, rtol, pool):
    hidden, lengths = make_batch((5, 123, 123), dtype)
    q, _ = pool_quant_reference(hidden, lengths, pool, "fp32")
    torch.testing.assert_close(q.double(), independent_pool(hidden, lengths, pool), atol=atol, rtol=rtol)


def test_int8_rounding_is_half_away_from_zero():
    v = torch.tensor([[127.0, 63.5, -63.5, 0.49, -0.5, 0.0, 1.5, -2.5]])  # absmax 127 -> scale exactly 1
    q, scale = quantize_reference(v, "int8")
    assert q.dtype == torch.int8
    assert q.tolist() == [[127, 64, -64, 0, -1, 0, 2, -3]]
    assert scale.tolist() == [1.0]


def test_int8_scale_is_absmax_over_127_and_zero_row_is_zero():
    v = torch.tensor([[0.0, -2.54, 1.0], [0.0, 0.0, 0.0]])
    q, scale = quantize_reference(v, "int8")
    assert scale[0].item() == pytest.approx(2.54 / 127, rel=1e-6)
    assert q[0].tolist() == [0, -127, 50]  # 1.0 / 0.02 = 50
    assert scale[1].item() == 0.0 and q[1].tolist() == [0, 0, 0]


def test_bit_packing_little_endian():
    v = torch.tensor([[1.0, -1.0, 2.0, 3.0, 0.0, -4.0, 0.0, 0.5, 9.0]])  # 9 dims -> 2 bytes
    q, scale = quantize_reference(v, "bit")
    assert q.dtype == torch.uint8 and q.shape == (1, 2)
    assert q.tolist() == [[0b10001101, 0b00000001]]  # dims 0, 2, 3, 7 in byte 0; dim 8 = bit 0 of byte 1
    assert scale.item() == pytest.approx(20.5 / 9)
    rng = np.random.default_rng(1)
    wide = torch.from_numpy(rng.standard_normal((3, 37)).astype(np.float32))
    expected = np.packbits(wide.numpy() > 0, axis=1, bitorder="little")
    assert np.array_equal(quantize_reference(wide, "bit")[0].numpy(), expected)


@pytest.mark.parametrize("quant", QUANTS)
def test_dequantize_torch_and_numpy_agree_and_bound_the_error(quant):
    hidden, lengths = make_batch((4, 9, 21), seed=3, device="cpu")
    pooled, _ = pool_quant_reference(hidden, lengths, "mean", "fp32")  # [B, D]
    q, scale = pool_quant_reference(hidden, lengths, "mean", quant)
    back = dequantize(q, scale, quant, 21)
    back_np = dequantize(q.numpy(), scale.numpy(), quant, 21)
    assert back.dtype == torch.float32 and back.shape == (4, 21)
    assert isinstance(back_np, np.ndarray) and back_np.dtype == np.float32
    np.testing.assert_array_equal(back.numpy(), back_np)
    if quant == "fp32":
        assert torch.equal(back, pooled)
    elif quant == "fp16":
        torch.testing.assert_close(back, pooled, atol=1e-3, rtol=1e-3)
    elif quant == "int8":
        assert ((back - pooled).abs() <= scale[:, None] / 2 * (1 + 1e-5)).all()
        assert (q.abs().amax(dim=1) == 127).all()
    else:
        assert torch.equal(back.abs(), scale[:, None].expand(4, 21))
        assert torch.equal(back > 0, pooled > 0)
        torch.testing.assert_close(scale, pooled.abs().mean(dim=1))


def test_out_width_and_dtype():
    assert [out_width(9, q) for q in QUANTS] == [9, 9, 9, 2]
    assert out_width(8, "bit") == 1 and out_width(1, "bit") == 1
    assert [out_dtype(q) for q in QUANTS] == [torch.float32, torch.float16, torch.int8, torch.uint8]


# --- the Triton kernel against the reference --------------------------------------------------

def assert_matches_reference(q, scale, hidden, lengths, pool, quant, projection=None, atol=1e-5, rtol=1e-5,
                             offset=None):
    q_ref, scale_ref = pool_quant_reference(hidden, lengths, pool, quant, projection, offset)
    assert q.dtype == q_ref.dtype and q.shape == q_ref.shape
    torch.testing.assert_close(scale, scale_ref, atol=atol, rtol=rtol)
    if quant == "fp32":
        torch.testing.assert_close(q, q_ref, atol=atol, rtol=rtol)
    elif quant == "fp16":
        # one fp16 ulp (2^-10 relative) where fp32 summation order moves a value across a rounding edge
        torch.testing.assert_close(q.float(), q_ref.float(), atol=max(atol, 1e-4), rtol=2 ** -10)
    elif quant == "int8":
        diff = (q.int() - q_ref.int()).abs()
        assert diff.max() <= 1, "int8 differs by more than 1 LSB"
        assert (diff == 0).float().mean() >= 0.98, "more than 2% of int8 entries differ"
    else:
        pooled, _ = pool_quant_reference(hidden, lengths, pool, "fp32", projection, offset)  # [B, D]
        dim = pooled.shape[1]
        bits = dequantize(q, torch.ones_like(scale), "bit", dim) > 0
        bits_ref = dequantize(q_ref, torch.ones_like(scale), "bit", dim) > 0
        assert (bits == bits_ref)[pooled.abs() > 1e-5].all(), "sign bit differs away from zero"
        tail = out_width(dim, "bit") * 8 - dim
        if tail:
            assert (q[:, -1] >> (8 - tail) == 0).all(), "padding bits of the last byte must be 0"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("pool", POOLS)
def test_triton_matches_reference(shape, pool):
    hidden, lengths = make_batch(shape, seed=sum(shape))
    for quant in QUANTS:
        q, scale = pool_quant(hidden, lengths, pool, quant, backend="triton")
        assert_matches_reference(q, scale, hidden, lengths, pool, quant)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_int8_and_bit_exact_on_rounding_edges(backend):
    # 'last' pools without arithmetic, so both twins quantise the very same values: halves must round
    # away from zero, and the bits must land little-endian.
    row = [127.0, 63.5, -63.5, 0.49, -0.5, 0.0, 1.5, -2.5, 9.0]
    hidden = torch.tensor([[[5.0] * 9, row], [row, [PAD] * 9]], device=DEVICE)  # [2, 2, 9]; row 1: one token
    lengths = torch.tensor([2, 1], device=DEVICE)
    q, scale = pool_quant(hidden, lengths, "last", "int8", backend=backend)
    assert q.tolist() == [[127, 64, -64, 0, -1, 0, 2, -3, 9]] * 2 and scale.tolist() == [1.0, 1.0]
    q, scale = pool_quant(hidden, lengths, "last", "bit", backend=backend)
    assert q.tolist() == [[0b01001011, 0b00000001]] * 2  # dims 0, 1, 3, 6; dim 8
    assert scale[0].item() == pytest.approx(sum(map(abs, row)) / 9)


@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
@pytest.mark.parametrize("pool", POOLS)
def test_triton_matches_reference_dtypes(dtype, atol, rtol, pool):
    hidden, lengths = make_batch((4, 37, 200), dtype, seed=7)
    for quant in QUANTS:
        q, scale = pool_quant(hidden, lengths, pool, quant, backend="triton")
        assert_matches_reference(q, scale, hidden, lengths, pool, quant, atol=atol, rtol=rtol)
    q, _ = pool_quant(hidden, lengths, pool, "fp32", backend="triton")
    torch.testing.assert_close(q.double(), independent_pool(hidden, lengths, pool), atol=atol, rtol=rtol)


@pytest.mark.parametrize("shape, dim", [((3, 20, 130), 48), ((1, 5, 7), 3), ((2, 9, 64), 200)])
@pytest.mark.parametrize("pool", ["mean", "active"])
def test_triton_with_projection_matches_reference(shape, dim, pool):
    hidden, lengths = make_batch(shape, seed=11)
    projection = make_projection(shape[2], dim, seed=5)
    for quant in QUANTS:
        q, scale = pool_quant(hidden, lengths, pool, quant, projection, backend="triton")
        assert q.shape == (shape[0], out_width(dim, quant))
        assert_matches_reference(q, scale, hidden, lengths, pool, quant, projection, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("projected", [False, True])
def test_offset_is_subtracted_before_quantising(backend, projected):
    hidden, lengths = make_batch((3, 21, 150), seed=12)
    projection = make_projection(150, 40, seed=2) if projected else None
    dim = 40 if projected else 150
    plain, _ = pool_quant(hidden, lengths, "mean", "fp32", projection, backend=backend)  # [B, D]
    offset = plain.mean(dim=0)  # [D]: the batch mean, as a calibrated dataset mean would be
    centred, ones = pool_quant(hidden, lengths, "mean", "fp32", projection, backend=backend, offset=offset)
    torch.testing.assert_close(centred, plain - offset, atol=1e-6, rtol=0)
    assert torch.equal(ones, torch.ones(3, device=DEVICE))
    for quant in ("fp16", "int8", "bit"):
        q, scale = pool_quant(hidden, lengths, "mean", quant, projection, backend=backend, offset=offset)
        assert_matches_reference(q, scale, hidden, lengths, "mean", quant, projection, rtol=1e-4, offset=offset)
        # the quantised rows are the centred ones: quantising them directly gives the same codes
        q_direct, scale_direct = quantize_reference(plain - offset, quant)
        if quant == "int8":
            assert (q.int() - q_direct.int()).abs().max() <= 1
        elif quant == "bit":
            assert (dequantize(q, scale, quant, dim) > 0)[(plain - offset).abs() > 1e-5].equal(
                ((plain - offset) > 0)[(plain - offset).abs() > 1e-5])
        torch.testing.assert_close(scale, scale_direct, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("pool", POOLS)
def test_padding_never_leaks(backend, pool):
    loud, lengths = make_batch((3, 30, 50), seed=2, pad=PAD)
    quiet, _ = make_batch((3, 30, 50), seed=2, pad=0.0)
    for quant in QUANTS:
        a, sa = pool_quant(loud, lengths, pool, quant, backend=backend)
        b, sb = pool_quant(quiet, lengths, pool, quant, backend=backend)
        assert torch.equal(a, b) and torch.equal(sa, sb)
    pooled, _ = pool_quant(loud, lengths, pool, "fp32", backend=backend)
    assert pooled.abs().max() < 10  # the 1e4 padding would dominate every pool


def sentinels(dtype):
    """Two fills that no correct writer leaves behind in both runs."""
    if dtype.is_floating_point:
        return (math.nan, -7.0)
    return (0, 0x7F) if dtype == torch.int8 else (0x00, 0xFF)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("projected", [False, True])
def test_every_output_element_is_written(backend, projected):
    hidden, lengths = make_batch((3, 19, 45), seed=4)
    projection = make_projection(45, 20, seed=1) if projected else None
    for pool in ("mean", "last"):
        for quant in QUANTS:
            results = []
            for fill in sentinels(out_dtype(quant)):
                width = out_width(20 if projected else 45, quant)
                out = torch.full((3, width), fill, dtype=out_dtype(quant), device=DEVICE)
                scale_out = torch.full((3,), fill if isinstance(fill, float) else -1.0, device=DEVICE)
                got, got_scale = pool_quant(hidden, lengths, pool, quant, projection, out, scale_out, backend)
                assert got.data_ptr() == out.data_ptr() and got_scale.data_ptr() == scale_out.data_ptr()
                results.append((out.clone(), scale_out.clone()))
            (a, sa), (b, sb) = results
            assert torch.equal(a, b) and torch.equal(sa, sb), f"{pool}/{quant}: an element kept its fill"
            assert_matches_reference(a, sa, hidden, lengths, pool, quant, projection, rtol=1e-4)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("quant", QUANTS)
def test_column_slice_out_leaves_neighbours_alone(backend, quant):
    hidden, lengths = make_batch((4, 11, 70), seed=6)
    width = out_width(70, quant)
    fill = sentinels(out_dtype(quant))[1]
    wide = torch.full((4, width + 7), fill, dtype=out_dtype(quant), device=DEVICE)  # [B, 3 + W + 4]
    scales = torch.full((4, 3), -5.0, device=DEVICE)  # scale_out is the strided column scales[:, 1]
    pool_quant(hidden, lengths, "max", quant, out=wide[:, 3:3 + width], scale_out=scales[:, 1], backend=backend)
    assert (wide[:, :3] == fill).all() and (wide[:, 3 + width:] == fill).all()
    assert (scales[:, 0] == -5.0).all() and (scales[:, 2] == -5.0).all()
    assert_matches_reference(wide[:, 3:3 + width], scales[:, 1], hidden, lengths, "max", quant)


def test_strided_hidden_and_int32_lengths():
    big, lengths = make_batch((3, 25, 90), seed=8)
    hidden = big[:, :24, 5:65]  # row and token strides of the bigger tensor, unit stride along H
    lengths = lengths.clamp(max=24).to(torch.int32)
    strided = big[:, :24, 5:65:2]  # stride 2 along H: copied to contiguous by the launcher
    for h in (hidden, strided):
        for pool in POOLS:
            q, scale = pool_quant(h, lengths, pool, "int8", backend="triton")
            assert_matches_reference(q, scale, h, lengths, pool, "int8")


# --- projection -------------------------------------------------------------------------------

def test_projection_is_seeded_and_scaled():
    r = make_projection(300, 64, seed=42)
    assert r.shape == (300, 64) and r.dtype == torch.float32 and r.device.type == "cpu"
    assert torch.equal(r, make_projection(300, 64, seed=42))
    assert not torch.equal(r, make_projection(300, 64, seed=43))
    # entries N(0, 1/P): std 0.125 at P = 64, measured over 19,200 entries (~0.5% sampling error)
    assert r.std().item() == pytest.approx(1 / 8, rel=0.03)
    assert abs(r.mean().item()) < 0.005
    torch.manual_seed(0)  # the global generator must play no part
    assert torch.equal(r, make_projection(300, 64, seed=42))


def test_projection_preserves_cosines_and_norms():
    gen = torch.Generator().manual_seed(0)
    # correlated vectors so that cosines spread over [-0.3, 0.9] instead of clustering at 0
    base = torch.randn(4, 512, generator=gen)  # [4, H]
    mix = torch.randn(60, 4, generator=gen)
    x = mix @ base + 0.7 * torch.randn(60, 512, generator=gen)  # [N, H]
    y = x @ make_projection(512, 256, seed=3)  # [N, P]
    cos_x = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(x, dim=1).T
    cos_y = torch.nn.functional.normalize(y, dim=1) @ torch.nn.functional.normalize(y, dim=1).T
    assert cos_x.std() > 0.3  # the data really has structure to preserve
    err = (cos_x - cos_y).abs()
    # JL at P = 256: error std about (1 - cos^2) / sqrt(P) <= 0.0625
    assert err.mean() < 0.05 and err.max() < 0.25
    ratio = y.norm(dim=1) ** 2 / x.norm(dim=1) ** 2
    assert abs(ratio.mean().item() - 1) < 0.1 and (ratio - 1).abs().max() < 0.5


def test_make_projection_rejects_bad_dims():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(InputError):
            make_projection(bad, 4, seed=0)
        with pytest.raises(InputError):
            make_projection(4, bad, seed=0)


# --- dispatch and bad input -------------------------------------------------------------------

def test_auto_backend_follows_triton_interpret(monkeypatch):
    import mads_fast.kernels.pool_quant as kernel

    calls = []
    monkeypatch.setattr(kernel, "pool_quant_triton", lambda *args: calls.append(args))
    hidden, lengths = make_batch((2, 3, 4), device="cpu")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    pool_quant(hidden, lengths, "mean", "fp32")
    assert len(calls) == 1
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    q, _ = pool_quant(hidden, lengths, "mean", "fp32")
    assert len(calls) == 1
    torch.testing.assert_close(q, pool_quant_reference(hidden, lengths, "mean", "fp32")[0])
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        pool_quant(hidden, lengths, "mean", "fp32", backend="triton")


@pytest.mark.parametrize("kwargs, message", [
    (dict(pool="median"), "unknown pool 'median'"),
    (dict(quant="int4"), "unknown quant 'int4'"),
    (dict(backend="cuda"), "unknown backend 'cuda'"),
    (dict(hidden=torch.zeros(2, 5)), r"hidden must be a \[B, T, H\] tensor, got \(2, 5\)"),
    (dict(hidden=torch.zeros(2, 5, 4, dtype=torch.int32)), "float32, float16 or bfloat16"),
    (dict(hidden=torch.zeros(2, 0, 4)), "B, T, H >= 1"),
    (dict(lengths=torch.tensor([1, 2, 3])), r"lengths must be a \[B=2\] tensor"),
    (dict(lengths=torch.tensor([1.0, 2.0])), "int32 or int64"),
    (dict(lengths=torch.tensor([0, 2])), r"lengths must lie in \[1, T=5\], got min 0"),
    (dict(lengths=torch.tensor([6, 2])), "got min 2 and max 6"),
    (dict(projection=torch.zeros(3, 2)), r"projection must be a \[H=4, P\] tensor"),
    (dict(out=torch.zeros(2, 5)), r"out must have shape \(2, 4\)"),
    (dict(out=torch.zeros(2, 4, dtype=torch.float16)), "out must be torch.float32"),
    (dict(scale_out=torch.zeros(3)), r"scale_out must have shape \(2,\)"),
    (dict(offset=torch.zeros(3)), r"offset must be a floating \[D=4\] tensor, got \(3,\)"),
    (dict(offset=torch.zeros(4, dtype=torch.int64)), r"offset must be a floating \[D=4\] tensor"),
    (dict(offset=torch.zeros(4), projection=torch.zeros(4, 2)), r"offset must be a floating \[D=2\] tensor"),
])
def test_bad_input_is_one_line_input_error(kwargs, message):
    args = dict(hidden=torch.zeros(2, 5, 4), lengths=torch.tensor([5, 1]), pool="mean", quant="fp32")
    args.update(kwargs)
    with pytest.raises(InputError, match=message) as info:
        pool_quant(**args)
    assert "\n" not in str(info.value)


# --- GPU compilation, checked without a GPU ---------------------------------------------------

SM90_COMPILE = r'''
import itertools, re, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import mads_fast.kernels.pool_quant as K

D16 = [["tt.divisibility", 16]]
def compile_sm90(fn, types, consts, aligned=()):
    sig = {name: ("constexpr" if name in consts else types[name]) for name in fn.arg_names}
    attrs = {(fn.arg_names.index(name),): D16 for name in aligned}
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32),
                          options={"num_warps": K._NUM_WARPS})

pool_types = dict(X_ptr="*bf16", X_row_stride="i32", X_tok_stride="i32", Len_ptr="*i64", Out_ptr="*fp16",
                  Out_row_stride="i32", Out_col_stride="i32", Scale_ptr="*fp32", Scale_stride="i32",
                  Scratch_ptr="*fp32", Count_ptr="*i32", Off_ptr="*fp32", n_tok="i32", n_cols="i32")
aligned = ("X_ptr", "X_row_stride", "X_tok_stride", "Out_ptr", "n_cols")
for pool, (quant, out) in itertools.product(range(4), enumerate(("*fp32", "*fp16", "*i8", "*u8"))):
    base = dict(POOL=pool, QUANT=quant, WRITE_SCALE=True, HAS_OFFSET=pool % 2 == 0, BLOCK_T=K._BLOCK_T,
                BLOCK_H=K._BLOCK_H, BLOCK_Q=K._BLOCK_Q)
    ptx = compile_sm90(K._pool_quant_kernel, dict(pool_types, Out_ptr=out), base, aligned).asm["ptx"]
    if pool != 2:  # the streaming pools must load 16 bytes per instruction
        assert "ld.global.v4.b32" in ptx, f"pool {pool}: no 128-bit loads"
    if quant >= 2:  # the arrival counter orders the scratch stores: barrier, then acq_rel atomic, L2 reads
        atom = re.search(r"atom\.global\.gpu\.acq_rel\.add|atom\.acq_rel\.gpu\.global\.add", ptx)
        assert atom, "no acq_rel gpu-scope atomic add"
        assert "bar.sync" in ptx[:atom.start()], "no barrier before the arrival atomic"
        assert "ld.global.cg" in ptx[atom.start():], "the last program must read the scratch from L2"
    # Triton turns int arguments equal to 1 into constants: T = 1, H = 1, unit strides
    ones = dict(base, n_tok=1, n_cols=1, X_tok_stride=1, Out_col_stride=1, Scale_stride=1)
    compile_sm90(K._pool_quant_kernel, dict(pool_types, Out_ptr=out), ones)
quant_types = dict(V_ptr="*fp32", V_row_stride="i32", Out_ptr="*u8", Out_row_stride="i32", Out_col_stride="i32",
                   Scale_ptr="*fp32", Scale_stride="i32", Off_ptr="*fp32", n_cols="i32")
for (quant, out), has_offset in itertools.product(enumerate(("*fp32", "*fp16", "*i8", "*u8")), (False, True)):
    consts = dict(QUANT=quant, HAS_OFFSET=has_offset, BLOCK_SIZE=K._BLOCK_Q)
    compile_sm90(K._quantize_rows_kernel, dict(quant_types, Out_ptr=out), consts)
    compile_sm90(K._quantize_rows_kernel, dict(quant_types, Out_ptr=out), dict(consts, n_cols=1, Out_col_stride=1))
print("compiled")
'''


def test_kernels_compile_for_sm90(tmp_path):
    """The interpreter skips code generation: compile for an H100 (no launch) to catch GPU-only errors,
    in a fresh process because the interpreter patches triton.language in this one."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia.compiler")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    result = subprocess.run([sys.executable, "-c", SM90_COMPILE], env=env, capture_output=True, text=True,
                            timeout=300)
    if result.returncode != 0 and "ptxas" in result.stderr and "not found" in result.stderr.lower():
        pytest.skip("ptxas is not available")
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_hidden_that_requires_grad_gives_plain_features(backend):
    hidden, lengths = make_batch((2, 5, 9), seed=9)
    hidden.requires_grad_(True)  # a hook can see activations of a model left in training mode
    q, scale = pool_quant(hidden, lengths, "mean", "int8", backend=backend)
    assert not q.requires_grad and not scale.requires_grad
    assert_matches_reference(q, scale, hidden.detach(), lengths, "mean", "int8")


# --- random shapes ----------------------------------------------------------------------------

@settings(max_examples=30, deadline=None, database=None, derandomize=True)
@given(n_rows=st.integers(1, 4), n_tok=st.integers(1, 40), n_cols=st.integers(1, 300),
       pool=st.sampled_from(POOLS), quant=st.sampled_from(QUANTS), project=st.sampled_from([0, 0, 1, 17]),
       dtype=st.sampled_from([torch.float32, torch.bfloat16]), centre=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_triton_matches_reference_on_random_shapes(n_rows, n_tok, n_cols, pool, quant, project, dtype, centre, seed):
    hidden, lengths = make_batch((n_rows, n_tok, n_cols), dtype, seed=seed)
    projection = make_projection(n_cols, project, seed=seed) if project else None
    offset = torch.linspace(-0.5, 0.5, project or n_cols, device=DEVICE) if centre else None
    q, scale = pool_quant(hidden, lengths, pool, quant, projection, backend="triton", offset=offset)
    assert_matches_reference(q, scale, hidden, lengths, pool, quant, projection, atol=2e-5, rtol=1e-4,
                             offset=offset)


# --- devices ------------------------------------------------------------------------------------

def test_launches_run_under_the_device_of_hidden(monkeypatch):
    """Triton launches on the current CUDA device: the launcher must make hidden's device current. A
    stand-in for a cuda:1 tensor checks the guard (the launch itself is recorded, not run)."""
    import mads_fast.kernels.pool_quant as K

    active, seen = [], []

    class Guard:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            active.append(self.device)

        def __exit__(self, *exc):
            active.pop()

    monkeypatch.setattr(torch.cuda, "device", Guard)
    monkeypatch.setattr(K, "_launch", lambda hidden, *args: seen.append((hidden, list(active))))
    on_gpu1 = type("StandIn", (), {"is_cuda": True, "device": torch.device("cuda", 1)})()
    K.pool_quant_triton(on_gpu1, None, "mean", "int8", None, None, None)
    assert seen == [(on_gpu1, [torch.device("cuda", 1)])] and active == []
    cpu = torch.zeros(1, 1, 1)  # the interpreter's CPU tensors: no CUDA guard at all
    K.pool_quant_triton(cpu, None, "mean", "int8", None, None, None)
    assert seen[1] == (cpu, [])


def _second_device():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count < 2:
        pytest.skip(f"needs 2 CUDA devices, this machine has {count}")
    return torch.device("cuda", 1)


@pytest.mark.gpu
@pytest.mark.multi_gpu
@pytest.mark.parametrize("projected", [False, True])
def test_triton_on_a_second_device_while_the_first_is_current(projected):
    device = _second_device()
    hidden, lengths = make_batch((5, 40, 300), torch.bfloat16, seed=21, device=device)
    projection = make_projection(300, 64, seed=3).to(device) if projected else None
    with torch.cuda.device(0):
        for quant in QUANTS:
            q, scale = pool_quant(hidden, lengths, "mean", quant, projection, backend="triton")
            assert q.device == device and scale.device == device
            assert_matches_reference(q, scale, hidden, lengths, "mean", quant, projection, atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("quant", ["int8", "bit"])
def test_arrival_counter_stress_is_bitwise_repeatable(quant, monkeypatch):
    """B=4096 rows x 32 H-blocks of programs race to be each row's last arriver; the last one reads the
    others' blocks from the scratch. The scratch is pre-filled with NaN each repeat, so a read of a block
    whose store was not yet visible shows (a NaN scale, codes off) instead of passing silently; 10 repeats
    must agree bit for bit with each other and with the reference's codes."""
    if not torch.cuda.is_available():
        pytest.skip("the arrival counter races only on a GPU (the interpreter runs programs one by one)")
    n_rows, n_tok, n_cols = 4096, 16, 4096
    hidden, lengths = make_batch((n_rows, n_tok, n_cols), torch.bfloat16, seed=31, device="cuda")
    real_empty, poisoned = torch.empty, []

    def nan_scratch(*shape, **kwargs):  # the launcher's fp32 scratch [B, H], poisoned
        t = real_empty(*shape, **kwargs)
        if t.dtype == torch.float32 and tuple(t.shape) == (n_rows, n_cols):
            poisoned.append(t.fill_(math.nan).data_ptr())
        return t

    monkeypatch.setattr(torch, "empty", nan_scratch)
    runs = []
    for _ in range(10):
        q, scale = pool_quant(hidden, lengths, "mean", quant, backend="triton")
        torch.cuda.synchronize()
        runs.append((q.cpu(), scale.cpu()))
    monkeypatch.undo()
    assert len(poisoned) == 10, "the scratch was not allocated where the test poisons it"
    q0, s0 = runs[0]
    assert torch.isfinite(s0).all() and (s0 > 0).all()
    for q, s in runs[1:]:
        assert torch.equal(q, q0) and torch.equal(s.view(torch.int32), s0.view(torch.int32))
    assert_matches_reference(q0.cuda(), s0.cuda(), hidden, lengths, "mean", quant)
