"""The README's main job learns: it runs the ``fastvae train`` command of README's Set-up block (read
from the README, so the two cannot drift apart) into a temporary directory and checks that the model
reconstructs and samples sprites.

Measured on the 2-core AMD EPYC development machine (the run is seeded and CPU float32): the mean
``recon`` (``-log p(x|z)`` summed over the 4,096 pixels) of the last 50 steps is 78.54, and 36 of the 64
tiles of ``samples_400.png`` hold a pixel brighter than 0.5, with the Gaussian ops on the ``cpu``
backend (78.05 and 42 with the ``torch`` reference, whose rounding differs). The untrained model's
``recon`` is ``4096 log 2 = 2839`` (logits 0); the previous main job (200 steps) ended at 126.8 with 17
lit tiles. The bounds below leave room for other CPUs' rounding.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

README = Path(__file__).resolve().parents[1] / "README.md"
#: Bound on the last metrics record's ``recon`` (measured 78.54; untrained 2839).
RECON_BOUND = 110.0
#: Fewest of the 64 sample tiles that must show a sprite (measured 36; the old main job drew 17).
MIN_LIT_TILES = 25
#: Tile side and padding of the sample grid (``fastvae.train.images.make_grid`` defaults).
TILE, PAD = 64, 2


def main_job_arguments() -> list[str]:
    """The arguments after ``fastvae train`` on the first line of README's Set-up bash block."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Set-up.*?```bash\n(.*?)```", text, re.S)
    assert block is not None, "README has no Set-up bash block"
    first = block.group(1).splitlines()[0]
    command = first.split("&&")[-1].strip()
    words = shlex.split(command)
    assert words[:2] == [".venv/bin/fastvae", "train"], command
    return words[2:]


def lit_tiles(path: Path) -> int:
    """How many tiles of an 8 x 8 grid of 64 x 64 greyscale tiles have a pixel above 0.5."""
    pixels = torch.tensor(list(Image.open(path).convert("L").getdata()), dtype=torch.float32) / 255.0
    image = pixels.reshape(8 * (TILE + PAD) + PAD, 8 * (TILE + PAD) + PAD)
    count = 0
    for row in range(8):
        for col in range(8):
            top, left = PAD + row * (TILE + PAD), PAD + col * (TILE + PAD)
            count += int(image[top : top + TILE, left : left + TILE].max() > 0.5)
    return count


@pytest.mark.slow
def test_main_job_reconstructs_and_samples_sprites(tmp_path: Path) -> None:
    arguments = main_job_arguments()
    out = arguments.index("--out")
    arguments[out + 1] = str(tmp_path / "run")
    steps = int(arguments[arguments.index("--steps") + 1])
    subprocess.run([sys.executable, "-m", "fastvae", "train", *arguments, "--no-progress"], check=True)
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == steps
    assert records[-1]["recon"] < RECON_BOUND, records[-1]
    assert records[0]["recon"] > RECON_BOUND  # the bound is one the early model does not meet
    assert lit_tiles(run / f"samples_{steps}.png") >= MIN_LIT_TILES
    assert (run / f"recon_{steps}.png").is_file()
