# One image for the API and the workers; docker-compose.yml chooses the command.
# The build stage installs the dependencies into a virtual environment and makes the project's wheel; the image
# that runs copies only those, so files handed to the build (build-local/: a torch wheel, a CA bundle) never
# reach it.
FROM python:3.11-slim AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/vdc
COPY build-local/ /build-local/
# A CA bundle in build-local/ is what pip trusts here (a machine whose traffic to the package index passes a proxy
# with its own authority); the image that runs never has this configuration.
RUN if [ -f /build-local/ca-certificates.crt ]; then \
        printf '[global]\ncert = /build-local/ca-certificates.crt\n' > /etc/pip.conf; fi

# torch first and by exact pin. The default is PyTorch's CPU wheel index (an unpinned torch would pull gigabytes
# of CUDA packages); the GPU worker image is built with TORCH_INDEX="" and gets the default, CUDA-enabled build.
# A CPU wheel of torch 2.13.0 in build-local/ is installed instead of the CPU index's.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
RUN if [ -n "$TORCH_INDEX" ] && ls /build-local/torch-2.13.0+cpu-*.whl > /dev/null 2>&1; then \
        /opt/vdc/bin/pip install /build-local/torch-2.13.0+cpu-*.whl; \
    elif [ -n "$TORCH_INDEX" ]; then /opt/vdc/bin/pip install torch==2.13.0 --index-url "$TORCH_INDEX"; \
    else /opt/vdc/bin/pip install torch==2.13.0; fi

# The project's dependencies, read from pyproject.toml, before its code: a change to the code rebuilds from here
# in seconds instead of installing every dependency again.
COPY pyproject.toml scripts/requirements_of.py /src/
RUN /opt/vdc/bin/python /src/requirements_of.py /src/pyproject.toml service > /tmp/requirements.txt \
    && /opt/vdc/bin/pip install -r /tmp/requirements.txt
# The project itself as a wheel, installed by the image that runs: a change to the code leaves the layer of
# dependencies (1.5 GB) as it was, in the build cache and in every registry and host that has pulled it.
COPY README.md /src/
COPY vdcore /src/vdcore
COPY recipe /src/recipe
COPY worker /src/worker
COPY service /src/service
RUN /opt/vdc/bin/pip wheel --no-deps --wheel-dir /wheels /src


FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/vdc/bin:$PATH \
    VDC_DATA_DIR=/data

# g++ builds vdcore's CPU kernel (vdcore/cpu_kernel.py); without it CPU training falls back to slower torch ops.
RUN apt-get update && apt-get install -y --no-install-recommends g++ && rm -rf /var/lib/apt/lists/*
# Never run as root: the service holds users' models and data.
RUN useradd --create-home --uid 10001 vdc && mkdir -p /data && chown vdc:vdc /data
COPY --from=build /opt/vdc /opt/vdc
COPY --from=build /wheels /wheels
RUN pip install --no-deps --no-index /wheels/*.whl && rm -rf /wheels
USER vdc
WORKDIR /home/vdc
# Build the CPU kernel into the image (the user's torch extensions cache), so that the first job does not wait.
RUN python -c "import vdcore.cpu_kernel as k, sys; sys.exit(k.load() is None)"
VOLUME ["/data"]
EXPOSE 8000

CMD ["uvicorn", "service.api.asgi:app", "--host", "0.0.0.0", "--port", "8000"]
