"""Write serving/kubernetes/rayservice.yaml from serving/config.production.yaml (recsys.deploy).

python scripts/render_kubernetes.py
"""

from recsys.deploy import write

if __name__ == "__main__":
    print(f"written {write()}")
