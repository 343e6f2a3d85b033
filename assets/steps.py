"""Step settings shared by assets."""

# Read by k8s_job_executor only (ignored in process): steps that run a network on a GPU node.
GPU_STEP_TAGS = {
    "dagster-k8s/config": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": 1}}}}
}
