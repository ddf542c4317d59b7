# One image for every role of a proxstudy cluster: the Ray head, the GPU Ray workers, the sweep
# driver (`proxstudy run`) and the dashboard. One image keeps Python, Ray and torch identical on
# every node, which Ray requires of the machines of one cluster.
#
# Base: python:3.11-slim-bookworm, torch from PyPI. PyPI's Linux x86_64 torch wheel is the CUDA
# build: it brings the CUDA runtime, cuDNN and NCCL as nvidia-* wheels, so the host needs only
# the NVIDIA driver and the NVIDIA container toolkit (no CUDA base image, no CUDA on the host).
# TORCH_PIP_ARGS passes extra pip arguments for torch, e.g. a different wheel index for another
# CUDA version or a CPU-only image (see docs/CLUSTER.md).
#
# Build:  docker build -t proxstudy:latest .        (or `docker compose build`)
# No secret is baked in: the storage URL and its password come from the environment at run
# time (PROXSTUDY_STORAGE, assembled by docker-compose.yml from POSTGRES_PASSWORD).
FROM python:3.11-slim-bookworm

ARG TORCH_VERSION=2.13.0
ARG TORCH_PIP_ARGS=""
# Ray pinned too: every node and every driver of a cluster must run the same Ray version.
ARG RAY_VERSION=2.60.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first and pinned, in its own layer: it is by far the largest download and changes least.
RUN pip install "torch==${TORCH_VERSION}" ${TORCH_PIP_ARGS}

# Then the project and the rest of its dependencies (optuna, psycopg, dash, ...); pip keeps the
# torch installed above because it satisfies pyproject's range. Ray gets its `default` extra
# as well as `tune`: the head's dashboard (port 8265) and the per-node agents need it.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxprop ./proxprop
COPY workers ./workers
COPY study ./study
COPY dashboards ./dashboards
COPY proxstudy ./proxstudy
RUN pip install . "ray[default,tune]==${RAY_VERSION}" \
    && python -c "import torch, ray, optuna, psycopg, proxprop, proxstudy.workers, proxstudy.study; print('torch', torch.__version__, 'ray', ray.__version__)"

# Search spaces travel with the image so `proxstudy run search_spaces/...` works in any container.
COPY search_spaces ./search_spaces

# Run as an unprivileged user. /app/data is where file-backed data sets (cifar10, usps) live;
# mount a volume there to share downloaded data between runs.
# The user may create files in /app (e.g. `proxstudy report --out report.html`) but not change
# the installed code.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin proxstudy \
    && mkdir -p /app/data \
    && chown proxstudy:proxstudy /app /app/data
USER proxstudy

# Ray (6379 GCS, 8265 its dashboard) and the proxstudy dashboard (8050).
EXPOSE 6379 8265 8050

CMD ["proxstudy", "--help"]
