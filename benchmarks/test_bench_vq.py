"""pytest-benchmark suite: vq_nearest and vector_quantize (cases in benchmarks/conftest.py)."""

OPS = ("vq_nearest", "vector_quantize")


def test_vq(case, run_case):
    run_case(case)
