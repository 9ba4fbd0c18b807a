# Certification, one job per (model, method, shard); rows are appended as they finish,
# so a killed job resumes where it stopped. A gather step merges shards in index order, refusing a shard
# that does not hold exactly its block of the configured test inputs.


rule certify:
    input:
        model=model_file,
        data=rules.prepare_data.output,
        theta=theta_input,
    output:
        f"{RESULTS}/{{model}}/{{method}}/shards/{{shard}}.tsv",
    params:
        data=lambda w, input: parent(input.data[0]),
        triggers=lambda w: trigger_params(config, "certify", method=w.method, model=w.model),
        theta=lambda w, input: f"--theta {input.theta}" if input.theta else "",
    conda:
        ENV
    log:
        f"logs/certify/{DATASET}/{{model}}/{{method}}/{{shard}}.log",
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    shell:
        "smoothcert certify --model {wildcards.model} --method {wildcards.method} --checkpoint {input.model} "
        "--data {params.data} --shard {wildcards.shard} {params.theta} --out {output} --threads {threads} "
        "--no-progress > {log} 2>&1"


rule gather:
    input:
        shards=expand(f"{RESULTS}/{{{{model}}}}/{{{{method}}}}/shards/{{shard}}.tsv", shard=SHARDS),
        data=rules.prepare_data.output,
    output:
        f"{RESULTS}/{{model}}/{{method}}/certify.tsv",
    params:
        data=lambda w, input: parent(input.data[0]),
        triggers=trigger_params(config, "gather"),
    conda:
        ENV
    log:
        f"logs/gather/{DATASET}/{{model}}/{{method}}.log",
    shell:
        "smoothcert gather {input.shards} --data {params.data} --out {output} > {log} 2>&1"


rule certify_all:
    input:
        [final_table(model, method) for model, method in EXPERIMENTS],
