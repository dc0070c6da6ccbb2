"""Jobs: whole runs assembled from the layers below, each taking its typed config
(`distill.run_distill(RunConfig)`, `smoke.model_smoke(SmokeConfig)`)."""
