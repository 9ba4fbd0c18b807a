# Certification, one job per (model, method, shard); rows are appended as they finish,
# so a killed job resumes where it stopped. A gather step merges shards in index order.


def theta_input(w):
    if METHODS[w.method].per_input_sigma:
        return f"{RESULTS}/{w.model}/{w.method}/theta/{w.shard}.pt"
    return []


rule certify:
    input:
        model=f"{MODELS}/{{model}}/model.pt",
        data=rules.prepare_data.output,
        theta=theta_input,
    output:
        f"{RESULTS}/{{model}}/{{method}}/shards/{{shard}}.tsv",
    params:
        certify=config["certify"],
        channels_last=config["channels_last"],  # a rerun trigger: the model's layout
        test=config["test"],
        smooth_reduce=lambda w: config.get("smooth_reduce") if w.method.startswith("smooth_reduce") else None,
        theta=lambda w, input: f"--theta {input.theta}" if input.theta else "",
    log:
        f"logs/certify/{DATASET}/{{model}}/{{method}}/{{shard}}.log",
    threads: 1
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    shell:
        "{SMK} certify --model {wildcards.model} --method {wildcards.method} --checkpoint {input.model} "
        "--data {DATA} --shard {wildcards.shard} {params.theta} --out {output} --threads {threads} "
        "--no-progress > {log} 2>&1"


rule gather:
    input:
        expand(f"{RESULTS}/{{{{model}}}}/{{{{method}}}}/shards/{{shard}}.tsv", shard=SHARDS),
    output:
        f"{RESULTS}/{{model}}/{{method}}/certify.tsv",
    log:
        f"logs/gather/{DATASET}/{{model}}/{{method}}.log",
    shell:
        "{SMK} gather {input} --out {output} > {log} 2>&1"


rule certify_all:
    input:
        [final_table(model, method) for model, method in EXPERIMENTS],
