# Per-input smoothing parameters, one job per shard: DDRS σ, then ANCER θ from it.


rule optimize_ddrs:
    input:
        model=f"{MODELS}/{{model}}/model.pt",
        data=rules.prepare_data.output,
    output:
        f"{RESULTS}/{{model}}/ddrs/theta/{{shard}}.pt",
    params:
        ddrs=config.get("ddrs"),
        channels_last=config["channels_last"],  # a rerun trigger: the model's layout
        test=config["test"],
    log:
        f"logs/optimize/{DATASET}/{{model}}/ddrs/{{shard}}.log",
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    shell:
        "{SMK} optimize-sigma --model {wildcards.model} --method ddrs --checkpoint {input.model} --data {DATA} "
        "--shard {wildcards.shard} --out {output} --threads {threads} --no-progress > {log} 2>&1"


rule optimize_ancer:
    input:
        model=f"{MODELS}/{{model}}/model.pt",
        data=rules.prepare_data.output,
        init=f"{RESULTS}/{{model}}/ddrs/theta/{{shard}}.pt",
    output:
        f"{RESULTS}/{{model}}/ancer/theta/{{shard}}.pt",
    params:
        ancer=config.get("ancer"),
        channels_last=config["channels_last"],  # a rerun trigger: the model's layout
        test=config["test"],
    log:
        f"logs/optimize/{DATASET}/{{model}}/ancer/{{shard}}.log",
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    shell:
        "{SMK} optimize-sigma --model {wildcards.model} --method ancer --checkpoint {input.model} --data {DATA} "
        "--shard {wildcards.shard} --init {input.init} --out {output} --threads {threads} --no-progress > {log} 2>&1"
