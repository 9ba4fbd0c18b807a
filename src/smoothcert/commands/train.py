"""The training stage."""

import smoothcert.pipeline.stages as stages  # the stamp only: not the training code (stages.NOT_CODE)
from smoothcert import config as config_mod
from smoothcert.artifacts import check_writable
from smoothcert.commands._common import add_config, add_progress, add_threads, setup
from smoothcert.training.loop import train

HELP = "train one noise-augmented base model (resumes from OUT/checkpoint.pt)"


def add_arguments(p):
    add_config(p)
    add_threads(p)
    add_progress(p)
    p.add_argument("--model", required=True, help="model id from the config, e.g. gaussian-fixed-l2-0.25")
    p.add_argument("--data", required=True, help="prepared data folder")
    p.add_argument("--out", required=True, help="model folder: checkpoint.pt, model.pt, metrics.tsv")


def run(args):
    cfg, device = setup(args)
    spec = config_mod.model_spec(cfg, args.model)
    check_writable(args.out, folder=True)
    code = stages.code_fingerprint("train", cfg)  # a checkpoint of other code is not resumed
    train(cfg, spec, args.data, args.out, device, progress=not args.no_progress, code=code)
