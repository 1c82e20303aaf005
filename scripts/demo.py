"""`make demo`: the whole path on the sample harvest, then stop everything it started.

Finds a Redis (the one at REDIS_URL, else a redis-server it starts, else the
embedded fakeredis server), starts a Celery worker and the gateway, runs the
harvester on samples/harvest.csv and prints the job's stats.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import localstack  # noqa: E402
from workers import settings  # noqa: E402

OPERATIONS = [
    "--op", 'normalize_text:{"columns": ["title", "body"], "strip_html": true}',
    "--op", 'drop_nulls:{"columns": ["title", "body"]}',
    "--op", 'deduplicate:{"columns": ["url"]}',
    "--op", 'cast_types:{"types": {"price": "float", "published": "datetime"}, "errors": "coerce"}',
    "--op", 'filter_rows:{"column": "language", "operator": "in", "value": ["en", "fr"]}',
    "--op", 'text_length:{"column": "body", "into": "body_chars"}',
    "--op", 'chunk_text:{"column": "body", "size": 200, "overlap": 20, "into": "chunk"}',
]


def main():
    out_dir = ROOT / ".demo"
    output = out_dir / "harvest.cleaned.jsonl"
    with localstack.any_redis(settings.get("REDIS_URL")) as (redis_url, how):
        print(f"demo: {how}", flush=True)
        print("demo: starting a Celery worker and the gateway (gunicorn)...", flush=True)
        with localstack.stack(redis_url, log_dir=out_dir / "logs") as gateway:
            print(f"demo: gateway at {gateway}, worker ready; logs in {out_dir / 'logs'}", flush=True)
            harvester = Path(sys.executable).parent / "harvester"
            command = [str(harvester), "run", str(ROOT / "samples" / "harvest.csv"), *OPERATIONS]
            command += ["--output", str(output), "--force", "--gateway", gateway, "--poll-interval", "0.5"]
            print("demo: $ " + " ".join(command[:3]) + " ... --output " + str(output.relative_to(ROOT)), flush=True)
            code = subprocess.call(command)
    print(f"demo: stopped everything it started; output in {output.relative_to(ROOT)} (+ .manifest.json)")
    return code


if __name__ == "__main__":
    sys.exit(main())
