"""The streaming pipeline: sources, ingest actors, batching, inference scheduling, publishing.

    from pipeline.config import load_pipeline_config
    from pipeline.runner import run
    summary = run(load_pipeline_config("my.yaml", ["sources.max_frames=100"]))
    print(summary.table())

Modules, in the order frames flow: config, sources, ingest, batching (the rule) and scheduler
(the loop onto the workers), publisher (protocol: the frame record and the wire messages, images:
their optional JPEG part; sinks, overlay, keys), consumer, view (the live view in a browser);
metrics and runner around them; cli (`maskstream`), run, consume, view and keys are the command
lines.
"""
