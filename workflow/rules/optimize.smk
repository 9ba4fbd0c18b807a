# Per-input smoothing parameters, one job per (model, method, shard) for every method with per-input σ / θ
# (the registry's per_input_sigma); a method with init_from starts from that method's θ of the same shard.

SEARCHED = [m.name for m in METHODS.values() if m.per_input_sigma]


rule optimize:
    input:
        model=model_file,
        data=rules.prepare_data.output,
        init=init_input,
    output:
        f"{RESULTS}/{{model}}/{{method}}/theta/{{shard}}.pt",
    wildcard_constraints:
        method="|".join(SEARCHED),
    params:
        data=lambda w, input: parent(input.data[0]),
        triggers=lambda w: trigger_params(config, "optimize", method=w.method, model=w.model),
        init=lambda w, input: f"--init {input.init}" if input.init else "",
    conda:
        ENV
    log:
        f"logs/optimize/{DATASET}/{{model}}/{{method}}/{{shard}}.log",
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    shell:
        "smoothcert optimize-sigma --model {wildcards.model} --method {wildcards.method} --checkpoint {input.model} "
        "--data {params.data} --shard {wildcards.shard} {params.init} --out {output} --threads {threads} --no-progress "
        "> {log} 2>&1"
