"""The moving-digits video stage (Smooth-Reduce on clips)."""

import json
import math

from smoothcert.artifacts import check_writable
from smoothcert.commands._common import add_config, add_progress, add_threads, setup
from smoothcert.errors import require
from smoothcert.pipeline.clips import run_video

HELP = (
    "moving-digits clips: train a frame-wise model at one σ, certify every video.methods into OUT/<method>/certify.tsv"
)


def add_arguments(p):
    add_config(p)
    add_threads(p)
    add_progress(p)
    p.add_argument("--sigma", type=float, required=True, help="Gaussian noise level for training and certification")
    p.add_argument("--out", required=True, help="output folder, e.g. results/digits/video/sigma-0.25")


def run(args):
    cfg, device = setup(args)
    require(math.isfinite(args.sigma) and args.sigma > 0, f"video: sigma = {args.sigma} must be > 0 and finite")
    check_writable(args.out, folder=True)
    print(json.dumps(run_video(cfg, args.sigma, args.out, device, progress=not args.no_progress)))
