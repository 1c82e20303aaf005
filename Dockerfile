# One image for the gateway and the worker; docker-compose.yml picks the command.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /srv/datajobs
COPY pyproject.toml setup.cfg README.md celeryconfig.py localstack.py gunicorn.conf.py ./
COPY app ./app
COPY workers ./workers
COPY harvester ./harvester
RUN pip install --no-cache-dir . && useradd --system --no-create-home datajobs
USER datajobs
EXPOSE 5000
CMD ["gunicorn", "app:create_app()", "--bind", "0.0.0.0:5000", "--workers", "2"]
