# Stand-in for python:3.11-slim: Debian's Python 3.11 with pip and venv, `python` and `pip` on PATH, and pip
# allowed to install into the system like in the official image.
FROM vdc-standin/debian:bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip ca-certificates \
    && rm -rf /var/lib/apt/lists/* /usr/lib/python3.11/EXTERNALLY-MANAGED \
    && ln -s /usr/bin/python3 /usr/local/bin/python && ln -s /usr/bin/pip3 /usr/local/bin/pip
ENV LANG=C.UTF-8
CMD ["python3"]
