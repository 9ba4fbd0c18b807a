# One comparison report for every method, norm and σ in params.yaml.


rule report:
    input:
        tables=[final_table(model, method) for model, method in EXPERIMENTS],
        pre=[f"{RESULTS}/{model}/{method}/certify.tsv" for model, method in EXPERIMENTS],
        metrics=[f"{MODELS}/{m.id}/metrics.tsv" for m in sc_config.trained_specs(config)],
        video=VIDEO_TABLES,
    output:
        summary=report(f"{REPORT}/summary.csv", caption="../report/summary.rst", category="Tables"),
        markdown=f"{REPORT}/summary.md",
        page=f"{REPORT}/page.md",
        front=f"{REPORT}/front.rst",  # included by workflow/report/workflow.rst, report.html's front page
        memory=report(f"{REPORT}/memory.csv", caption="../report/memory.rst", category="Tables"),
        training=report(f"{REPORT}/training.csv", caption="../report/training.rst", category="Tables"),
        objectives=report(f"{REPORT}/objectives.csv", caption="../report/objectives.rst", category="Tables"),
        claims=report(f"{REPORT}/claims.csv", caption="../report/claims.rst", category="Tables"),
        metrics=f"{METRICS}/metrics.json",
        headlines=directory(f"{REPORT}/metrics"),
        curves=f"{METRICS}/curves.csv",
        curves_plots=[report(f"{REPORT}/{name}", caption="../report/certified_accuracy.rst", category="Plots")
                      for name in curve_figures(NORMS)],
        proxy=report(f"{REPORT}/certified_accuracy_proxy.png", caption="../report/certified_accuracy_proxy.rst",
                     category="Plots"),
        volume=report(f"{REPORT}/log_volume.png", caption="../report/log_volume.rst", category="Plots"),
        memory_plot=report(f"{REPORT}/memory_effect.png", caption="../report/memory_effect.rst", category="Plots"),
        theta=[report(f"{REPORT}/{name}", caption="../report/theta.rst", category="Plots") for name in theta_figures()],
        training_plot=report(f"{REPORT}/training.png", caption="../report/training_plot.rst", category="Plots"),
        draws=report(f"{REPORT}/draws.png", caption="../report/draws.rst", category="Plots"),
    params:
        data=lambda w: DATA,
        models=lambda w: MODELS,
        results=lambda w: RESULTS,
        report=lambda w: REPORT,
        metrics=lambda w: METRICS,
        triggers=trigger_params(config, "report"),
        video=lambda w, input: f"--video {RESULTS}/video" if input.video else "",
    conda:
        ENV
    log:
        "logs/report.log",
    shell:
        "smoothcert report --results {params.results} --models {params.models} --data {params.data} {params.video} --out {params.report} --metrics {params.metrics} > {log} 2>&1"
