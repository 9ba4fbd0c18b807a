# Smooth-Reduce on clips: the moving-digits video experiment (enabled in params.yaml: video.enabled).
VIDEO = config.get("video", {})
VIDEO_TABLES = (
    expand(f"{RESULTS}/video/sigma-{{sigma}}/{{method}}/certify.tsv", sigma=VIDEO.get("sigmas", []),
           method=VIDEO.get("methods", []))
    if VIDEO.get("enabled") else []
)


rule video:
    input:
        rules.prepare_data.output,
    output:
        [f"{RESULTS}/video/sigma-{{sigma}}/{m}/certify.tsv" for m in VIDEO.get("methods", [])],
        model=f"{RESULTS}/video/sigma-{{sigma}}/model.pt",
    params:
        out=lambda w, output: parent(output.model),
        triggers=trigger_params(config, "video"),
    conda:
        ENV
    log:
        f"logs/video/{DATASET}/sigma-{{sigma}}.log",
    threads: 2
    resources:
        gpu=1,
        mem_mb=4000,
        runtime=600,
    shell:
        "smoothcert video --sigma {wildcards.sigma} --out {params.out} "
        "--threads {threads} --no-progress > {log} 2>&1"
