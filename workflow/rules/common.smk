# Names and helpers shared by the rules: paths, the experiment grid, and the method registry's flags.
from smoothcert.pipeline.stages import trigger_params  # rerun triggers: what each job reads (the stage map)
from pathlib import Path

from smoothcert.reporting import curve_figures, theta_figures

ENV = "../envs/smoothcert.yaml"  # each rule's software (with --sdm conda; otherwise the active environment)


NORMS = list(dict.fromkeys(m.norm for m in sc_config.model_specs(config)))  # each norm gets its own figures


def parent(path):
    """The folder of ``path``: the argument a command takes for a folder of files the rule declares."""
    return str(Path(path).parent)


def final_table(model, method):
    """The table a method's experiment ends with: after the memory step if the method has one."""
    name = "final.tsv" if METHODS[method].memory else "certify.tsv"
    return f"{RESULTS}/{model}/{method}/{name}"


def theta_input(w):
    """The θ shard a per-input-σ method certifies with (none for the others)."""
    if METHODS[w.method].per_input_sigma:
        return f"{RESULTS}/{w.model}/{w.method}/theta/{w.shard}.pt"
    return []


def init_input(w):
    """The θ shard a search starts from, for a method that starts from another's θ."""
    start = METHODS[w.method].init_from
    return f"{RESULTS}/{w.model}/{start}/theta/{w.shard}.pt" if start else []


SPECS = {spec.id: spec for spec in sc_config.model_specs(config)}


def model_file(w):
    """The base model a job reads: the train job's model.pt, or a checkpoint entry's own file (no train job)."""
    spec = SPECS.get(w.model)
    return spec.checkpoint if spec is not None and spec.pretrained else f"{MODELS}/{w.model}/model.pt"
