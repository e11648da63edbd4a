"""What runs the pipeline for real: offline settings, the local stack, cluster configs."""
