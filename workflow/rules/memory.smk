# Memory-based certification: the sequential reduce that makes data-dependent σ sound.


rule memory_check:
    input:
        table=f"{RESULTS}/{{model}}/{{method}}/certify.tsv",
        theta=expand(f"{RESULTS}/{{{{model}}}}/{{{{method}}}}/theta/{{shard}}.pt", shard=SHARDS),
        data=rules.prepare_data.output,
    output:
        table=f"{RESULTS}/{{model}}/{{method}}/final.tsv",
        memory=f"{RESULTS}/{{model}}/{{method}}/memory.npz",
    params:
        data=lambda w, input: parent(input.data[0]),
        triggers=lambda w: trigger_params(config, "memory_check", method=w.method),
    conda:
        ENV
    log:
        f"logs/memory/{DATASET}/{{model}}/{{method}}.log",
    threads: 1
    shell:
        "smoothcert memory-check --certified {input.table} --theta {input.theta} --data {params.data} "
        "--out-table {output.table} --out-memory {output.memory} > {log} 2>&1"
