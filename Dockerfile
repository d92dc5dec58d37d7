# Interlock server image: `docker build -t interlock . && docker run -p 50051:50051 -p 9464:9464 interlock`
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
COPY examples /etc/interlock/examples
RUN useradd --system --uid 10001 interlock
USER interlock
EXPOSE 50051 9464
# gRPC health (grpc.health.v1) is served on the same port for readiness probes.
ENTRYPOINT ["interlock", "serve"]
CMD ["--config", "/etc/interlock/examples/cartpole/interlock.yaml", "--host", "0.0.0.0"]
