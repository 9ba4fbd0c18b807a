# The "download" stage: fetch (where allowed) and prepare the configured dataset.


rule prepare_data:
    output:
        train=f"{DATA}/train.pt",
        test=f"{DATA}/test.pt",
    params:
        data=lambda w, output: parent(output.train),
        triggers=trigger_params(config, "prepare_data"),
    conda:
        ENV
    log:
        f"logs/prepare_data/{DATASET}.log",
    threads: 1
    shell:
        "smoothcert prepare-data --out {params.data} > {log} 2>&1"


rule data_all:
    input:
        rules.prepare_data.output,
