# Noise-augmented training of each base model; resumes from checkpoint.pt after a crash.
# update(): a failed job (e.g. on a damaged test.pt) restores the model it replaced, never deletes it.


rule train:
    input:
        data=rules.prepare_data.output,
    output:
        model=update(f"{MODELS}/{{model}}/model.pt"),
        metrics=update(f"{MODELS}/{{model}}/metrics.tsv"),
    params:
        data=lambda w, input: parent(input.data[0]),
        out=lambda w, output: parent(output.model),
        triggers=lambda w: trigger_params(config, "train", model=w.model),
    conda:
        ENV
    log:
        f"logs/train/{DATASET}/{{model}}.log",
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    shell:
        "smoothcert train --model {wildcards.model} --data {params.data} --out {params.out} "
        "--threads {threads} --no-progress > {log} 2>&1"


rule train_all:
    input:
        expand(f"{MODELS}/{{model}}/model.pt", model=[m.id for m in sc_config.trained_specs(config)]),
