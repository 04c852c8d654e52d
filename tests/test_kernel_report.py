"""The static kernel report of ``python -m fastvae.kernels.aot --report`` (issue 15): how it reads SASS.

The report's numbers come from three pieces checked here on listings written out by hand: the SASS
parser, the steady-state loop finder and the occupancy formula; then the bounds' matching and
verdicts; and once, in a subprocess that compiles for sm_90 (no GPU needed), a real kernel's listing.
The CUDA build's report (csrc/check_resources.py --report) reuses them; its own pieces, the chunk a
thread moves per iteration and the launch bounds read from the ELF, are checked last.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

aot = pytest.importorskip("fastvae.kernels.aot")


def _listing(*lines: str) -> str:
    """A ``cuobjdump -sass`` listing of one kernel: each line ``"ADDR OPCODE OPERANDS"`` becomes an
    instruction line with its encoding comment, as cuobjdump prints them."""
    body = []
    for line in lines:
        address, instruction = line.split(" ", 1)
        body.append(f"        /*{address}*/                   {instruction} ;   /* 0x000000000000794d */")
        body.append("                                                          /* 0x000fea0003800000 */")
    return "\n\tcode for sm_90a\n\t\tFunction : kernel\n" + "\n".join(body) + "\n"


LOOPS = _listing(
    "0000 LDC R1, c[0x0][0x28]",
    "0010 LDG.E R2, desc[UR4][R8.64]",
    "0020 @P0 BRA 0x40",  # a forward branch: no loop
    "0030 IADD3 R3, R3, 0x1, RZ",
    "0040 LDG.E.128 R4, desc[UR4][R10.64]",  # outer loop head
    "0050 FFMA R4, R4, R5, R6",
    "0060 LDG.E.128 R12, desc[UR4][R14.64]",  # inner loop head
    "0070 FMUL R12, R12, R13",
    "0080 STG.E.128 desc[UR4][R16.64], R12",
    "0090 @!P1 BRA 0x60",  # inner back edge
    "00a0 BAR.SYNC.DEFER_BLOCKING 0x0",
    "00b0 @!P2 BRA 0x40",  # outer back edge
    "00c0 EXIT",
    "00d0 BRA 0xd0",  # the spin after EXIT: a loop without loads
)


def test_parse_sass_reads_addresses_opcodes_and_operands_without_predicates():
    instructions = aot.parse_sass(LOOPS)
    assert [i.address for i in instructions] == list(range(0, 0xE0, 0x10))
    assert instructions[1].opcode == "LDG.E"
    assert instructions[2].opcode == "BRA" and instructions[2].operands == "0x40"
    assert instructions[9].opcode == "BRA"  # "@!P1" is not taken for the opcode
    assert [i.back_edge_target for i in instructions if i.opcode == "BRA"] == [None, 0x60, 0x40, 0xD0]


def test_steady_state_loop_is_the_innermost_loop_with_a_global_load():
    loop = aot.steady_state_loop(aot.parse_sass(LOOPS))
    assert [i.address for i in loop] == [0x60, 0x70, 0x80, 0x90]


def test_a_kernel_without_a_loop_over_loads_has_no_steady_state_loop():
    straight = _listing("0000 LDG.E R2, desc[UR4][R8.64]", "0010 STG.E desc[UR4][R6.64], R2", "0020 EXIT", "0030 BRA 0x30")
    assert aot.steady_state_loop(aot.parse_sass(straight)) == []


PTX = textwrap.dedent(
    """
    $L__BB0_1:
    \tld.global.b32 %r1, [%rd1];
    \t@%p1 bra $L__BB0_4;
    $L__BB0_2:
    \t@%p2 ld.global.v4.b32 { %r2, %r3, %r4, %r5 }, [ %rd2 + 0 ];
    \t@%p3 ld.global.v4.b32 { %r6, %r7, %r8, %r9 }, [ %rd3 + 0 ];
    \tadd.s32 %r10, %r10, 16;
    \t@%p4 bra $L__BB0_2;
    \t@%p5 bra $L__BB0_1;
    $L__BB0_4:
    \tret;
    """
)


def test_ptx_loop_loads_counts_the_innermost_loop_with_a_load():
    assert aot.ptx_loop_loads(PTX) == 2
    assert aot.ptx_loop_loads("\tld.global.b32 %r1, [%rd1];\n\tret;") == 0


def test_unroll_factor_is_the_ratio_of_sass_to_ptx_loads_in_the_loop():
    once = aot.parse_sass(_listing("0000 LDG.E.128 R4, desc[UR4][R2.64]", "0010 LDG.E.128 R8, desc[UR4][R6.64]", "0020 BRA 0x0"))
    loads = (f"{i:04x} LDG.E.128 R4, desc[UR4][R2.64+0x{i:x}]" for i in range(0, 0x80, 0x10))
    unrolled = aot.parse_sass(_listing(*loads, "0080 BRA 0x0"))
    assert aot.unroll_factor(once, PTX) == 1
    assert aot.unroll_factor(unrolled, PTX) == 4
    assert aot.unroll_factor(once[:1] + once[2:], PTX) == 1  # fewer loads than the PTX's: taken as not unrolled


@pytest.mark.parametrize(
    "arch, registers, shared, warps, ctas",
    [
        (90, 168, 0, 4, 3),  # 168 * 32 = 5376 registers a warp: 3 warps a partition, 12 an SM
        (90, 64, 0, 4, 8),  # registers: 65536 / (64 * 128)
        (90, 32, 0, 4, 16),  # threads: 2048 / 128
        (90, 16, 0, 1, 32),  # the CTA limit
        (90, 32, 48 * 1024, 4, 4),  # shared memory: 228 KiB / (48 KiB + the 1 KiB reserved)
        (80, 32, 48 * 1024, 4, 3),  # 164 KiB on sm_80
        (90, 255, 0, 8, 1),
    ],
)
def test_ctas_per_sm(arch, registers, shared, warps, ctas):
    assert aot.ctas_per_sm(arch, registers, shared, warps) == ctas


def _row(**fields) -> aot.KernelReport:
    base = dict(
        module="gaussian", kernel="_k", arch=90, pointers="fp32", config="", constexprs={"HAS_KL": True},
        registers=32, shared_bytes=0, ctas_per_sm=16, mma="FFMA", bar_sync=0, loop_bar_sync=0,
        loop_instructions=100, unroll=1, per_element=12.5, loads=4, wide_loads=4, stores=2, wide_stores=2,
    )  # fmt: skip
    return aot.KernelReport(**{**base, **fields})


def test_bounds_match_kernel_arch_dtypes_and_variant():
    bound = aot.Bound("gaussian", "_k", "per_element", 20, dtypes=("fp32", "bf16"), variant=(("HAS_KL", True),))
    assert bound.matches(_row())
    assert not bound.matches(_row(arch=80))
    assert not bound.matches(_row(pointers="fp64"))
    assert not bound.matches(_row(constexprs={"HAS_KL": False}))
    assert not bound.matches(_row(kernel="_other"))


def test_check_bounds_reports_the_worst_row_and_fails_what_it_should():
    rows = [_row(per_element=10.0), _row(per_element=30.0, config="wide"), _row(loads=4, wide_loads=3)]
    verdicts = dict(
        (bound.describe(), verdict)
        for bound, verdict in aot.check_bounds(
            rows,
            [
                aot.Bound("gaussian", "_k", "per_element", 45),
                aot.Bound("gaussian", "_k", "per_element", 12),
                aot.Bound("gaussian", "_k", "narrow_accesses", 0),
                aot.Bound("gaussian", "_k", "wide_loads", 3, at_least=True),
                aot.Bound("gaussian", "_missing", "per_element", 45),
            ],
        )
    )
    assert verdicts["gaussian._k per_element <= 45"].startswith("PASS: worst 30.0")
    missed = verdicts["gaussian._k per_element <= 12"]
    assert missed.startswith("FAIL: 30.0") and "wide" in missed  # the worst row, named by its config
    assert verdicts["gaussian._k narrow_accesses <= 0"].startswith("FAIL: 1.0")
    assert verdicts["gaussian._k wide_loads >= 3"].startswith("PASS: worst 3.0")
    assert verdicts["gaussian._missing per_element <= 45"] == "FAIL: no configuration matches"


def test_a_kernel_without_a_loop_fails_a_per_element_bound():
    verdicts = aot.check_bounds([_row(per_element=None)], [aot.Bound("gaussian", "_k", "per_element", 45)])
    assert verdicts[0][1].startswith("FAIL: inf")


_COMPILE_ONE = textwrap.dedent(
    """
    import json
    from fastvae.kernels import aot, gaussian
    config = next(
        c for c in gaussian.AOT_CONFIGS
        if aot._kernel_name(c) == "_gaussian_log_prob_fwd_kernel" and c.signature["x_ptr"] == "*fp32"
        and c.constexprs["BLOCK_D"] == 256 and c.constexprs["HAS_MU"] and c.constexprs["HAS_LOGVAR"]
    )
    row = aot.report_config("gaussian", config, 90)
    print(json.dumps({**row._asdict(), "constexprs": None, "elements": config.elements}))
    """
)


def test_the_report_reads_a_real_kernel_compiled_for_sm_90():
    # triton.compile for a GPU target needs the JIT, not the interpreter the test session runs.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", _COMPILE_ONE], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout.strip().splitlines()[-1])
    # log_prob's row sum: one loop over D tiles of 4 x 256, 8 elements a thread; x, mu and logvar as
    # 16-byte loads, no store in the loop, no barrier (the sum crosses threads after it).
    assert row["loop_instructions"] > 0 and row["unroll"] >= 1
    assert row["per_element"] == pytest.approx(row["loop_instructions"] * 128 / (row["unroll"] * row["elements"]))
    assert row["loads"] == row["wide_loads"] == 6 and row["stores"] == 0
    assert row["loop_bar_sync"] == 0 and row["bar_sync"] > 0
    assert row["mma"] == "FFMA" and 0 < row["ctas_per_sm"] <= 32


# --- the CUDA build's report (csrc/check_resources.py --report) ------------------------------------


def _check_resources():
    """csrc/check_resources.py as a module (a script of the checkout, not of the package)."""
    path = Path(__file__).resolve().parent.parent / "csrc" / "check_resources.py"
    spec = importlib.util.spec_from_file_location("check_resources", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, chunk",
    [
        ("reparameterize_fwd_kernel<float, true, false, true>", 4),  # one 16-byte vector
        ("reparameterize_bwd_kernel<__nv_bfloat16, true, true>", 8),
        ("gaussian_kl_fwd_kernel<double, true, false>", 4),  # two vectors: at least a Philox group
        ("gaussian_log_prob_fwd_kernel<__half, false, true, true>", 4),  # scalars off the vector path
        ("iwae_log_weights_fwd_kernel<double, true>", 2),  # iwae.cu's chunk is one vector
        ("iwae_log_weights_bwd_kernel<__half, false>", 4),
        ("vq_nearest_kernel<float, 64>", None),  # not an element-wise or row kernel
        ("_ZN7fastvae25reparameterize_fwd_kernelIfLb1EEEvv", None),  # not demangled: no template arguments
    ],
)
def test_cuda_chunks_come_from_the_template_arguments(name, chunk):
    assert _check_resources().chunk(name) == chunk


def test_cuda_launch_bounds_come_from_each_kernels_nv_info_section():
    listing = textwrap.dedent(
        """
        .nv.info._Z3fooPf
        \t<0x1>
        \tAttribute:\tEIATTR_MAX_THREADS
        \tFormat:\tEIFMT_SVAL
        \tValue:\t0x100 0x1 0x1
        .nv.info._Z3barPf
        \t<0x1>
        \tAttribute:\tEIATTR_EXIT_INSTR_OFFSETS
        \tFormat:\tEIFMT_SVAL
        \tValue:\t0x200 0x7c0
        .nv.info._Z3bazPf
        \tAttribute:\tEIATTR_MAX_THREADS
        \tFormat:\tEIFMT_SVAL
        \tValue:\t0x80 0x1 0x1
        """
    )
    assert _check_resources().launch_bounds(listing) == {"_Z3fooPf": 256, "_Z3bazPf": 128}
