# sglang-sm120 on top of an official SGLang image (CUDA 13, torch 2.11 in 0.5.16).
#   docker build -t sglang-sm120 .
#   docker run --gpus all --ipc=host --shm-size 32g -p 30000:30000 \
#     -v ~/.cache/huggingface:/root/.cache/huggingface sglang-sm120 \
#     python3 -m sglang.launch_server --model-path deepseek-ai/DeepSeek-V4-Flash --tp 2 \
#       --host 0.0.0.0 --port 30000
ARG SGLANG_IMAGE=lmsysorg/sglang:v0.5.16-cu130
FROM ${SGLANG_IMAGE}

WORKDIR /opt/sglang-sm120
COPY pyproject.toml setup.py sglang_sm120.pth README.md ./
COPY sglang_sm120 ./sglang_sm120
COPY patches ./patches
COPY configs ./configs

# --no-deps: the image already has torch, triton and SGLang; the plugin needs nothing else.
RUN python3 -m pip install --no-cache-dir --no-deps . \
    && python3 -m sglang_sm120 doctor

ENV SGLANG_SM120=auto
WORKDIR /sgl-workspace
