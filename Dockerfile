# The cameo image: training (torchrun), the Dagster code location and its step pods, the MLflow
# tracking server, the scoring server and the weights Job all run it. No weights inside: they
# live on the models claim ($CAMEO_MODELS=/models, filled by k8s/weights). Build and push it as
# docs/deploying.md says ("Deploying to a GPU cluster"); k8s/components/image names the tag.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    DAGSTER_DISABLE_TELEMETRY=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DVC_NO_ANALYTICS=1 \
    GX_ANALYTICS_ENABLED=false \
    DO_NOT_TRACK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Python 3.11 (the project's version) from deadsnakes: Ubuntu 22.04 ships 3.10. The CUDA base
# image fixes the distribution; its packages follow the distribution's security updates.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv libgomp1 \
    && apt-get purge -y software-properties-common gpg-agent \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv

WORKDIR /app

# torch's CUDA wheel pins its CUDA libraries (nvidia-*, triton) exactly: pip resolves those with
# it; then the complete GPU lock is installed without resolving anything.
COPY requirements-gpu.lock ./
RUN pip install torch==2.13.0+cu128 --index-url https://download.pytorch.org/whl/cu128 \
    && pip install --no-deps -r requirements-gpu.lock

# The project, editable: k8s/, params.yaml, dvc.lock and models.lock.yaml stay next to the code
# that reads them.
COPY . .
RUN pip install --no-deps --no-build-isolation -e . \
    && useradd --uid 1000 --user-group --no-create-home --home-dir /tmp cameo

# uid 1000 is what the manifests' securityContext runs as; the root filesystem is read-only
# there: HOME, the caches and a command's local Dagster instance live on /tmp (the Helm chart
# sets its own DAGSTER_HOME).
USER 1000:1000
ENV HOME=/tmp \
    DAGSTER_HOME=/tmp/dagster \
    MPLCONFIGDIR=/tmp/matplotlib \
    CAMEO_DATA=/data \
    CAMEO_MODELS=/models
CMD ["cameo", "--help"]
