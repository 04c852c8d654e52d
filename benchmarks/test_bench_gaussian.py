"""pytest-benchmark suite: reparameterize, reparameterize_kl, gaussian_kl and gaussian_log_prob (cases in benchmarks/conftest.py)."""

OPS = ("reparameterize", "reparameterize_kl", "gaussian_kl", "gaussian_log_prob")


def test_gaussian(case, run_case):
    run_case(case)
