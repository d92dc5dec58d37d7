# Interlock guard service: a slim image that runs `interlock serve`.
#   docker build -t interlock . && docker run -p 50051:50051 -p 9464:9464 interlock
# The install steps live in deploy/install.sh, which CI runs in a fresh venv (.ci/deploy-check.sh).
# On Kubernetes (deploy/kubernetes) the config comes from a ConfigMap mounted at /etc/interlock.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
COPY deploy/install.sh ./deploy/install.sh
RUN bash deploy/install.sh /opt/interlock
# examples/cartpole links to the package's demo assets (one copy of each model): resolve the links.
COPY examples ./examples
RUN cp -rL examples /opt/interlock-examples

FROM python:3.11-slim
RUN useradd --system --uid 10001 --no-create-home interlock
COPY --from=build /opt/interlock /opt/interlock
COPY --from=build /opt/interlock-examples /usr/share/interlock/examples
ENV PATH=/opt/interlock/bin:$PATH PYTHONUNBUFFERED=1
USER 10001
# gRPC (Guard, Operator, grpc.health.v1 for readiness probes, reflection) and Prometheus /metrics.
EXPOSE 50051 9464
STOPSIGNAL SIGTERM
ENTRYPOINT ["interlock", "serve"]
CMD ["--config", "/usr/share/interlock/examples/cartpole/interlock.yaml", "--host", "0.0.0.0"]
