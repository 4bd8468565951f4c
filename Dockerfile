# The pitstop operator image, for users with Docker (or Podman, buildah):
#   docker build -t <registry>/pitstop:<tag> . && docker push <registry>/pitstop:<tag>
# Without a daemon, `make image` builds the same image (hack/build-image.sh) on
# Debian's own python3 from debootstrap: there the base is pinned by suite and
# recorded package versions instead (see that script and docs/supply-chain.md).
# Runs as uid 65532 with a read-only root filesystem (bytecode is precompiled;
# give it an emptyDir at /tmp, as manifests/operator does).
#
# The base is pinned by digest, so a rebuild cannot pick up a different image
# under the same tag. The digest is the python:3.11-slim-bookworm one found in
# public references; no registry is reachable where this project is built, so
# verify it (and move it forward) with
#   docker buildx imagetools inspect python:3.11-slim-bookworm
# or build on another base with --build-arg BASE=<image>@sha256:<digest>.
ARG BASE=python:3.11-slim-bookworm@sha256:a36c24f9cbdf4fd0f52d67f0823eeac19c2028c637cecc392d97f980d4fec56b

FROM ${BASE} AS build
WORKDIR /src
# The dependencies first, exactly as requirements.lock pins them and each file
# checked against its hash; then pitstop itself, resolving nothing more.
COPY requirements.lock ./
RUN pip install --no-cache-dir --no-compile --require-hashes --prefix /install -r requirements.lock
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN pip install --no-cache-dir --no-compile --no-deps --prefix /install . \
 && python -m compileall -q /install

FROM ${BASE}
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
