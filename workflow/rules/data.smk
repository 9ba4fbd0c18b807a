# The "download" stage: fetch (where allowed) and prepare the configured dataset.


rule prepare_data:
    output:
        train=f"{DATA}/train.pt",
        test=f"{DATA}/test.pt",
    params:
        data=config["data"],
    log:
        f"logs/prepare_data/{DATASET}.log",
    threads: 1
    shell:
        "{SMK} prepare-data --out {DATA} > {log} 2>&1"


rule data_all:
    input:
        rules.prepare_data.output,
