"""Write serving/kubernetes/rayservice.yaml from serving/config.production.yaml, and the
training RayJob training/schedule/retrain-rayjob.yaml (recsys.deploy).

python scripts/render_kubernetes.py
"""

from recsys.deploy import write

if __name__ == "__main__":
    for path in write():
        print(f"written {path}")
