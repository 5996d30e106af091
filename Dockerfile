# weitiao, one image: the control plane (Node 20), the web console and the Python engine (a venv with PyTorch).
# The same steps as `make setup`: npm ci, a venv from engine/requirements.txt, tsc, the console's vite build.
#
#   CPU (the API, CPU workers; PyTorch from the CPU index):
#     docker build -t weitiao:cpu .
#   GPU workers (a CUDA base image, whose settings let the NVIDIA container runtime mount the driver, and the
#   CUDA build of PyTorch, which carries its own CUDA libraries; pick the index that matches the hosts' driver):
#     docker build -t weitiao:gpu --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-base-ubuntu24.04 \
#       --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#
# The base image must have Python >= 3.11 in its apt repositories (engine/requirements.txt pins numpy 2.4):
# Debian bookworm and Ubuntu 24.04 do. The venv is built on the same base as the final image (a venv is tied to
# its interpreter's path), and so is node_modules (better-sqlite3 is a native module).

ARG BASE_IMAGE=debian:bookworm-slim
ARG NODE_IMAGE=node:20-bookworm-slim

# Node 20 itself, copied into the chosen base (the CUDA images have no Node).
FROM ${NODE_IMAGE} AS node

FROM ${BASE_IMAGE} AS base
ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    LC_ALL=C.UTF-8
# tini reaps the engine's orphaned children (torchrun ranks) and passes signals on; tcmalloc: ~1.5x CPU training
# speed (the engine preloads it when present; named libtcmalloc-minimal4t64 on Ubuntu 24.04).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates python3 python3-venv tini \
 && (apt-get install -y --no-install-recommends libtcmalloc-minimal4 \
     || apt-get install -y --no-install-recommends libtcmalloc-minimal4t64 \
     || echo "note: no tcmalloc package; the engine uses glibc's malloc") \
 && rm -rf /var/lib/apt/lists/*
COPY --from=node /usr/local/bin/node /usr/local/bin/node
COPY --from=node /usr/local/lib/node_modules /usr/local/lib/node_modules
RUN ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm \
 && ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx \
 && node --version && python3 --version

FROM base AS build
# make and a C++ compiler: better-sqlite3 compiles itself when no prebuilt binary fits.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# make setup: node_modules (node-llama-cpp uses its prebuilt CPU binaries; never build or download at install)
COPY package.json package-lock.json ./
RUN NODE_LLAMA_CPP_SKIP_DOWNLOAD=true npm ci --no-audit --no-fund

# make setup: the engine's venv. PyTorch first from TORCH_INDEX_URL (CPU by default, so the image does not carry
# the CUDA libraries), then engine/requirements.txt as pinned (torch is already satisfied).
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY engine/requirements.txt engine/requirements.txt
RUN python3 -m venv /app/.venv \
 && TORCH_PIN="$(grep -E '^torch==' engine/requirements.txt)" \
 && /app/.venv/bin/pip install --no-cache-dir --disable-pip-version-check --index-url "${TORCH_INDEX_URL}" "${TORCH_PIN}" \
 && /app/.venv/bin/pip install --no-cache-dir --disable-pip-version-check -r engine/requirements.txt

# make setup: the compiled CLI/API (dist/) and the web console (dist/web); then drop the dev packages.
COPY tsconfig.json ./
COPY bin bin
COPY src src
COPY web web
COPY engine engine
RUN npx tsc -p tsconfig.json \
 && npx vite build --config web/vite.config.ts --logLevel warn \
 && npm prune --omit=dev --no-audit --no-fund
# The engine's bytecode now: at run time /app is not writable by the weitiao user.
RUN /app/.venv/bin/python -m compileall -q engine/weitiao_engine

FROM base AS runtime
# A non-root user; its home is the state directory (WEITIAO_HOME), a volume in compose and Kubernetes.
# /keys: where deploy/compose.yaml hands a worker its API key (a volume takes the directory's owner).
RUN useradd --uid 10001 --user-group --home-dir /data --create-home --shell /usr/sbin/nologin weitiao \
 && install -d -o weitiao -g weitiao -m 0700 /keys
WORKDIR /app
COPY --from=build /app/package.json ./
COPY --from=build /app/node_modules node_modules
COPY --from=build /app/.venv .venv
COPY --from=build /app/dist dist
COPY --from=build /app/bin bin
COPY --from=build /app/engine engine
# The forgetting check's general set is read from src/ (src/eval/general/build.ts GENERAL_SET_FILE).
COPY --from=build /app/src/eval/general/general.jsonl src/eval/general/general.jsonl
RUN ln -s /app/bin/weitiao.js /usr/local/bin/weitiao
ENV WEITIAO_HOME=/data \
    WEITIAO_PYTHON=/app/.venv/bin/python \
    WEITIAO_HOST=0.0.0.0 \
    WEITIAO_PORT=8000
USER weitiao
VOLUME ["/data"]
EXPOSE 8000
# Every container runs a `weitiao` command: the API by default, `worker …` for workers (deploy/compose.yaml, deploy/k8s).
ENTRYPOINT ["/usr/bin/tini", "--", "weitiao"]
CMD ["serve"]
