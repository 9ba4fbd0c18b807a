# One comparison report for every method, norm and σ in params.yaml.


rule report:
    input:
        tables=[final_table(model, method) for model, method in EXPERIMENTS],
        pre=[f"{RESULTS}/{model}/{method}/certify.tsv" for model, method in EXPERIMENTS],
        metrics=[f"{MODELS}/{m.id}/metrics.tsv" for m in sc_config.model_specs(config)],
        video=VIDEO_TABLES,
    output:
        summary=report(f"{REPORT}/summary.csv", caption="../report/summary.rst", category="Tables"),
        markdown=f"{REPORT}/summary.md",
        metrics=f"{REPORT}/metrics.json",
        curves=f"{REPORT}/curves.csv",
        plot=report(f"{REPORT}/certified_accuracy.png", caption="../report/certified_accuracy.rst", category="Plots"),
    params:
        report=config["report"],
        video=lambda w, input: f"--video {RESULTS}/video" if input.video else "",
    log:
        "logs/report.log",
    shell:
        "{SMK} report --results {RESULTS} --models {MODELS} --data {DATA} {params.video} --out {REPORT} > {log} 2>&1"
