# The pitstop operator image, for users with Docker (or Podman, buildah):
#   docker build -t <registry>/pitstop:<tag> . && docker push <registry>/pitstop:<tag>
# Without a daemon, `make image` builds the same image (hack/build-image.sh).
# Runs as uid 65532 with a read-only root filesystem (bytecode is precompiled;
# give it an emptyDir at /tmp, as manifests/operator does).
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --no-compile --prefix /install . \
 && python -m compileall -q /install

FROM python:3.11-slim-bookworm
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="pitstop" \
      org.opencontainers.image.description="Kubernetes operator that repairs faulty FaaS nodes" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /install /usr/local
RUN python -m compileall -q /usr/local/lib/python3.11 \
 && groupadd -g 65532 pitstop && useradd -u 65532 -g 65532 -d /nonexistent -s /usr/sbin/nologin pitstop
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /tmp
USER 65532:65532
EXPOSE 8080 9090 9095
ENTRYPOINT ["pitstop"]
CMD ["run"]
