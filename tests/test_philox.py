"""Tests of fastvae's noise stream (:mod:`fastvae.reference.philox`): Philox4x32-10 and its normals.

Every backend draws its noise from this stream, so it is checked against sources that owe nothing to
it: Random123's published known-answer vectors, a pure-Python-int Philox written here, a pure-Python
Box-Muller, the normal distribution itself, and (when triton is installed) Triton's built-in
``tl.philox``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from fastvae.reference.philox import MAX_SEED, normal_stream, philox4x32
from tests.tolerances import (
    EXACT,
    FLOAT32_ORDER_ONE,
    KOLMOGOROV_CRITICAL_0_1_PERCENT,
    NORMAL_MOMENT_SIGMAS,
    assert_close,
)

MASK32 = 0xFFFFFFFF


# --- an independent Philox4x32-10 on Python ints ---------------------------------------------------


def _mulhilo(a: int, b: int) -> tuple[int, int]:
    product = a * b
    return product >> 32, product & MASK32


def python_philox(counter: tuple[int, int, int, int], key: tuple[int, int]) -> tuple[int, int, int, int]:
    """Philox4x32-10 (Salmon et al., SC'11) with Python's unbounded ints."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(10):
        hi0, lo0 = _mulhilo(0xD2511F53, c0)
        hi1, lo1 = _mulhilo(0xCD9E8D57, c2)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + 0x9E3779B9) & MASK32
        k1 = (k1 + 0xBB67AE85) & MASK32
    return c0, c1, c2, c3


def python_normals(row: int, group: int, seed: int) -> list[float]:
    """The four normals of Philox call ``group`` of ``row`` for ``seed``, as the stream's layout says."""
    words = python_philox((group, row & MASK32, row >> 32, 0), (seed & MASK32, seed >> 32))
    u0, u1, u2, u3 = (((w >> 9) + 0.5) * 2.0**-23 for w in words)
    r01 = math.sqrt(-2.0 * math.log(u0))
    r23 = math.sqrt(-2.0 * math.log(u2))
    return [
        r01 * math.cos(2.0 * math.pi * u1),
        r01 * math.sin(2.0 * math.pi * u1),
        r23 * math.cos(2.0 * math.pi * u3),
        r23 * math.sin(2.0 * math.pi * u3),
    ]


def fastvae_philox(counters: list[tuple[int, int, int, int]], key: tuple[int, int]) -> list[tuple[int, ...]]:
    """fastvae's philox4x32 on a batch of counters, back as a list of Python-int 4-tuples."""
    columns = torch.tensor(counters, dtype=torch.int64).T
    words = philox4x32(tuple(columns), key)
    return [tuple(int(w[i]) for w in words) for i in range(len(counters))]


# --- Philox words -----------------------------------------------------------------------------------


# Random123's kat_vectors for philox4x32 with 10 rounds.
KNOWN_ANSWERS = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    (
        (0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF),
        (0xFFFFFFFF, 0xFFFFFFFF),
        (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD),
    ),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS, ids=["zeros", "ones", "pi"])
def test_philox_matches_random123_known_answers(counter, key, expected):
    assert fastvae_philox([counter], key) == [expected]


@pytest.mark.parametrize("counter, key, expected", KNOWN_ANSWERS, ids=["zeros", "ones", "pi"])
def test_python_philox_matches_random123_known_answers(counter, key, expected):
    # The independent implementation below is only a witness if it is itself right.
    assert python_philox(counter, key) == expected


def test_philox_matches_python_ints_on_random_and_edge_words():
    gen = torch.Generator().manual_seed(0)
    random_words = torch.randint(0, 2**32, (200, 4), generator=gen, dtype=torch.int64).tolist()
    # Edge words: 0, 2**31 - 1, 2**31 and 2**32 - 1, where sign and overflow mistakes show.
    edges = [0, 2**31 - 1, 2**31, MASK32]
    edge_words = [[a, b, c, d] for a in edges for b in edges[:2] for c in edges for d in edges[2:]]
    counters = [tuple(c) for c in random_words + edge_words]
    keys = [(0, 0), (MASK32, MASK32), (2**31, 2**31 - 1)] + [
        tuple(k) for k in torch.randint(0, 2**32, (3, 2), generator=gen, dtype=torch.int64).tolist()
    ]
    for key in keys:
        assert fastvae_philox(counters, key) == [python_philox(c, key) for c in counters], key


