"""pytest-benchmark suite: iwae_log_weights then iwae_bound, as one case (cases in benchmarks/conftest.py)."""

OPS = ("iwae",)


def test_iwae(case, run_case):
    run_case(case)
