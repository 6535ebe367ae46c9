# syntax=docker/dockerfile:1.7
# tfopt's GPU worker: NVIDIA's TensorFlow container (TF-TRT) plus Airflow and tfopt; queue `gpu`.
# Build from the repository root:
#   docker build -f infra/docker/gpu-worker.Dockerfile -t tfopt-worker-gpu:0.1.0 .
# 25.02 is the last release of NVIDIA's TensorFlow container: TensorFlow 2.17 (the last release
# with TF-TRT) built against TensorRT, CUDA 12.8, Python 3.12, Ubuntu 24.04.
ARG TF_IMAGE=nvcr.io/nvidia/tensorflow:25.02-tf2-py3

FROM ${TF_IMAGE}
ARG AIRFLOW_UID=50000
ENV AIRFLOW_HOME=/opt/airflow \
    PIP_NO_CACHE_DIR=1 \
    TF_CPP_MIN_LOG_LEVEL=2
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# The container's TensorFlow, TensorRT, numpy and protobuf stay as NVIDIA built them: pin them.
RUN pip freeze | grep -iE '^(tensorflow|tensorrt|numpy|protobuf|keras|ml[-_]dtypes|h5py)([=@ ]|$)' \
        > /tmp/base-constraints.txt
COPY infra/docker/gpu-requirements.txt /tmp/gpu-requirements.txt
RUN pip install -r /tmp/gpu-requirements.txt -c /tmp/base-constraints.txt
COPY pyproject.toml README.md /opt/tfopt/
COPY tasks /opt/tfopt/tasks
# tfopt declares Python 3.11 (its CPU lock); its code also runs on the container's 3.12.
RUN pip install --no-deps --ignore-requires-python /opt/tfopt \
    && useradd --uid "${AIRFLOW_UID}" --gid 0 --create-home --home-dir /home/airflow airflow \
    && mkdir -p "${AIRFLOW_HOME}/dags" "${AIRFLOW_HOME}/plugins" "${AIRFLOW_HOME}/logs" \
    && chown -R "${AIRFLOW_UID}:0" "${AIRFLOW_HOME}"
COPY --chown=airflow:0 dags /opt/airflow/dags
COPY --chown=airflow:0 plugins /opt/airflow/plugins
USER ${AIRFLOW_UID}
WORKDIR /opt/airflow
ENTRYPOINT ["airflow"]
# TF-TRT tasks are routed to the `gpu` queue by dags/optimize_model.py.
CMD ["celery", "worker", "--queues", "gpu", "--concurrency", "1"]
