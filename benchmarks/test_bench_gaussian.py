"""pytest-benchmark suite: reparameterize, reparameterize_kl and gaussian_kl (cases in benchmarks/conftest.py)."""

OPS = ("reparameterize", "reparameterize_kl", "gaussian_kl")


def test_gaussian(case, run_case):
    run_case(case)
