"""Check or write dvc.yaml from the stage map (smoothcert.pipeline.stages); print the map."""

from smoothcert.pipeline import stages

HELP = "check (default) or write dvc.yaml from the stage map of what each stage reads; or print the map"


def add_arguments(p):
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--check", action="store_true", help="fail unless dvc.yaml is what the stage map generates (default)"
    )
    mode.add_argument("--write", action="store_true", help="write dvc.yaml from the stage map")
    mode.add_argument("--table", action="store_true", help="print the stage map as a markdown table")


def run(args):
    if args.write:
        print(f"stages: wrote {stages.write_dvc_yaml()}")
    elif args.table:
        print(stages.table())
    else:
        stages.check_dvc_yaml()
        print(f"stages: {stages.DVC_YAML} matches the stage map")