def test_philox_keeps_words_in_uint32_range():
    counters = [(MASK32, MASK32, MASK32, MASK32), (2**31, 2**31, 2**31, 2**31)]
    for words in fastvae_philox(counters, (MASK32, MASK32)):
        assert all(0 <= w <= MASK32 for w in words)


# --- the normal stream's layout ---------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 7, 2**32 - 1, 2**32 + 12345, 0xDEADBEEF12345678 & (MAX_SEED - 1), MAX_SEED - 1])
def test_normal_stream_elements_follow_the_documented_layout(seed):
    # Rows >= 2**32 (counter word c2 = row >> 32) are out of reach: normal_stream would have to build
    # 2**32 rows. Reachable rows check c1 = row and c2 = 0; the seeds check both key words.
    rows, dim = 5, 11  # 11 = two full groups of 4 and a partial one
    stream = normal_stream(rows, dim, seed)
    assert stream.shape == (rows, dim)
    assert stream.dtype == torch.float32
    expected = torch.tensor(
        [[python_normals(r, d // 4, seed)[d % 4] for d in range(dim)] for r in range(rows)], dtype=torch.float64
    )
    # The stream computes log/cos/sin in float32: compare at float32's tolerance.
    assert_close(stream, expected, torch.float32)


def test_normal_stream_prefix_property():
    seed = 1234
    wide = normal_stream(6, 8, seed)
    # Each row starts a fresh group, so a narrower stream is the first columns of a wider one...
    torch.testing.assert_close(normal_stream(6, 5, seed), wide[:, :5], **EXACT)
    torch.testing.assert_close(normal_stream(6, 1, seed), wide[:, :1], **EXACT)
    # ...and fewer rows are the first rows.
    torch.testing.assert_close(normal_stream(3, 8, seed), wide[:3], **EXACT)


def test_normal_stream_is_deterministic_and_depends_on_every_input():
    base = normal_stream(4, 8, 5)
    torch.testing.assert_close(normal_stream(4, 8, 5), base, **EXACT)
    assert not torch.equal(normal_stream(4, 8, 6), base)
    # Seeds that differ only in the high 32 bits (key word k1) give different streams.
    assert not torch.equal(normal_stream(4, 8, 5 + 2**32), base)
    # Rows and groups are different counters: no two rows or groups repeat.
    assert not torch.equal(base[0], base[1])
    assert not torch.equal(base[:, :4], base[:, 4:])


def test_normal_stream_empty_shapes():
    assert normal_stream(0, 7, 1).shape == (0, 7)
    assert normal_stream(3, 0, 1).shape == (3, 0)


@pytest.mark.parametrize("seed", [-1, MAX_SEED])
def test_normal_stream_rejects_out_of_range_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        normal_stream(2, 2, seed)


# --- the normal stream's distribution ---------------------------------------------------------------


def test_normal_stream_is_standard_normal():
    rows, dim = 4096, 64
    x = normal_stream(rows, dim, 20240601).to(torch.float64)
    n = x.numel()
    assert torch.isfinite(x).all()
    # Uniforms lie in [2**-24, 1 - 2**-24], so |n| <= sqrt(-2 ln 2**-24).
    assert x.abs().max().item() <= math.sqrt(-2.0 * math.log(2.0**-24)) + FLOAT32_ORDER_ONE.atol
    # Bounds are six standard errors of each statistic for n standard normals.
    mean, std = x.mean().item(), x.std().item()
    assert abs(mean) < NORMAL_MOMENT_SIGMAS / math.sqrt(n)
    assert abs(std - 1.0) < NORMAL_MOMENT_SIGMAS / math.sqrt(2.0 * n)
    # Fourth moment 3 (a uniform scaled to unit variance has 1.8), standard error sqrt(96 / n).
    assert abs((x**4).mean().item() - 3.0) < NORMAL_MOMENT_SIGMAS * math.sqrt(96.0 / n)
    # Each lane on its own is standard normal too (a lane mix-up would skew one of them).
    for lane in range(4):
        lane_x = x[:, lane::4]
        m = lane_x.numel()
        assert abs(lane_x.mean().item()) < NORMAL_MOMENT_SIGMAS / math.sqrt(m), lane
        assert abs(lane_x.std().item() - 1.0) < NORMAL_MOMENT_SIGMAS / math.sqrt(2.0 * m), lane
    # The cos/sin pair sharing a radius is uncorrelated; so are neighbouring pairs.
    for a, b in ((0, 1), (2, 3), (1, 2)):
        corr = torch.corrcoef(torch.stack((x[:, a::4].flatten(), x[:, b::4].flatten())))[0, 1].item()
        assert abs(corr) < NORMAL_MOMENT_SIGMAS / math.sqrt(n / 4), (a, b)


def test_normal_stream_passes_kolmogorov_smirnov():
    x = normal_stream(1024, 64, 77).to(torch.float64).flatten().sort().values
    n = x.numel()
    cdf = torch.special.ndtr(x)
    upper = torch.arange(1, n + 1, dtype=torch.float64) / n
    lower = torch.arange(0, n, dtype=torch.float64) / n
    d = torch.maximum(upper - cdf, cdf - lower).max().item()
    # 1.95 / sqrt(n) is the Kolmogorov distribution's 0.1% critical value.
    assert d < KOLMOGOROV_CRITICAL_0_1_PERCENT / math.sqrt(n)


# --- Triton's built-in Philox reproduces the words -------------------------------------------------

_TRITON_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def _philox_kernel(counter_ptr, out_ptr, seed, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        mask = offs < n
        c0 = tl.load(counter_ptr + offs, mask=mask)
        c1 = tl.load(counter_ptr + n + offs, mask=mask)
        c2 = tl.load(counter_ptr + 2 * n + offs, mask=mask)
        c3 = tl.load(counter_ptr + 3 * n + offs, mask=mask)
        w0, w1, w2, w3 = tl.philox(seed, c0, c1, c2, c3)
        tl.store(out_ptr + offs, w0.to(tl.int32, bitcast=True), mask=mask)
        tl.store(out_ptr + n + offs, w1.to(tl.int32, bitcast=True), mask=mask)
        tl.store(out_ptr + 2 * n + offs, w2.to(tl.int32, bitcast=True), mask=mask)
        tl.store(out_ptr + 3 * n + offs, w3.to(tl.int32, bitcast=True), mask=mask)

    request = json.loads(sys.stdin.read())
    counters = torch.tensor(request["counters"], dtype=torch.int64).T.contiguous()  # (4, n)
    as_int32 = torch.where(counters >= 2**31, counters - 2**32, counters).to(torch.int32)
    n = as_int32.shape[1]
    words = {}
    for seed in request["seeds"]:
        out = torch.empty_like(as_int32)
        _philox_kernel[(1,)](as_int32, out, seed, n, BLOCK=triton.next_power_of_2(n))
        words[str(seed)] = (out.to(torch.int64) & 0xFFFFFFFF).T.tolist()
    print(json.dumps(words))
    """
)

TRITON_SEEDS = [0, 1234, 2**32 + 5, MAX_SEED - 25]
TRITON_COUNTERS = [(0, 0, 0, 0), (1, 2, 3, 0), (MASK32, 2**31, 2**31 - 1, 0), (5, MASK32, 1, 0), (3, 17, 0, 0)]


@pytest.fixture(scope="module")
def triton_words() -> dict[int, list[tuple[int, ...]]]:
    """Words of Triton's tl.philox under TRITON_INTERPRET=1 (a subprocess: the flag is read at import)."""
    if importlib.util.find_spec("triton") is None:
        pytest.skip("triton is not installed")
    result = subprocess.run(
        [sys.executable, "-c", _TRITON_SCRIPT],
        input=json.dumps({"counters": TRITON_COUNTERS, "seeds": TRITON_SEEDS}),
        capture_output=True,
        text=True,
        env=dict(os.environ, TRITON_INTERPRET="1"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return {int(seed): [tuple(w) for w in words] for seed, words in json.loads(result.stdout).items()}


@pytest.mark.parametrize("seed", TRITON_SEEDS)
def test_triton_builtin_philox_gives_the_same_words(triton_words, seed):
    # tl.philox(seed, c0..c3) keys Philox4x32-10 with (seed mod 2**32, seed >> 32), as the stream does.
    assert triton_words[seed] == fastvae_philox(TRITON_COUNTERS, (seed & MASK32, seed >> 32))
