# One image for the API and the workers; docker-compose.yml chooses the command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    VDC_DATA_DIR=/data

WORKDIR /app

# torch first and by exact pin. The default is PyTorch's CPU wheel index (an unpinned torch would pull gigabytes
# of CUDA packages); the GPU worker image is built with TORCH_INDEX="" and gets the default, CUDA-enabled build.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN if [ -n "$TORCH_INDEX" ]; then pip install torch==2.13.0 --index-url "$TORCH_INDEX"; \
    else pip install torch==2.13.0; fi

# g++ builds vdcore's CPU kernel (vdcore/cpu_kernel.py); without it CPU training falls back to slower torch ops.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md ./
COPY vdcore ./vdcore
COPY worker ./worker
COPY service ./service
RUN pip install '.[service]'

# Never run as root: the service holds users' models and data.
RUN useradd --create-home --uid 10001 vdc && mkdir -p /data && chown vdc:vdc /data
USER vdc
# Build the CPU kernel into the image (the user's torch extensions cache), so that the first job does not wait.
RUN python -c "import vdcore.cpu_kernel as k, sys; sys.exit(k.load() is None)"
VOLUME ["/data"]
EXPOSE 8000

CMD ["uvicorn", "service.api.asgi:app", "--host", "0.0.0.0", "--port", "8000"]
