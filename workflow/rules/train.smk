# Noise-augmented training of each base model; resumes from checkpoint.pt after a crash.


rule train:
    input:
        rules.prepare_data.output,
    output:
        model=f"{MODELS}/{{model}}/model.pt",
        metrics=f"{MODELS}/{{model}}/metrics.tsv",
    params:
        train=config["train"],
        arch=config["model"]["arch"],
        extra=lambda w: {k: config.get(k) for k in ("macer", "smoothadv", "data_dependent", "ddrs")},
    log:
        f"logs/train/{DATASET}/{{model}}.log",
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    shell:
        "{SMK} train --model {wildcards.model} --data {DATA} --out {MODELS}/{wildcards.model} "
        "--threads {threads} --no-progress > {log} 2>&1"


rule train_all:
    input:
        expand(f"{MODELS}/{{model}}/model.pt", model=[m.id for m in sc_config.model_specs(config)]),
