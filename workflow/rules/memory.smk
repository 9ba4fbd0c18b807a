# Memory-based certification: the sequential reduce that makes data-dependent σ sound.


rule memory_check:
    input:
        table=f"{RESULTS}/{{model}}/{{method}}/certify.tsv",
        theta=expand(f"{RESULTS}/{{{{model}}}}/{{{{method}}}}/theta/{{shard}}.pt", shard=SHARDS),
        data=rules.prepare_data.output,
    output:
        table=f"{RESULTS}/{{model}}/{{method}}/final.tsv",
        memory=f"{RESULTS}/{{model}}/{{method}}/memory.npz",
    log:
        f"logs/memory/{DATASET}/{{model}}/{{method}}.log",
    threads: 1
    shell:
        "{SMK} memory-check --certified {input.table} --theta {input.theta} --data {DATA} "
        "--out-table {output.table} --out-memory {output.memory} > {log} 2>&1"
